"""Drawing a pose-to-shot prediction: skeleton on the image, the normalised pose as an inset, and
the predicted shot with its probability."""
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.data.datasets.builtin_meta import (COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES,
                                                   KEYPOINT_CONNECTION_RULES)
from detectron2.utils.visualizer import Visualizer

from ..data.pose_features import normalize_keypoints

__all__ = ["COCO_PERSON_METADATA", "draw_pose_inset", "draw_pose_shot"]

COCO_PERSON_METADATA = Metadata(
    name="coco_person_keypoints", keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
    keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP, keypoint_connection_rules=KEYPOINT_CONNECTION_RULES,
)
_INDEX = {n: i for i, n in enumerate(COCO_PERSON_KEYPOINT_NAMES)}


def draw_pose_inset(keypoints, size: int = 160, score_threshold: float = 0.05, torso_scale: float = 2.5) -> np.ndarray:
    """The normalised pose (mid-hip origin, torso scale; what the shot head sees) on a white
    ``size`` x ``size`` RGB panel: [-1, 1] in both axes fills the panel, the mid-hip is the grey
    cross. ``keypoints``: ``(17, 3)``. Missing joints are not drawn."""
    kps = torch.as_tensor(np.asarray(keypoints, dtype=np.float64)).view(1, -1, 3)
    xy, mask, _, _ = normalize_keypoints(kps, score_threshold, torso_scale)
    xy, mask = xy[0].numpy(), mask[0].numpy()
    panel = np.full((size, size, 3), 255, np.uint8)
    half = size / 2.0

    def px(p):
        return int(round(half + p[0] * (half - 4))), int(round(half + p[1] * (half - 4)))

    cv2.drawMarker(panel, (int(half), int(half)), (160, 160, 160), cv2.MARKER_CROSS, 10, 1)
    for a, b, color in KEYPOINT_CONNECTION_RULES:
        i, j = _INDEX[a], _INDEX[b]
        if mask[i] and mask[j]:
            cv2.line(panel, px(xy[i]), px(xy[j]), tuple(int(c) for c in color), 2, cv2.LINE_AA)
    for k in np.flatnonzero(mask):
        cv2.circle(panel, px(xy[k]), 2, (0, 0, 0), -1, cv2.LINE_AA)
    cv2.rectangle(panel, (0, 0), (size - 1, size - 1), (0, 0, 0), 1)
    return panel


def draw_pose_shot(image_rgb: np.ndarray, keypoints, scores, class_names: Optional[Sequence[str]] = None,
                   inset_size: Optional[int] = None, score_threshold: float = 0.05) -> np.ndarray:
    """``(H, W, 3)`` RGB image with the skeleton of ``keypoints`` (``(17, 3)`` image pixels, or None
    when no person was found), the normalised-pose inset in the top-right corner and
    "``<shot> <p>%``" of the highest of ``scores`` (``(K,)`` probabilities) in the top-left."""
    scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32))
    k = int(scores.argmax())
    name = class_names[k] if class_names is not None and k < len(class_names) else f"class {k}"
    vis = Visualizer(image_rgb, metadata=COCO_PERSON_METADATA)
    have_person = keypoints is not None and np.asarray(keypoints)[:, 2].max() > score_threshold
    if have_person:
        vis.draw_and_connect_keypoints(torch.as_tensor(np.asarray(keypoints, dtype=np.float32)))
    h, w = image_rgb.shape[:2]
    vis.draw_text(f"{name} {100 * scores[k]:.0f}%" + ("" if have_person else " (no person)"),
                  (4, 4), horizontal_alignment="left", color="yellow",
                  font_size=max(10, int(0.045 * min(h, w) * vis.output.scale)))
    out = vis.get_output().get_image().copy()
    if have_person:
        size = inset_size or max(48, min(h, w) // 3)
        size = min(size, h, w)
        out[:size, w - size:] = draw_pose_inset(keypoints, size, score_threshold)
    return out
