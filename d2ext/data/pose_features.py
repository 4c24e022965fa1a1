"""Pose features for shot classification: main-person selection, normalisation, masking.

Everything works on COCO person keypoints, ``(N, 17, 3)`` tensors of ``(x, y, c)`` in input-image
pixels, where ``c`` is the COCO visibility ``v`` (0 = not labelled, 1 = hidden, 2 = visible) for
ground truth or the keypoint score of a detector (Detectron2's Keypoint R-CNN writes the heatmap
logit there). A joint is *present* when ``c > score_threshold``; a missing joint is not (0, 0):
its coordinates are zeroed **and** a mask channel says it is missing, so the head can tell
"at the hip" from "not seen".

Normalisation ("torso"): translate so the mid-hip is the origin, divide by

    scale = max(torso_scale * |mid-shoulder - mid-hip|, largest distance between two present joints)

(torso_scale 2.5: a standing adult is about 2.5 torsos tall; taking the max keeps short or
foreshortened torsos, e.g. a crouched sweep, from blowing the pose up). The result is invariant to
translating and scaling the person. "image" only divides by the image size and centres on the
image (``x / width - 0.5``; the un-normalised baseline).

Feature vector (:class:`PoseFeatureExtractor`), per person:

    [x, y] * 17 (normalised)  | mask * 17  | joint angles * 6 / pi, their masks * 6 (optional)
    | wrist height * 2, their masks * 2 (optional)

Joint angles are the inner angles at the elbows (shoulder-elbow-wrist), shoulders (hip-shoulder-
elbow) and knees (hip-knee-ankle), left then right; wrist height is ``(mid-shoulder y - wrist y) /
scale`` (positive above the shoulders, image y points down).

Handedness (``canonical_handedness``): a left-handed batsman plays the mirror image of a
right-hander's shot. :func:`canonicalize_handedness` mirrors a pose (x -> -x about its centre, left
and right joints swapped) whenever :func:`handedness_sign` is negative. That sign is *odd* under
mirroring (the mirror of a pose has the opposite sign), so a pose and its mirror image map to the
same canonical pose and get the same class, with no left-handed examples in training.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_FLIP_INDICES",
    "SELECTION_MODES",
    "flip_indices",
    "mirror_keypoints",
    "keypoint_mask",
    "persons_to_tensors",
    "select_main_person",
    "normalize_keypoints",
    "joint_angles",
    "wrist_heights",
    "handedness_sign",
    "canonicalize_handedness",
    "PoseFeatureExtractor",
]

COCO_KEYPOINT_NAMES: Tuple[str, ...] = tuple(COCO_PERSON_KEYPOINT_NAMES)
_IDX = {n: i for i, n in enumerate(COCO_KEYPOINT_NAMES)}
L_SHOULDER, R_SHOULDER = _IDX["left_shoulder"], _IDX["right_shoulder"]
L_ELBOW, R_ELBOW = _IDX["left_elbow"], _IDX["right_elbow"]
L_WRIST, R_WRIST = _IDX["left_wrist"], _IDX["right_wrist"]
L_HIP, R_HIP = _IDX["left_hip"], _IDX["right_hip"]
L_KNEE, R_KNEE = _IDX["left_knee"], _IDX["right_knee"]
L_ANKLE, R_ANKLE = _IDX["left_ankle"], _IDX["right_ankle"]

# (a, vertex, b) triples: the angle at `vertex` between the segments to a and b.
ANGLE_TRIPLES = (
    (L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST),  # elbows
    (L_HIP, L_SHOULDER, L_ELBOW), (R_HIP, R_SHOULDER, R_ELBOW),  # shoulders
    (L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE),  # knees
)
SELECTION_MODES = ("largest_box", "highest_score", "nearest_center")
_EPS = 1e-6


def flip_indices(names: Sequence[str] = COCO_KEYPOINT_NAMES,
                 flip_map: Sequence[Tuple[str, str]] = COCO_PERSON_KEYPOINT_FLIP_MAP) -> List[int]:
    """Permutation ``p`` with ``mirrored[k] = original[p[k]]``: every left joint takes its right
    partner's place and vice versa (Detectron2's ``keypoint_flip_map`` convention)."""
    index = {n: i for i, n in enumerate(names)}
    perm = list(range(len(names)))
    for a, b in flip_map:
        if a not in index or b not in index:
            raise KeyError(f"flip map pair ({a!r}, {b!r}) names a keypoint not in {list(names)}")
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


COCO_FLIP_INDICES: Tuple[int, ...] = tuple(flip_indices())


def mirror_keypoints(keypoints: torch.Tensor, width: Optional[float] = None,
                     indices: Sequence[int] = COCO_FLIP_INDICES) -> torch.Tensor:
    """Mirror ``(..., K, 3)`` keypoints horizontally: ``x -> width - x`` (``-x`` when ``width`` is
    None, e.g. for mid-hip-centred poses) and left/right joints swapped. A left-handed batsman's
    shot is the mirror image of the right-hander's, so this is a label-preserving augmentation."""
    out = keypoints[..., list(indices), :].clone()
    out[..., 0] = -out[..., 0] if width is None else width - out[..., 0]
    return out


