"""Pose features: normalisation invariances on real COCO keypoints, masking, flip map, selection."""
import json

import numpy as np
import pytest
import torch

from d2ext.data.pose_features import (COCO_FLIP_INDICES, COCO_KEYPOINT_NAMES, PoseFeatureExtractor, flip_indices,
                                      joint_angles, mirror_keypoints, normalize_keypoints, persons_to_tensors,
                                      select_main_person, wrist_heights)
from d2ext.data.synthetic_pose import generate_poses, synthetic_pose_records

IDX = {n: i for i, n in enumerate(COCO_KEYPOINT_NAMES)}


def _coco_people(shared_data, split="val"):
    """(N, 17, 3) float64 keypoints of every annotated person with >= 2 labelled joints."""
    path = shared_data / "coco_kp" / "annotations" / f"person_keypoints_{split}2017.json"
    with open(path) as f:
        anns = json.load(f)["annotations"]
    kps = [np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3) for a in anns
           if a.get("num_keypoints", 0) >= 2 and not a.get("iscrowd", 0)]
    return torch.from_numpy(np.stack(kps))


def _move(kps, scale, shift):
    """Scale and shift the labelled joints; unlabelled ones stay (0, 0, 0) as COCO stores them."""
    out = kps.clone()
    present = kps[..., 2] > 0
    out[..., :2] = torch.where(present[..., None], kps[..., :2] * scale + torch.tensor(shift, dtype=kps.dtype),
                               kps[..., :2])
    return out


@pytest.mark.parametrize("normalization_args", [dict(), dict(use_joint_angles=False, use_wrist_height=False)])
def test_features_translation_and_scale_invariant_on_coco(shared_data, normalization_args):
    kps = _coco_people(shared_data)
    assert len(kps) >= 60  # 68 val persons carry keypoints (data README)
    fx = PoseFeatureExtractor("torso", **normalization_args)
    ref = fx(kps)
    assert ref.shape == (len(kps), fx.dim)
    for scale, shift in [(1.0, (123.4, -56.7)), (0.37, (0.0, 0.0)), (3.9, (-1500.25, 2048.5)), (0.05, (7.0, 9.0))]:
        moved = fx(_move(kps, scale, shift))
        torch.testing.assert_close(moved, ref, atol=1e-5, rtol=0)


def test_normalised_pose_is_not_trivially_constant(shared_data):
    """Guards the invariance test: the features differ between people and ignore nothing."""
    kps = _coco_people(shared_data)
    xy, mask, origin, scale = normalize_keypoints(kps)
    assert (scale > 1).all()
    assert xy[mask].abs().max() <= 1.0 + 1e-9  # every joint within one scale of the mid-hip
    feats = PoseFeatureExtractor()(kps)
    assert torch.cdist(feats, feats).triu(1)[torch.ones(len(kps), len(kps)).triu(1) > 0].min() > 1e-3


def test_missing_joints_are_masked_on_coco(shared_data):
    kps = _coco_people(shared_data)
    missing = kps[..., 2] == 0
    assert missing.any() and (~missing).any()
    xy, mask, _, _ = normalize_keypoints(kps)
    assert torch.equal(mask, ~missing)
    assert (xy[missing] == 0).all()
    # where a missing joint claims to be does not matter: it is masked, not read as a position
    garbage = kps.clone()
    garbage[..., 0] = torch.where(missing, torch.full_like(kps[..., 0], 987.0), kps[..., 0])
    garbage[..., 1] = torch.where(missing, torch.full_like(kps[..., 1], -55.0), kps[..., 1])
    fx = PoseFeatureExtractor()
    torch.testing.assert_close(fx(garbage), fx(kps), atol=0, rtol=0)
    feats = fx(kps)
    assert torch.equal(feats[:, 34:51], (~missing).float())  # the mask channel


def test_normalisation_exact_values():
    kps = torch.zeros((1, 17, 3))
    for name, (x, y) in {"left_hip": (30, 20), "right_hip": (10, 20), "left_shoulder": (30, 0),
                         "right_shoulder": (10, 0)}.items():
        kps[0, IDX[name]] = torch.tensor([x, y, 2.0])
    xy, mask, origin, scale = normalize_keypoints(kps)
    assert origin.tolist() == [[20.0, 20.0]]
    assert scale.tolist() == [50.0]  # 2.5 x torso 20 > largest joint distance sqrt(800)
    assert xy[0, IDX["left_shoulder"]].tolist() == pytest.approx([0.2, -0.4])
    assert mask.sum() == 4 and (xy[0, ~mask[0]] == 0).all()
    # a wrist far below: the largest joint distance (|(10, 0) - (20, 120)|) takes over
    kps[0, IDX["left_wrist"]] = torch.tensor([20.0, 120.0, 1.0])
    _, _, _, scale = normalize_keypoints(kps)
    assert scale.item() == pytest.approx(float(np.hypot(10, 120)))
    # v = 1 (labelled, hidden) counts as present, v = 0 does not; no hips -> shoulder origin
    kps[0, IDX["left_hip"], 2] = 0
    kps[0, IDX["right_hip"], 2] = 0
    _, mask, origin, _ = normalize_keypoints(kps)
    assert mask[0, IDX["left_wrist"]] and not mask[0, IDX["left_hip"]]
    assert origin.tolist() == [[20.0, 0.0]]


