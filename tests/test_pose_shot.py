"""Pose -> shot: head, synthetic accuracy, train_net on cached keypoints, extraction round trip,
end-to-end PoseShotClassifier with a random-init Keypoint R-CNN."""
import json
import time

import numpy as np
import pytest
import torch

from d2ext.engine import setup_cfg
from d2ext.modeling.heads.shot_head import SHOT_HEAD_REGISTRY, ShotClassifierHead
from d2ext.data.pose_features import COCO_KEYPOINT_NAMES
from d2ext.modeling.pose import synthetic_head_accuracy

IDX = {n: i for i, n in enumerate(COCO_KEYPOINT_NAMES)}
TINY_KP = "configs/cricket/keypoint_rcnn_tiny.yaml"


def test_shot_head_depth_width_dropout():
    head = ShotClassifierHead(input_dim=10, num_classes=3, num_layers=2, hidden_dim=7, dropout=0.5)
    names = [n for n, _ in head.named_children()]
    assert names == ["fc1", "relu1", "drop1", "fc2", "relu2", "drop2", "cls_score"]
    assert head.fc2.in_features == 7 and head.cls_score.out_features == 3
    assert head(torch.randn(4, 10)).shape == (4, 3)
    linear = ShotClassifierHead(input_dim=10, num_classes=3, num_layers=0)
    assert [n for n, _ in linear.named_children()] == ["cls_score"]
    assert "ShotClassifierHead" in SHOT_HEAD_REGISTRY
    with pytest.raises(ValueError):
        ShotClassifierHead(input_dim=10, num_classes=3, dropout=1.0)


# Near batsmen for training, far ones for testing: what changes between two cameras.
NEAR, FAR = dict(torso_px_range=(60.0, 140.0)), dict(torso_px_range=(20.0, 50.0))


def test_synthetic_accuracy_normalised_vs_raw_fast():
    """Same head, same optimiser, same 500 training poses: torso-normalised vs image coordinates."""
    t0 = time.perf_counter()
    kw = dict(num_train=500, num_test=600, iters=1000)
    iid = {n: synthetic_head_accuracy(n, **kw) for n in ("torso", "image")}
    shift = {n: synthetic_head_accuracy(n, train_pose_kwargs=NEAR, test_pose_kwargs=FAR, **kw)
             for n in ("torso", "image")}
    print(f"synthetic top-1 (500 train): iid {iid}, near->far {shift} ({time.perf_counter() - t0:.1f} s)")
    assert iid["torso"] >= 0.95 and shift["torso"] >= 0.95
    assert iid["image"] <= iid["torso"] - 0.1  # un-normalised coordinates: clearly worse
    assert shift["image"] <= shift["torso"] - 0.2  # and they do not transfer to another camera distance


@pytest.mark.slow
def test_synthetic_accuracy_normalised_vs_raw_full():
    accs = {}
    for n_train in (100, 1000, 4000):
        for norm in ("torso", "image"):
            accs[(n_train, norm)] = synthetic_head_accuracy(norm, num_train=n_train, num_test=2000, iters=3000)
    accs[("angles", "torso")] = synthetic_head_accuracy("torso", num_train=1000, num_test=2000, iters=3000,
                                                        joint_angles=True)
    print("synthetic top-1:", accs)
    assert all(accs[(n, "torso")] >= 0.95 for n in (1000, 4000)) and accs[("angles", "torso")] >= 0.95
    assert accs[(100, "image")] <= accs[(100, "torso")] - 0.2
    assert accs[(1000, "image")] < accs[(1000, "torso")]


def test_train_net_pose_head_on_cached_synthetic(run_tool, tmp_path):
    out = tmp_path / "run"
    run_tool("train_net.py", "--config-file", "configs/cricket/pose_shot_synthetic.yaml",
             "SOLVER.MAX_ITER", "250", "SOLVER.STEPS", "(200,)", "SOLVER.WARMUP_ITERS", "20",
             "OUTPUT_DIR", str(out))
    assert (out / "model_final.pth").is_file()
    metrics = json.loads((out / "inference" / "pose_synthetic_test" / "metrics.json").read_text())
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (5, 5) and confusion.sum() == 1000
    assert confusion.sum(axis=1).tolist() == [200] * 5  # balanced test set, rows = true class
    assert metrics["top1"] == pytest.approx(100.0 * np.trace(confusion) / 1000)
    assert metrics["top1"] >= 90.0


# ----------------------------------------------------------------------------------------------
# A tiny cricket folder + a random-init tiny Keypoint R-CNN, shared by the round-trip tests.