def keypoint_mask(keypoints: torch.Tensor, score_threshold: float = 0.05) -> torch.Tensor:
    """``(..., K)`` bool: joint present (visibility / score above ``score_threshold``; 0.05 is
    Detectron2's Visualizer threshold and keeps COCO v = 1, 2 while dropping v = 0)."""
    return keypoints[..., 2] > score_threshold


def persons_to_tensors(persons: Sequence[Dict], num_keypoints: int = len(COCO_KEYPOINT_NAMES),
                       score_threshold: float = 0.05):
    """Record persons (``{"keypoints": 51 numbers, "score"?, "bbox"? XYWH}``) -> ``keypoints
    (P, K, 3)``, ``boxes (P, 4)`` XYXY, ``scores (P,)`` float32 tensors. A person without ``bbox``
    gets the extent of its present joints; without ``score``, 1."""
    kps = torch.zeros((len(persons), num_keypoints, 3))
    boxes = torch.zeros((len(persons), 4))
    scores = torch.ones(len(persons))
    for i, p in enumerate(persons):
        k = torch.as_tensor(p["keypoints"], dtype=torch.float32).reshape(-1)
        if k.numel() != 3 * num_keypoints:
            raise ValueError(f"person {i}: expected {3 * num_keypoints} keypoint numbers, got {k.numel()}")
        kps[i] = k.view(num_keypoints, 3)
        if p.get("bbox") is not None:
            x, y, w, h = [float(v) for v in p["bbox"]]
            boxes[i] = torch.tensor([x, y, x + w, y + h])
        else:
            present = kps[i][keypoint_mask(kps[i], score_threshold)]
            if len(present):
                boxes[i] = torch.cat([present[:, :2].min(0).values, present[:, :2].max(0).values])
        if p.get("score") is not None:
            scores[i] = float(p["score"])
    return kps, boxes, scores