def test_engineered_features_exact():
    xy = torch.zeros((1, 17, 2), dtype=torch.float64)
    mask = torch.zeros((1, 17), dtype=torch.bool)
    pts = {"left_shoulder": (0, 0), "left_elbow": (1, 0), "left_wrist": (1, -1), "left_hip": (0, 1),
           "right_shoulder": (2, 0)}
    for n, p in pts.items():
        xy[0, IDX[n]] = torch.tensor(p, dtype=torch.float64)
        mask[0, IDX[n]] = True
    ang, valid = joint_angles(xy, mask)
    assert valid[0].tolist() == [True, False, True, False, False, False]
    assert ang[0, 0].item() == pytest.approx(np.pi / 2)  # left elbow: right angle
    assert ang[0, 2].item() == pytest.approx(np.pi / 2)  # left shoulder: hip below, elbow sideways
    h, hvalid = wrist_heights(xy, mask)
    assert hvalid[0].tolist() == [True, False]
    assert h[0, 0].item() == pytest.approx(1.0)  # wrist one unit above the shoulder line (y down)


def test_flip_map_swaps_left_and_right():
    perm = flip_indices()
    assert tuple(perm) == COCO_FLIP_INDICES
    assert perm[IDX["nose"]] == IDX["nose"]
    for side in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
        assert perm[IDX[f"left_{side}"]] == IDX[f"right_{side}"]
        assert perm[IDX[f"right_{side}"]] == IDX[f"left_{side}"]
    kps = torch.from_numpy(generate_poses(4, seed=3, missing_prob=0.0)["keypoints"])
    m = mirror_keypoints(kps, width=640)
    assert m[:, IDX["left_wrist"], 0].tolist() == pytest.approx((640 - kps[:, IDX["right_wrist"], 0]).tolist())
    assert torch.equal(m[:, IDX["left_wrist"], 1:], kps[:, IDX["right_wrist"], 1:])
    torch.testing.assert_close(mirror_keypoints(m, width=640), kps)
    # mirroring commutes with normalisation: normalised(mirror) = mirror(normalised) about the hip
    xy, mask, _, _ = normalize_keypoints(kps)
    xy_m, mask_m, _, _ = normalize_keypoints(m)
    ref = mirror_keypoints(torch.cat([xy, mask[..., None].double()], -1))
    torch.testing.assert_close(xy_m, ref[..., :2])
    with pytest.raises(KeyError, match="left_paw"):
        flip_indices(flip_map=[("left_paw", "right_paw")])


def test_select_main_person_modes():
    def person(x0, y0, size, score):
        k = np.zeros((17, 3))
        k[:, 0], k[:, 1], k[:, 2] = x0 + size / 2, y0 + size / 2, 2
        return {"keypoints": k.reshape(-1).tolist(), "score": score, "bbox": [x0, y0, size, size]}

    persons = [person(0, 0, 50, 0.99), person(290, 220, 20, 0.5), person(500, 400, 100, 0.7),
               {"keypoints": [0.0] * 51, "score": 1.0, "bbox": [0, 0, 600, 600]}]  # no joint: never chosen
    kps, boxes, scores = persons_to_tensors(persons)
    assert boxes[2].tolist() == [500, 400, 600, 500]
    assert select_main_person(kps, boxes, scores, "largest_box") == 2
    assert select_main_person(kps, boxes, scores, "highest_score") == 0
    assert select_main_person(kps, boxes, scores, "nearest_center", image_size=(480, 640)) == 1
    assert select_main_person(kps, boxes, scores, "highest_score", min_score=0.995) == -1
    assert select_main_person(kps[:0], boxes[:0], scores[:0]) == -1
    with pytest.raises(ValueError, match="image_size"):
        select_main_person(kps, boxes, scores, "nearest_center")
    with pytest.raises(ValueError, match="biggest"):
        select_main_person(kps, boxes, scores, "biggest")
    # without bbox: the extent of the present joints
    _, b, s = persons_to_tensors([{"keypoints": [1, 2, 2, 5, 9, 1] + [0] * 45}])
    assert b.tolist() == [[1, 2, 5, 9]] and s.tolist() == [1.0]


def test_image_normalisation_is_not_invariant():
    kps = torch.from_numpy(generate_poses(8, seed=0)["keypoints"]).double()
    sizes = torch.tensor([[480, 640]] * 8)
    fx = PoseFeatureExtractor("image", use_joint_angles=False, use_wrist_height=False)
    assert not torch.allclose(fx(_move(kps, 1.5, (10.0, 0.0)), sizes), fx(kps, sizes), atol=1e-3)
    with pytest.raises(ValueError, match="image_sizes"):
        fx(kps)


def test_synthetic_generator_seeded():
    a, b = generate_poses(50, seed=7), generate_poses(50, seed=7)
    assert np.array_equal(a["keypoints"], b["keypoints"]) and np.array_equal(a["labels"], b["labels"])
    c = generate_poses(50, seed=8)
    assert not np.array_equal(a["keypoints"], c["keypoints"])
    assert np.bincount(a["labels"]).tolist() == [10] * 5  # balanced
    missing = a["keypoints"][..., 2] == 0
    assert 0.03 < missing.mean() < 0.2 and (a["keypoints"][missing][:, :2] == 0).all()
    recs = synthetic_pose_records(40, seed=1, distractor_prob=0.5)
    n_persons = [len(r["keypoints"]) for r in recs]
    assert set(n_persons) == {1, 2} and all(len(p["keypoints"]) == 51 for r in recs for p in r["keypoints"])
    # the batsman (the same figure as without fielders) is the largest person in every image
    alone = synthetic_pose_records(40, seed=1, distractor_prob=0.0)
    for r, a in zip(recs, alone):
        kps, boxes, scores = persons_to_tensors(r["keypoints"])
        i = select_main_person(kps, boxes, scores, "largest_box")
        assert r["keypoints"][i]["keypoints"] == a["keypoints"][0]["keypoints"]
        assert r["label"] == a["label"]
