"""Synthetic batsmen: parametric stick figures whose joint angles depend on the shot.

A figure is drawn in a body frame (x forward, y up, mid-hip at the origin, torso length 1) from
nine angles: torso lean, the upper-arm angle and elbow bend of each arm (the bat arms: they
differ most between shots), and the thigh angle and knee bend of each leg. Arm and thigh angles
are measured from straight down, positive towards the bowler (+x): 90 = horizontal forward,
180 = straight up. Each shot class has its own mean angles (:data:`SHOT_POSES`); a sample adds
Gaussian angle noise, joint jitter, a small camera roll, a random size and position in the image
and randomly missing joints (``v = 0``, ``x = y = 0``, as COCO), so a classifier must cope with
what a keypoint detector gives. Deterministic for a seed (numpy ``default_rng``).

Records (:func:`synthetic_pose_records`) are the cricket converter's, with the image left out::

    {"file_name": "synthetic://pose/000012", "height": 480, "width": 640, "image_id": 12,
     "label": 3, "class_name": "pull", "keypoints": [{"keypoints": [x, y, v] * 17,
                                                    "score": 0.93, "bbox": [x, y, w, h]}, ...]}
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .pose_features import COCO_FLIP_INDICES

__all__ = ["SHOT_POSES", "SYNTHETIC_SHOT_CLASSES", "stick_figure", "generate_poses", "synthetic_pose_records"]

# Mean angles in degrees: (torso lean, L upper arm, L elbow bend, R upper arm, R elbow bend,
#                          L thigh, L knee bend, R thigh, R knee bend). L = front side.
SHOT_POSES: Dict[str, Tuple[float, ...]] = {
    # bat swung out horizontally to the off side, upright
    "cut": (5, 95, 5, 85, 15, 15, 10, -15, 5),
    # front-foot lean, hands low and forward, front knee bent
    "cover_drive": (30, 30, 10, 20, 30, 45, 45, -25, 0),
    # high follow-through over the head
    "straight_drive": (10, 160, 20, 150, 50, 20, 15, -20, 5),
    # leaning back, bat swung round behind to the leg side
    "pull": (-10, -80, 30, -100, 20, 10, 5, -10, 20),
    # crouched low, front knee deeply bent, back knee near the ground
    "sweep": (50, 60, 10, 50, 20, 80, 90, -10, 100),
}
SYNTHETIC_SHOT_CLASSES: Tuple[str, ...] = tuple(SHOT_POSES)

# Segment lengths in torso units (rough adult proportions).
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.45, 0.4, 0.5, 0.5
_HALF_SHOULDER, _HALF_HIP = 0.18, 0.12


def _unit(deg):
    """Direction at ``deg`` from straight down, positive towards +x."""
    r = np.deg2rad(deg)
    return np.stack([np.sin(r), -np.cos(r)], axis=-1)


def stick_figure(angles: np.ndarray) -> np.ndarray:
    """``(N, 9)`` angles (degrees, order of :data:`SHOT_POSES`) -> ``(N, 17, 2)`` COCO joints in the
    body frame (x forward, y up, mid-hip at 0, torso length 1)."""
    angles = np.asarray(angles, dtype=np.float64)
    n = len(angles)
    lean, la, lb, ra, rb, lt, lk, rt, rk = angles.T
    up = _unit(180 - lean)  # torso direction: straight up tilted forward by `lean`
    across = np.stack([up[:, 1], -up[:, 0]], axis=-1)  # perpendicular, pointing forward
    mid_sho = up
    p = np.zeros((n, 17, 2))
    l_sho, r_sho = mid_sho + _HALF_SHOULDER * across, mid_sho - _HALF_SHOULDER * across
    l_hip, r_hip = np.stack([np.full(n, _HALF_HIP), np.zeros(n)], -1), np.stack([np.full(n, -_HALF_HIP), np.zeros(n)], -1)
    l_elb = l_sho + _UPPER_ARM * _unit(la)
    r_elb = r_sho + _UPPER_ARM * _unit(ra)
    l_wri = l_elb + _FOREARM * _unit(la + lb)
    r_wri = r_elb + _FOREARM * _unit(ra + rb)
    l_kne = l_hip + _THIGH * _unit(lt)
    r_kne = r_hip + _THIGH * _unit(rt)
    l_ank = l_kne + _SHIN * _unit(lt - lk)
    r_ank = r_kne + _SHIN * _unit(rt - rk)
    nose = mid_sho + 0.3 * up + 0.1 * across
    p[:, 0] = nose
    p[:, 1], p[:, 2] = nose + 0.05 * up + 0.03 * across, nose + 0.05 * up - 0.03 * across  # eyes
    p[:, 3], p[:, 4] = nose - 0.08 * across + 0.04 * up, nose - 0.14 * across + 0.04 * up  # ears
    p[:, 5], p[:, 6], p[:, 7], p[:, 8], p[:, 9], p[:, 10] = l_sho, r_sho, l_elb, r_elb, l_wri, r_wri
    p[:, 11], p[:, 12], p[:, 13], p[:, 14], p[:, 15], p[:, 16] = l_hip, r_hip, l_kne, r_kne, l_ank, r_ank
    return p


def _place(body: np.ndarray, rng, image_size, torso_px_range, roll_deg):
    """Body frame -> image pixels: random roll, size and position (hip kept inside the central
    part of the image so most of the figure is in view)."""
    n = len(body)
    h, w = image_size
    lo, hi = np.log(torso_px_range[0]), np.log(torso_px_range[1])
    torso_px = np.exp(rng.uniform(lo, hi, n))  # log-uniform: near and far batsmen alike
    roll = np.deg2rad(rng.normal(0.0, roll_deg, n))
    c, s = np.cos(roll), np.sin(roll)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (N, 2, 2)
    xy = np.einsum("nij,nkj->nki", rot, body) * torso_px[:, None, None]
    cx = rng.uniform(0.25 * w, 0.75 * w, n)
    cy = rng.uniform(0.35 * h, 0.75 * h, n)
    out = np.empty_like(xy)
    out[..., 0] = cx[:, None] + xy[..., 0]
    out[..., 1] = cy[:, None] - xy[..., 1]  # image y points down
    return out, torso_px, np.stack([cx, cy], -1)


def generate_poses(num: int, seed: int = 0, classes: Sequence[str] = SYNTHETIC_SHOT_CLASSES,
                   image_size: Tuple[int, int] = (480, 640), angle_noise_deg: float = 12.0,
                   joint_noise: float = 0.03, missing_prob: float = 0.1, torso_px_range=(20.0, 140.0),
                   roll_deg: float = 5.0, left_handed_prob: float = 0.0) -> Dict[str, np.ndarray]:
    """``num`` batsmen, classes balanced (label ``i % len(classes)``, then shuffled).

    Returns ``{"keypoints": (num, 17, 3) float32 image pixels + visibility (2 present, 0 missing
    with x = y = 0), "labels": (num,) int64, "torso_px": (num,), "hip": (num, 2) mid-hip pixel}``. ``joint_noise`` is in torso
    units; ``left_handed_prob`` mirrors that share of the figures (left-handers).
    """
    unknown = [c for c in classes if c not in SHOT_POSES]
    if unknown:
        raise KeyError(f"no synthetic pose for shot(s) {unknown}; known: {list(SHOT_POSES)}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num) % len(classes))
    means = np.array([SHOT_POSES[c] for c in classes], dtype=np.float64)[labels]
    body = stick_figure(means + rng.normal(0.0, angle_noise_deg, means.shape))
    body += rng.normal(0.0, joint_noise, body.shape)
    mirror = rng.random(num) < left_handed_prob
    body[mirror] = body[mirror][:, list(COCO_FLIP_INDICES)] * np.array([-1.0, 1.0])
    xy, torso_px, hip = _place(body, rng, image_size, torso_px_range, roll_deg)
    present = rng.random((num, 17)) >= missing_prob
    kps = np.zeros((num, 17, 3), dtype=np.float32)
    kps[..., :2] = np.where(present[..., None], xy, 0.0)
    kps[..., 2] = np.where(present, 2.0, 0.0)
    return {"keypoints": kps, "labels": labels.astype(np.int64), "torso_px": torso_px, "hip": hip}


def _person(kps: np.ndarray, score: float) -> Dict:
    present = kps[:, 2] > 0
    pts = kps[present, :2]
    x0, y0 = pts.min(0) if len(pts) else (0.0, 0.0)
    x1, y1 = pts.max(0) if len(pts) else (0.0, 0.0)
    mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)  # boxes a little larger than the joints, as detectors
    return {"keypoints": [round(float(v), 3) for v in kps.reshape(-1)], "score": round(float(score), 4),
            "bbox": [float(x0 - mx), float(y0 - my), float(x1 - x0 + 2 * mx), float(y1 - y0 + 2 * my)]}


def synthetic_pose_records(num: int, seed: int = 0, classes: Sequence[str] = SYNTHETIC_SHOT_CLASSES,
                           image_size: Tuple[int, int] = (480, 640), distractor_prob: float = 0.0,
                           **pose_kwargs) -> List[Dict]:
    """Cached-keypoint records (module doc) of ``num`` synthetic batsmen. With probability
    ``distractor_prob`` an image also holds a smaller person (a fielder; random shot, 0.3-0.6 of
    the batsman's size) at a random place in the list, so person selection matters."""
    main = generate_poses(num, seed, classes, image_size, **pose_kwargs)
    rng = np.random.default_rng([seed, 1])
    has_extra = rng.random(num) < distractor_prob
    extras = generate_poses(max(int(has_extra.sum()), 1), seed + 1_000_003, classes, image_size, **pose_kwargs)
    records, j = [], 0
    for i in range(num):
        persons = [_person(main["keypoints"][i], rng.uniform(0.8, 1.0))]
        if has_extra[i]:
            kps = extras["keypoints"][j].copy()
            # shrink the fielder about its own hip to 0.3-0.6 of the batsman's size
            f = rng.uniform(0.3, 0.6) * main["torso_px"][i] / extras["torso_px"][j]
            kps[:, :2] = np.where(kps[:, 2:] > 0, extras["hip"][j] + (kps[:, :2] - extras["hip"][j]) * f, 0.0)
            persons.insert(int(rng.integers(0, 2)), _person(kps, rng.uniform(0.5, 1.0)))
            j += 1
        label = int(main["labels"][i])
        records.append({"file_name": f"synthetic://pose/{i:06d}", "height": image_size[0], "width": image_size[1],
                        "image_id": i, "label": label, "class_name": classes[label], "keypoints": persons})
    return records