def select_main_person(keypoints: torch.Tensor, boxes: torch.Tensor, scores: Optional[torch.Tensor] = None,
                       mode: str = "largest_box", image_size: Optional[Tuple[int, int]] = None,
                       score_threshold: float = 0.05, min_score: float = 0.0) -> int:
    """Index of the batsman among ``P`` persons (-1 when there is none).

    ``keypoints (P, K, 3)``, ``boxes (P, 4)`` XYXY, ``scores (P,)`` (None = all 1). Candidates have at
    least one present joint and ``score >= min_score``. Modes: ``"largest_box"`` (box area),
    ``"highest_score"`` (detection score), ``"nearest_center"`` (box centre nearest the image
    centre; ``image_size = (height, width)`` needed). Ties go to the earlier person.
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"person selection {mode!r}: expected one of {SELECTION_MODES}")
    if len(keypoints) == 0:
        return -1
    scores = torch.ones(len(keypoints)) if scores is None else scores.float().cpu()
    boxes = boxes.float().cpu()
    ok = keypoint_mask(keypoints.cpu(), score_threshold).any(dim=1) & (scores >= min_score)
    if not ok.any():
        return -1
    if mode == "largest_box":
        key = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    elif mode == "highest_score":
        key = scores.clone()
    else:
        if image_size is None:
            raise ValueError("person selection 'nearest_center' needs image_size = (height, width)")
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        key = -((cx - image_size[1] / 2.0) ** 2 + (cy - image_size[0] / 2.0) ** 2)
    key = torch.where(ok, key, torch.full_like(key, -float("inf")))
    best = key.max()
    return int(torch.nonzero(key == best)[0, 0])  # first of the ties


def _masked_mean(xy: torch.Tensor, mask: torch.Tensor, idx: Sequence[int]):
    """Mean of the present joints ``idx``: ``(N, 2)`` and ``(N,)`` bool (any present)."""
    m = mask[:, list(idx)].float()
    count = m.sum(1)
    mean = (xy[:, list(idx)] * m[..., None]).sum(1) / count.clamp(min=1)[:, None]
    return mean, count > 0


def normalize_keypoints(keypoints: torch.Tensor, score_threshold: float = 0.05,
                        torso_scale: float = 2.5):
    """Mid-hip origin, torso-size scale. ``(N, 17, 3) -> (xy (N, 17, 2), mask (N, 17) bool,
    origin (N, 2), scale (N,))`` (float64); missing joints get ``xy = 0``.

    Origin fallbacks: the present hip(s); without hips the present shoulder(s); else the mean of
    all present joints. Scale: ``max(torso_scale * torso, largest pairwise joint distance)``; 1 when
    fewer than two distinct joints are present (nothing to measure).
    """
    if keypoints.dim() != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, K, 3), got {tuple(keypoints.shape)}")
    kps = keypoints.double()  # float64: invariance to 1e-5 even for small people far from the origin
    xy, mask = kps[..., :2], keypoint_mask(kps, score_threshold)
    hip, has_hip = _masked_mean(xy, mask, (L_HIP, R_HIP))
    sho, has_sho = _masked_mean(xy, mask, (L_SHOULDER, R_SHOULDER))
    allmean, _ = _masked_mean(xy, mask, range(kps.shape[1]))
    origin = torch.where(has_hip[:, None], hip, torch.where(has_sho[:, None], sho, allmean))
    torso = torch.where(has_hip & has_sho, (sho - hip).norm(dim=1), torch.zeros_like(hip[:, 0]))
    diff = xy[:, :, None, :] - xy[:, None, :, :]
    pair = mask[:, :, None] & mask[:, None, :]
    extent = torch.where(pair, diff.norm(dim=-1), torch.zeros_like(diff[..., 0])).flatten(1).amax(1)
    scale = torch.maximum(torso_scale * torso, extent)
    scale = torch.where(scale > _EPS, scale, torch.ones_like(scale))
    out = (xy - origin[:, None, :]) / scale[:, None, None]
    out = torch.where(mask[..., None], out, torch.zeros_like(out))
    return out, mask, origin, scale


def joint_angles(xy: torch.Tensor, mask: torch.Tensor):
    """Inner angles at elbows, shoulders, knees (left, right each), in ``[0, pi]``.

    ``xy (N, 17, 2)``, ``mask (N, 17)`` -> ``angles (N, 6)``, ``valid (N, 6)`` bool (all three
    joints present and both segments non-degenerate); invalid angles are 0.
    """
    a = torch.tensor([t[0] for t in ANGLE_TRIPLES])
    v = torch.tensor([t[1] for t in ANGLE_TRIPLES])
    b = torch.tensor([t[2] for t in ANGLE_TRIPLES])
    u, w = xy[:, a] - xy[:, v], xy[:, b] - xy[:, v]
    nu, nw = u.norm(dim=-1), w.norm(dim=-1)
    valid = mask[:, a] & mask[:, v] & mask[:, b] & (nu > _EPS) & (nw > _EPS)
    cos = (u * w).sum(-1) / (nu * nw).clamp(min=_EPS)
    ang = torch.acos(cos.clamp(-1.0, 1.0))
    return torch.where(valid, ang, torch.zeros_like(ang)), valid


def wrist_heights(xy: torch.Tensor, mask: torch.Tensor):
    """``(mid-shoulder y - wrist y)`` for the left and right wrist, in the units of ``xy``
    (positive = wrist above the shoulders). ``-> heights (N, 2)``, ``valid (N, 2)`` bool."""
    sho, has_sho = _masked_mean(xy, mask, (L_SHOULDER, R_SHOULDER))
    wrists = xy[:, [L_WRIST, R_WRIST], 1]
    valid = mask[:, [L_WRIST, R_WRIST]] & has_sho[:, None]
    h = sho[:, None, 1] - wrists
    return torch.where(valid, h, torch.zeros_like(h)), valid


# Joint sets closed under the left/right swap (so their means mirror with the pose).
_NOSE, _EARS = (0,), (3, 4)
_HEAD = (0, 1, 2, 3, 4)  # nose, eyes, ears
_TORSO = (L_SHOULDER, R_SHOULDER, L_HIP, R_HIP)
_LEGS = ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE))


def _knee_protrusion(xy: torch.Tensor, mask: torch.Tensor):
    """Sum over the legs with hip, knee and ankle present of ``knee x - (hip x + ankle x) / 2``:
    knees bend forward, so in a side view this points the way the person faces."""
    total = torch.zeros(len(xy), dtype=xy.dtype, device=xy.device)
    valid = torch.zeros(len(xy), dtype=torch.bool, device=xy.device)
    for hip, knee, ankle in _LEGS:
        ok = mask[:, hip] & mask[:, knee] & mask[:, ankle]
        d = xy[:, knee, 0] - 0.5 * (xy[:, hip, 0] + xy[:, ankle, 0])
        total = total + torch.where(ok, d, torch.zeros_like(d))
        valid = valid | ok
    return total, valid


def handedness_sign(xy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N,)`` in {-1, 0, 1}: which way the person faces along x.

    The main cue is anatomical, so it does not change with the shot: the nose ahead of the ears
    (``nose x - mean ear x``) plus half the knees' protrusion ahead of the hip-ankle lines
    (:func:`_knee_protrusion`; knees bend forward); each counts when its joints are present (on
    synthetic batsmen the sum decides wrongly for 1-4 % of the poses of every shot, the nose alone
    for up to 19 % of crouched sweeps). Without nose+ear and leg joints: the head joints' mean x
    minus the torso joints' mean x, then all present joints' mean x minus the torso's.

    Every cue uses only joint sets that the left/right swap maps onto themselves, so
    ``handedness_sign(mirror(pose)) == -handedness_sign(pose)``: the property canonicalisation
    needs. 0 when nothing decides (e.g. no head, leg or torso joint): such a pose is left as it is.
    """
    nose, has_nose = _masked_mean(xy, mask, _NOSE)
    ears, has_ears = _masked_mean(xy, mask, _EARS)
    torso, has_torso = _masked_mean(xy, mask, _TORSO)
    head, has_head = _masked_mean(xy, mask, _HEAD)
    every, has_any = _masked_mean(xy, mask, range(xy.shape[1]))
    knees, has_knees = _knee_protrusion(xy, mask)
    face = has_nose & has_ears
    anatomy = torch.where(face, nose[:, 0] - ears[:, 0], torch.zeros_like(knees)) + 0.5 * knees
    cues = ((anatomy, face | has_knees), (head[:, 0] - torso[:, 0], has_head & has_torso),
            (every[:, 0] - torso[:, 0], has_any & has_torso))
    sign = torch.zeros(len(xy), dtype=xy.dtype, device=xy.device)
    for d, has in cues:
        decide = (sign == 0) & has & (d.abs() > _EPS)
        sign = torch.where(decide, torch.sign(d), sign)
    return sign


