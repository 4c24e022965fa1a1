"""Fused pose + image shot classifier, the "no pose" input, and handedness canonicalisation."""
import json

import numpy as np
import pytest
import torch

from d2ext.data.pose_features import (COCO_KEYPOINT_NAMES, PoseFeatureExtractor, canonicalize_handedness,
                                      handedness_sign, mirror_keypoints, normalize_keypoints)
from d2ext.data.synthetic_pose import generate_poses
from d2ext.engine import setup_cfg
from d2ext.modeling.heads.shot_head import FusedShotHead
from d2ext.modeling.pose import fused_vs_single_accuracy, synthetic_head_accuracy

IDX = {n: i for i, n in enumerate(COCO_KEYPOINT_NAMES)}


def test_fused_head_beats_both_single_heads_with_missing_poses():
    """Shot in the pose, another attribute in the image, 20 % of images without a person."""
    acc = fused_vs_single_accuracy(num_train=600, num_test=800, iters=300, missing_pose_prob=0.2)
    print("fused vs single:", acc)
    # ceilings: pose only 0.8 * 0.5 + 0.2 * 0.25 = 0.45, image only 0.5, fused 0.8 + 0.2 * 0.5 = 0.9
    assert acc["pose"] <= 0.5 and acc["image"] <= 0.55
    assert acc["fused"] >= 0.8
    assert acc["fused"] >= max(acc["pose"], acc["image"]) + 0.25
    assert acc["fused_no_pose"] >= 0.4  # no person: the image still decides its half


def test_fused_head_no_pose_input_is_learned_and_ignores_the_pose():
    torch.manual_seed(0)
    head = FusedShotHead(pose_dim=5, image_dim=3, num_classes=4, hidden_dim=8, dropout=0.0, pose_drop_prob=0.0)
    image = torch.randn(2, 3)
    has = torch.tensor([False, True])
    a = head(torch.randn(2, 5), has, image)
    b = head(torch.randn(2, 5), has, image)
    assert torch.equal(a[0], b[0])  # no pose: the pose values do not matter
    assert not torch.equal(a[1], b[1])
    a[0].sum().backward()
    assert head.no_pose.grad is not None and head.no_pose.grad.abs().sum() > 0
    assert head.pose_branch[0].weight.grad is None or head.pose_branch[0].weight.grad.abs().sum() == 0
    # training: pose_drop_prob replaces present poses by the "no pose" input at that rate
    head = FusedShotHead(pose_dim=5, image_dim=3, num_classes=4, hidden_dim=8, dropout=0.0, pose_drop_prob=0.5)
    head.train()
    torch.manual_seed(1)
    pose, img = torch.randn(4000, 5), torch.zeros(4000, 3)
    out = head(pose, torch.ones(4000, dtype=torch.bool), img)
    no_pose = head(pose, torch.zeros(4000, dtype=torch.bool), img).detach()
    dropped = (out - no_pose).abs().amax(1) < 1e-6
    assert 0.45 < dropped.float().mean() < 0.55
    with pytest.raises(ValueError):
        FusedShotHead(pose_dim=5, image_dim=3, num_classes=4, pose_drop_prob=1.0)


def _right_handed_pose():
    """A right-hander facing +x (image right): nose ahead of the ears, knees bent forward."""
    k = np.zeros((17, 3))
    pts = {"nose": (212, 100), "left_eye": (208, 96), "right_eye": (206, 96), "left_ear": (198, 100),
           "right_ear": (194, 101), "left_shoulder": (205, 130), "right_shoulder": (185, 132),
           "left_elbow": (230, 160), "right_elbow": (200, 165), "left_wrist": (250, 150), "right_wrist": (235, 155),
           "left_hip": (200, 210), "right_hip": (190, 212), "left_knee": (225, 260), "right_knee": (180, 265),
           "left_ankle": (215, 320), "right_ankle": (170, 322)}
    for n, (x, y) in pts.items():
        k[IDX[n]] = [x, y, 2]
    return torch.tensor(k)


