"""Drawing with Detectron2's ``Visualizer``: ground truth, model outputs, COCO result rows."""
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer

__all__ = ["draw_record", "draw_instances", "draw_coco_results"]


def draw_record(image_rgb: np.ndarray, record: Dict, metadata, scale: float = 1.0) -> np.ndarray:
    """Ground truth of a dataset dict drawn on its (H, W, 3) RGB image."""
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    return vis.draw_dataset_dict(record).get_image()


def draw_instances(image_rgb: np.ndarray, instances, metadata, score_thresh: float = 0.5,
                   scale: float = 1.0) -> np.ndarray:
    """A model's ``Instances`` above ``score_thresh`` drawn on the image."""
    if instances.has("scores"):
        instances = instances[instances.scores >= score_thresh]
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    return vis.draw_instance_predictions(instances).get_image()


def draw_coco_results(image_rgb: np.ndarray, rows: List[Dict], metadata=None, score_thresh: float = 0.5,
                      scale: float = 1.0, class_names: Optional[List[str]] = None) -> np.ndarray:
    """COCO result rows of one image (``category_id`` 1-based, ``bbox`` XYWH) drawn on it."""
    rows = [r for r in rows if r.get("score", 1.0) >= score_thresh and "bbox" in r]
    names = class_names or (list(metadata.thing_classes) if metadata is not None and
                            hasattr(metadata, "thing_classes") else None)
    boxes, labels, masks, keypoints = [], [], [], []
    for r in rows:
        boxes.append(BoxMode.convert(list(r["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        c = int(r["category_id"]) - 1
        name = names[c] if names and 0 <= c < len(names) else f"class {r['category_id']}"
        labels.append(f"{name} {100 * r.get('score', 1.0):.0f}%")
        if "segmentation" in r and isinstance(r["segmentation"], dict):
            masks.append(mask_util.decode(r["segmentation"]))
        if "keypoints" in r:
            keypoints.append(np.asarray(r["keypoints"], dtype=np.float32).reshape(-1, 3))
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    out = vis.overlay_instances(
        boxes=np.array(boxes) if boxes else None,
        labels=labels or None,
        masks=masks if masks and len(masks) == len(rows) else None,
        keypoints=np.stack(keypoints) if keypoints and len(keypoints) == len(rows) else None,
    )
    return out.get_image()