@pytest.fixture(scope="module")
def tiny_cricket(tmp_path_factory, repo_root):
    from PIL import Image

    from detectron2.modeling import build_model

    root = tmp_path_factory.mktemp("pose_shot")
    rng = np.random.default_rng(0)
    for folder in ("0. cut", "1. pull"):
        (root / "cricket" / folder).mkdir(parents=True)
        for group in range(3):
            for aug in ("main", "30"):
                img = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / "cricket" / folder / f"{group}_{folder[3:]}_{aug}.jpg")
    torch.manual_seed(0)
    cfg = setup_cfg(str(repo_root / TINY_KP))
    torch.save({"model": build_model(cfg).state_dict()}, root / "kp_random.pth")
    return root


def test_extract_attach_train_round_trip(tiny_cricket, run_tool, repo_root, tmp_path):
    from converters.cricket import convert_cricket, register_cricket
    from d2ext.engine import Trainer

    out = tiny_cricket / "kp.json"
    args = ["--config-file", TINY_KP, "--weights", tiny_cricket / "kp_random.pth", "--root",
            tiny_cricket / "cricket", "--out", out, "--save-every", "5"]
    run_tool("extract_keypoints.py", *args)
    data = json.loads(out.read_text())
    assert len(data["images"]) == 12
    assert {a["image_id"] for a in data["annotations"]} <= {i["id"] for i in data["images"]}
    assert all(len(a["keypoints"]) == 51 and a["category_id"] == 1 for a in data["annotations"])
    # resume: drop the last 4 images, rerun: only those are processed again
    kept = {i["id"] for i in data["images"][:8]}
    partial = {**data, "images": data["images"][:8],
               "annotations": [a for a in data["annotations"] if a["image_id"] in kept]}
    out.write_text(json.dumps(partial))
    proc = run_tool("extract_keypoints.py", *args)
    assert "4 to do" in proc.stderr + proc.stdout
    again = json.loads(out.read_text())
    assert sorted(i["file_name"] for i in again["images"]) == sorted(i["file_name"] for i in data["images"])
    assert len(again["annotations"]) == len(data["annotations"])

    # attach: every record carries the persons of its image
    result = convert_cricket(tiny_cricket / "cricket", keypoints_file=out)
    per_file = {}
    for a in again["annotations"]:
        per_file[a["file_name"]] = per_file.get(a["file_name"], 0) + 1
    records = [r for split in result["splits"].values() for r in split]
    assert len(records) == 12
    for r in records:
        assert len(r["keypoints"]) == per_file.get(r["relative_path"], 0)

    # train the head on the attached keypoints (cached mode) and evaluate on the test split
    names = register_cricket("pose_rt", tiny_cricket / "cricket", keypoints_file=out)
    cfg = setup_cfg(str(repo_root / "configs/cricket/pose_shot_head.yaml"), [
        "MODEL.POSE_SHOT.NUM_CLASSES", "2", "DATASETS.TRAIN", f"('{names[0]}',)",
        "DATASETS.TEST", f"('{names[2]}',)", "SOLVER.MAX_ITER", "10", "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with an evaluation on DATASETS.TEST, which writes metrics.json
    res = Trainer.test(cfg, trainer.model)
    assert 0.0 <= res["classification"]["top1"] <= 100.0
    metrics = json.loads((tmp_path / "inference" / names[2] / "metrics.json").read_text())
    assert np.array(metrics["confusion"]).sum() == len(result["splits"]["test"])


def test_pose_shot_classifier_end_to_end_frozen_detector(tiny_cricket, repo_root):
    """Images -> random-init Keypoint R-CNN -> main person -> features -> head, train and test."""
    from converters.cricket import convert_cricket
    from d2ext.data.pose import PoseShotDatasetMapper
    from detectron2.modeling import build_model

    cfg = setup_cfg(str(repo_root / "configs/cricket/pose_shot_head.yaml"), [
        "MODEL.POSE_SHOT.NUM_CLASSES", "2", "MODEL.POSE_SHOT.KEYPOINT_CONFIG", str(repo_root / TINY_KP),
        "MODEL.POSE_SHOT.KEYPOINT_WEIGHTS", str(tiny_cricket / "kp_random.pth"),
        "MODEL.POSE_SHOT.TRAIN_MODE", "frozen_detector"])
    model = build_model(cfg)
    records = convert_cricket(tiny_cricket / "cricket")["splits"]["train"][:3]
    mapper = PoseShotDatasetMapper(cfg, True)
    inputs = [mapper(r) for r in records]
    assert all("image" in x and "persons" not in x for x in inputs)
    assert inputs[0]["image"].shape[1] == 128  # the keypoint config's MIN_SIZE_TEST
    before = {k: v.clone() for k, v in model.keypoint_model.state_dict().items()}
    model.train()
    assert not model.keypoint_model.training
    losses = model(inputs)
    assert set(losses) == {"loss_shot"} and torch.isfinite(losses["loss_shot"])
    losses["loss_shot"].backward()
    assert all(p.grad is None for p in model.keypoint_model.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    after = model.keypoint_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        outs = model([PoseShotDatasetMapper(cfg, False)(r) for r in records])
    for r, o in zip(records, outs):
        assert o["scores"].shape == (2,) and float(o["scores"].sum()) == pytest.approx(1.0, abs=1e-5)
        assert o["keypoints"].shape == (17, 3) and 0 <= o["pred_class"] < 2
        if o["person_index"] >= 0:  # the keypoints used are in input-image pixels
            assert o["num_persons"] > o["person_index"]
            xy = o["keypoints"][:, :2]
            assert (xy[:, 0] <= r["width"] + 1).all() and (xy[:, 1] <= r["height"] + 1).all()


def test_cached_mapper_mirror_and_model_errors(repo_root):
    from d2ext.data.pose import PoseShotDatasetMapper
    from detectron2.modeling import build_model

    kps = np.zeros((17, 3))
    kps[IDX["left_wrist"]] = [100, 50, 2]
    kps[IDX["right_wrist"]] = [300, 60, 2]
    rec = {"file_name": "x.jpg", "height": 480, "width": 640, "label": 1,
           "keypoints": [{"keypoints": kps.reshape(-1).tolist(), "score": 0.9, "bbox": [100, 50, 200, 10]}]}
    cfg = setup_cfg(str(repo_root / "configs/cricket/pose_shot_synthetic.yaml"), ["MODEL.POSE_SHOT.MIRROR_PROB", "1.0"])
    out = PoseShotDatasetMapper(cfg, True)(rec)
    assert out["persons"].shape == (1, 17, 3) and "image" not in out
    assert out["persons"][0, IDX["left_wrist"]].tolist() == [340, 60, 2]  # was the right wrist at x 300
    assert out["persons"][0, IDX["right_wrist"]].tolist() == [540, 50, 2]
    assert out["persons"][0, IDX["nose"]].tolist() == [0, 0, 0]  # missing stays (0, 0, 0)
    assert out["person_boxes"][0].tolist() == [340, 50, 540, 60]
    test_out = PoseShotDatasetMapper(cfg, False)(rec)  # no augmentation at test time
    assert test_out["persons"][0, IDX["left_wrist"]].tolist() == [100, 50, 2]
    model = build_model(cfg)
    model.train()
    with pytest.raises(ValueError, match="no cached 'persons' and no keypoint model"):
        model([{"file_name": "y.jpg", "height": 4, "width": 4, "label": 0}])
    with pytest.raises(ValueError, match="label 7 outside"):
        model([dict(test_out, label=7)])
    model.eval()
    empty = dict(test_out, persons=torch.zeros((0, 17, 3)), person_boxes=torch.zeros((0, 4)),
                 person_scores=torch.zeros(0))
    o = model([empty])[0]
    assert o["person_index"] == -1 and o["num_persons"] == 0 and (o["keypoints"] == 0).all()


def test_classification_evaluator_confusion_from_pose_outputs(tmp_path):
    """PoseShotClassifier outputs go straight into the shared ClassificationEvaluator."""
    from d2ext.evaluation.classification import ClassificationEvaluator

    ev = ClassificationEvaluator("unused", output_dir=str(tmp_path), distributed=False, class_names=["cut", "pull"])
    ev.reset()
    inputs = [{"label": 0}, {"label": 1}, {"label": 1}, {"label": 0}]
    probs = [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2]]
    ev.process(inputs, [{"scores": torch.tensor(p), "keypoints": torch.zeros(17, 3)} for p in probs])
    res = ev.evaluate()["classification"]
    assert res["top1"] == pytest.approx(75.0)
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion"] == [[2, 0], [1, 1]]


def test_draw_pose_shot():
    from d2ext.data.synthetic_pose import generate_poses
    from d2ext.utils.pose_vis import draw_pose_inset, draw_pose_shot

    kps = generate_poses(1, seed=0, missing_prob=0.0, torso_px_range=(80, 90))["keypoints"][0]
    image = np.full((240, 320, 3), 90, np.uint8)
    out = draw_pose_shot(image, kps, torch.tensor([0.2, 0.8]), ["cut", "pull"], inset_size=80)
    assert out.shape == image.shape and out.dtype == np.uint8
    inset = draw_pose_inset(kps, 80)
    assert np.array_equal(out[:80, 240:], inset)  # the normalised pose, top-right
    assert (inset != 255).any(axis=2).sum() > 50  # something is drawn on the white panel
    none = draw_pose_shot(image, None, torch.tensor([0.6, 0.4]), ["cut", "pull"])
    assert (none[:80, 240:] == 90).all()  # no person: no inset
    # the skeleton: pixels change around the joints (below the text / inset rows)
    changed = (out != none).any(axis=2)
    joints = [(int(y), int(x)) for x, y, _ in kps if 80 <= y < 240 and 0 <= x < 320]
    assert joints and sum(changed[y - 2:y + 3, x - 2:x + 3].any() for y, x in joints) >= 0.8 * len(joints)