def test_handedness_sign_is_odd_and_canonical_features_mirror_invariant():
    pose = _right_handed_pose()[None]
    mirrored = mirror_keypoints(pose, width=640.0)
    xy, mask, _, _ = normalize_keypoints(pose)
    mxy, mmask, _, _ = normalize_keypoints(mirrored)
    assert handedness_sign(xy, mask).tolist() == [1.0] and handedness_sign(mxy, mmask).tolist() == [-1.0]
    cxy, cmask, flipped = canonicalize_handedness(mxy, mmask)
    assert flipped.tolist() == [True]
    torch.testing.assert_close(cxy, xy, rtol=0, atol=1e-9)
    assert torch.equal(cmask, mask)
    for norm in ("torso", "image"):
        fx = PoseFeatureExtractor(norm, canonical_handedness=True)
        sizes = torch.tensor([[480.0, 640.0]])
        torch.testing.assert_close(fx(mirrored, sizes), fx(pose, sizes), rtol=0, atol=1e-5)
        plain = PoseFeatureExtractor(norm)
        assert not torch.allclose(plain(mirrored, sizes), plain(pose, sizes), atol=1e-2)
    # without nose, ears and legs the torso-relative cues still decide, and stay odd
    few = pose.clone()
    few[0, [0, 3, 4, 13, 14, 15, 16]] = 0
    fxy, fmask, _, _ = normalize_keypoints(few)
    mfxy, mfmask, _, _ = normalize_keypoints(mirror_keypoints(few, width=640.0))
    assert handedness_sign(fxy, fmask).item() == -handedness_sign(mfxy, mfmask).item() != 0


def test_handedness_sign_odd_on_real_coco_people(shared_data):
    path = shared_data / "coco_kp" / "annotations" / "person_keypoints_val2017.json"
    anns = [a for a in json.loads(path.read_text())["annotations"] if a.get("num_keypoints", 0) >= 2]
    kps = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float64).view(-1, 17, 3)
    xy, mask, _, _ = normalize_keypoints(kps)
    mxy, mmask, _, _ = normalize_keypoints(mirror_keypoints(kps, width=1000.0))
    s, ms = handedness_sign(xy, mask), handedness_sign(mxy, mmask)
    assert (s != 0).sum() >= 0.9 * len(s)
    assert torch.equal(ms, -s)


def test_mirrored_shot_same_class_after_canonicalisation():
    """Trained on right-handers only; left-handers (mirrored) are classified as well as the
    right-handers with canonicalisation, and badly without."""
    kw = dict(num_train=400, num_test=500, iters=500, joint_angles=True, test_pose_kwargs=dict(left_handed_prob=1.0))
    canon = synthetic_head_accuracy("torso", canonical_handedness=True, **kw)
    plain = synthetic_head_accuracy("torso", canonical_handedness=False, **kw)
    print(f"left-handed test, right-handed training: canonical {canon:.3f}, plain {plain:.3f}")
    assert canon >= 0.85 and plain <= canon - 0.3