def canonicalize_handedness(xy: torch.Tensor, mask: torch.Tensor, indices: Sequence[int] = COCO_FLIP_INDICES):
    """Mirror the poses whose :func:`handedness_sign` is negative so that every pose faces +x.

    ``xy (N, K, 2)`` centred coordinates (mirroring is ``x -> -x``: use normalised poses),
    ``mask (N, K)`` -> ``(xy, mask, mirrored (N,) bool)``; missing joints stay 0.
    """
    mirrored = handedness_sign(xy, mask) < 0
    idx = list(indices)
    flipped = xy[:, idx] * torch.tensor([-1.0, 1.0], dtype=xy.dtype, device=xy.device)
    xy = torch.where(mirrored[:, None, None], flipped, xy)
    mask = torch.where(mirrored[:, None], mask[:, idx], mask)
    xy = torch.where(mask[..., None], xy, torch.zeros_like(xy))  # no -0.0 for missing joints
    return xy, mask, mirrored


class PoseFeatureExtractor:
    """``(N, 17, 3)`` keypoints (+ image sizes) -> ``(N, dim)`` feature vectors (see module doc).

    Args:
        normalization: ``"torso"`` (mid-hip origin, torso scale; translation/scale invariant) or
            ``"image"`` (x / width - 0.5, y / height - 0.5: the un-normalised baseline).
        joint_angles / wrist_height: append the engineered features (each with its mask).
        canonical_handedness: mirror every pose to face +x first (:func:`canonicalize_handedness`),
            so a left-hander's shot gives the right-hander's features.
    """

    NORMALIZATIONS = ("torso", "image")

    def __init__(self, normalization: str = "torso", score_threshold: float = 0.05, torso_scale: float = 2.5,
                 use_joint_angles: bool = True, use_wrist_height: bool = True,
                 num_keypoints: int = len(COCO_KEYPOINT_NAMES), canonical_handedness: bool = False):
        if normalization not in self.NORMALIZATIONS:
            raise ValueError(f"pose normalization {normalization!r}: expected one of {self.NORMALIZATIONS}")
        if num_keypoints != len(COCO_KEYPOINT_NAMES) and (use_joint_angles or use_wrist_height):
            raise ValueError("joint angles / wrist height need the 17 COCO keypoints")
        self.normalization = normalization
        self.score_threshold = float(score_threshold)
        self.torso_scale = float(torso_scale)
        self.use_joint_angles = bool(use_joint_angles)
        self.use_wrist_height = bool(use_wrist_height)
        self.num_keypoints = int(num_keypoints)
        if canonical_handedness and num_keypoints != len(COCO_KEYPOINT_NAMES):
            raise ValueError("canonical_handedness needs the 17 COCO keypoints")
        self.canonical_handedness = bool(canonical_handedness)

    @property
    def dim(self) -> int:
        k = self.num_keypoints
        return 3 * k + 12 * self.use_joint_angles + 4 * self.use_wrist_height

    def __call__(self, keypoints: torch.Tensor, image_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``keypoints (N, K, 3)``; ``image_sizes (N, 2)`` as ``(height, width)``, needed for
        ``"image"`` normalisation. Returns ``(N, dim)`` float32."""
        if keypoints.shape[1:] != (self.num_keypoints, 3):
            raise ValueError(f"expected (N, {self.num_keypoints}, 3) keypoints, got {tuple(keypoints.shape)}")
        if self.normalization == "torso":
            xy, mask, _, _ = normalize_keypoints(keypoints, self.score_threshold, self.torso_scale)
        else:
            if image_sizes is None:
                raise ValueError("'image' normalization needs image_sizes (N, 2) = (height, width)")
            kps = keypoints.double()
            mask = keypoint_mask(kps, self.score_threshold)
            wh = image_sizes.to(kps).flip(-1).clamp(min=1)[:, None, :]
            # centred on the image (-0.5..0.5): a fair baseline for the MLP, still neither
            # translation- nor scale-invariant
            xy = torch.where(mask[..., None], kps[..., :2] / wh - 0.5, torch.zeros_like(kps[..., :2]))
        if self.canonical_handedness:
            xy, mask, _ = canonicalize_handedness(xy, mask)
        feats = [xy.flatten(1), mask.float()]
        if self.use_joint_angles:
            ang, valid = joint_angles(xy, mask)
            feats += [ang / torch.pi, valid.float()]
        if self.use_wrist_height:
            h, valid = wrist_heights(xy, mask)
            feats += [h, valid.float()]
        return torch.cat([f.to(torch.float64) for f in feats], dim=1).float()