@pytest.fixture(scope="module")
def fused_cfg(repo_root):
    return setup_cfg(str(repo_root / "configs/cricket/fused_R34.yaml"), [
        "MODEL.POSE_SHOT.NUM_CLASSES", "2", "MODEL.RESNETS.DEPTH", "18", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.CLASSIFICATION.CROP_SIZE", "64"])


def test_fused_mapper_flips_image_and_persons_together(tmp_path, fused_cfg):
    from detectron2.data import transforms as T
    from PIL import Image

    from d2ext.data.pose import FusedShotDatasetMapper

    img = np.zeros((64, 96, 3), np.uint8)
    img[:, :10] = 255  # a white stripe on the left
    Image.fromarray(img).save(tmp_path / "a.png")
    kps = np.zeros((17, 3))
    kps[IDX["left_wrist"]] = [10, 20, 2]
    kps[IDX["right_wrist"]] = [30, 25, 2]
    rec = {"file_name": str(tmp_path / "a.png"), "height": 64, "width": 96, "label": 1,
           "keypoints": [{"keypoints": kps.reshape(-1).tolist(), "score": 0.9, "bbox": [10, 20, 20, 5]}]}
    flip = FusedShotDatasetMapper(True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB")
    out = flip(rec)
    assert out["image"].shape == (3, 64, 96) and (out["image"][:, :, -10:] == 255).all()
    assert out["persons"][0, IDX["left_wrist"]].tolist() == [66, 25, 2]  # was the right wrist at x 30
    assert out["persons"][0, IDX["right_wrist"]].tolist() == [86, 20, 2]
    assert out["person_boxes"][0].tolist() == [66, 20, 86, 25]
    keep = FusedShotDatasetMapper(True, augmentations=[T.RandomFlip(prob=0.0)], image_format="RGB")(rec)
    assert keep["persons"][0, IDX["left_wrist"]].tolist() == [10, 20, 2]
    no_kp = FusedShotDatasetMapper(fused_cfg, False)({k: v for k, v in rec.items() if k != "keypoints"})
    assert no_kp["persons"].shape == (0, 17, 3) and no_kp["image"].shape == (3, 64, 64)


def test_fused_classifier_trains_and_predicts_without_a_pose(tmp_path, fused_cfg):
    from detectron2.modeling import build_model
    from PIL import Image

    from d2ext.data.pose import FusedShotDatasetMapper

    poses = generate_poses(2, seed=0, missing_prob=0.0, image_size=(72, 96), torso_px_range=(10, 12))["keypoints"]
    rng = np.random.default_rng(0)
    recs = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rec = {"file_name": str(tmp_path / f"{i}.png"), "height": 72, "width": 96, "label": i % 2}
        if i < 2:
            rec["keypoints"] = [{"keypoints": poses[i].reshape(-1).tolist()}]
        recs.append(rec)
    model = build_model(fused_cfg)
    inputs = [FusedShotDatasetMapper(fused_cfg, True)(r) for r in recs]
    model.train()
    losses = model(inputs)
    assert set(losses) == {"loss_shot"} and torch.isfinite(losses["loss_shot"])
    losses["loss_shot"].backward()
    assert next(model.backbone.parameters()).grad is not None and model.head.no_pose.grad is not None
    model.eval()
    with torch.no_grad():
        outs = model([FusedShotDatasetMapper(fused_cfg, False)(r) for r in recs])
    assert [o["person_index"] for o in outs] == [0, 0, -1]  # the third image has no person
    assert all(o["scores"].shape == (2,) and float(o["scores"].sum()) == pytest.approx(1.0, abs=1e-5) for o in outs)
    assert (outs[2]["keypoints"] == 0).all()


def test_pose_data_does_not_import_modeling(repo_root):
    """Layering: d2ext.data (pose mapper, features, synthetic batsmen) never imports d2ext.modeling."""
    import subprocess
    import sys

    code = ("import sys, d2ext.data.pose, d2ext.data.pose_features, d2ext.data.synthetic_pose; "
            "print(sorted(m for m in sys.modules if m.startswith('d2ext.modeling') or m.startswith('d2ext.engine')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_visualize_shot_with_the_fused_model(tmp_path, repo_root):
    """tools/visualize_shot.py picks the config's mapper: the fused model draws every image, with
    or without a cached person."""
    from PIL import Image

    from tools import visualize_shot

    pose = generate_poses(1, seed=0, missing_prob=0.0, image_size=(120, 160), torso_px_range=(20, 22))["keypoints"][0]
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "in" / name)
    kp = {"images": [{"id": 0, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
          "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "keypoints": pose.reshape(-1).tolist()}]}
    (tmp_path / "kp.json").write_text(json.dumps(kp))
    visualize_shot.main(["--config-file", str(repo_root / "configs/cricket/fused_R34.yaml"), "--input",
                         str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--keypoints",
                         str(tmp_path / "kp.json"), "--class-names", "cut", "pull",
                         "MODEL.POSE_SHOT.NUM_CLASSES", "2", "MODEL.RESNETS.DEPTH", "18",
                         "INPUT.MIN_SIZE_TEST", "64", "INPUT.CLASSIFICATION.CROP_SIZE", "64"])
    a, b = (np.asarray(Image.open(tmp_path / "out" / n)) for n in ("a.png", "b.png"))
    assert a.shape == b.shape == (120, 160, 3)
    assert (a != 90).any(axis=2).sum() > (b != 90).any(axis=2).sum()  # a's skeleton and inset are drawn
