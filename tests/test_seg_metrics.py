"""Dice / IoU / pixel-accuracy metrics, the sem-seg evaluator and the classical baselines."""
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.evaluation import build_evaluator
from d2ext.evaluation.classical import evaluate_classical, kmeans_labels, otsu_labels
from d2ext.evaluation.segmentation import (
    SegmentationMetricsEvaluator,
    confusion_matrix,
    metrics_from_confusion,
)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

# 3 classes; two ignored pixels (255) in row 2.
GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [0, 0, 0, 0]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 2, 2], [0, 0, 0, 0]])


def _register(tmp_path, images, labels, num_classes=3):
    """Register a sem-seg dataset from arrays: RGB images + uint8 label PNGs in tmp_path."""
    name = f"test_seg_{uuid.uuid4().hex[:8]}"
    dicts = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        f, g = tmp_path / f"{name}_{i}.png", tmp_path / f"{name}_{i}_label.png"
        Image.fromarray(img.astype(np.uint8)).save(f)
        Image.fromarray(lab.astype(np.uint8)).save(g)
        dicts.append({"file_name": str(f), "sem_seg_file_name": str(g), "height": lab.shape[0],
                      "width": lab.shape[1], "image_id": i})
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=[f"c{k}" for k in range(num_classes)], ignore_label=255,
                                  evaluator_type="sem_seg")
    return name, dicts


def test_confusion_and_metrics_exact_values():
    conf = confusion_matrix(PRED, GT, 3, 255)
    np.testing.assert_array_equal(conf, [[7, 1, 0], [1, 3, 0], [1, 0, 1]])
    m = metrics_from_confusion(conf, ["bg", "a", "b"])
    assert m["IoU-bg"] == pytest.approx(100 * 7 / 10)
    assert m["IoU-a"] == pytest.approx(100 * 3 / 5)
    assert m["IoU-b"] == pytest.approx(100 * 1 / 2)
    assert m["Dice-bg"] == pytest.approx(100 * 14 / 17)
    assert m["Dice-a"] == pytest.approx(100 * 6 / 8)
    assert m["Dice-b"] == pytest.approx(100 * 2 / 3)
    assert m["mIoU"] == pytest.approx(60.0)
    assert m["mDice"] == pytest.approx(100 * (14 / 17 + 0.75 + 2 / 3) / 3)
    assert m["fgDice"] == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    assert m["fgIoU"] == pytest.approx(100 * (0.6 + 0.5) / 2)
    assert m["pACC"] == pytest.approx(100 * 11 / 14)


def test_empty_prediction_and_absent_class():
    gt = np.zeros((4, 4), int)
    gt[:2, :2] = 1
    m = metrics_from_confusion(confusion_matrix(np.zeros((4, 4), int), gt, 3))
    assert m["Dice-1"] == 0.0 and m["IoU-1"] == 0.0
    assert m["IoU-0"] == pytest.approx(100 * 12 / 16)
    assert m["Dice-0"] == pytest.approx(100 * 24 / 28)
    assert math.isnan(m["IoU-2"]) and math.isnan(m["Dice-2"])  # class 2 absent from the truth
    assert m["mIoU"] == pytest.approx(100 * 0.75 / 2)
    assert m["fgDice"] == 0.0
    assert m["pACC"] == pytest.approx(75.0)


def test_all_ignore_image_counts_nothing():
    conf = confusion_matrix(np.ones((3, 5), int), np.full((3, 5), 255), 2)
    assert conf.sum() == 0
    m = metrics_from_confusion(conf)
    assert math.isnan(m["mIoU"]) and math.isnan(m["pACC"]) and math.isnan(m["mDice"])


def test_bad_label_is_reported():
    with pytest.raises(ValueError, match="label 7 outside"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)


def test_evaluator_accumulates_and_ignores(tmp_path):
    rgb = np.zeros((4, 4, 3))
    ignore_all = np.full((4, 4), 255)
    name, dicts = _register(tmp_path, [rgb, rgb], [GT, ignore_all])
    ev = SegmentationMetricsEvaluator(name, str(tmp_path / "out"), num_vis=2)
    ev.reset()
    onehot = torch.nn.functional.one_hot(torch.as_tensor(PRED), 3).permute(2, 0, 1).float()
    ev.process([dicts[0]], [{"sem_seg": onehot}])  # logits
    ev.process([dicts[1]], [np.zeros((4, 4), np.int64)])  # a label map, all ignored
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(60.0)
    assert res["pACC"] == pytest.approx(100 * 11 / 14)
    panels = sorted((tmp_path / "out" / "overlays").glob("*.png"))
    assert len(panels) == 2
    assert Image.open(panels[0]).size == (12, 4)  # image | truth | prediction


def test_evaluator_rejects_wrong_size(tmp_path):
    name, dicts = _register(tmp_path, [np.zeros((4, 4, 3))], [GT])
    ev = SegmentationMetricsEvaluator(name)
    with pytest.raises(ValueError, match="ground truth is 4x4 but the prediction"):
        ev.process([dicts[0]], [np.zeros((4, 5), np.int64)])


def test_agrees_with_detectron2_semseg_evaluator(tmp_path):
    rng = np.random.default_rng(0)
    labels, logits = [], []
    for h, w in [(17, 23), (30, 11), (8, 8)]:
        gt = rng.integers(0, 3, (h, w))  # class 3 never in the truth, sometimes predicted
        gt[rng.random((h, w)) < 0.15] = 255
        labels.append(gt)
        lg = torch.as_tensor(rng.normal(size=(4, h, w)), dtype=torch.float32)
        truth = torch.as_tensor(np.where(gt == 255, 0, gt))
        lg += 1.5 * torch.nn.functional.one_hot(truth, 4).permute(2, 0, 1)  # mostly right
        logits.append(lg)
    name, dicts = _register(tmp_path, [np.zeros((*g.shape, 3)) for g in labels], labels, num_classes=4)
    ours = build_evaluator(_cfg(), name, str(tmp_path / "o"))
    assert isinstance(ours, SegmentationMetricsEvaluator)
    theirs = SemSegEvaluator(name, distributed=False)
    for ev in (ours, theirs):
        ev.reset()
        for d, lg in zip(dicts, logits):
            ev.process([d], [{"sem_seg": lg}])
    a, b = ours.evaluate()["sem_seg"], theirs.evaluate()["sem_seg"]
    assert 0 < a["mIoU"] < 100
    assert a["mIoU"] == pytest.approx(b["mIoU"], abs=1e-9)
    assert a["pACC"] == pytest.approx(b["pACC"], abs=1e-9)
    for k in range(3):
        assert a[f"IoU-c{k}"] == pytest.approx(b[f"IoU-c{k}"], abs=1e-9)


def _cfg():
    from d2ext.engine import setup_cfg

    return setup_cfg("", ["TEST.NUM_VIS_IMAGES", 1])


def test_otsu_and_kmeans_rank_by_darkness():
    grey = np.full((20, 30), 220, np.uint8)
    grey[5:15, 5:20] = 140  # cytoplasm-like
    grey[8:12, 8:14] = 40  # nucleus-like
    truth = np.zeros_like(grey, dtype=np.int64)
    truth[5:15, 5:20] = 1
    truth[8:12, 8:14] = 2
    bgr = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(otsu_labels(bgr, 3), truth)
    np.testing.assert_array_equal(otsu_labels(bgr, 2), (truth > 0).astype(np.uint8))
    np.testing.assert_array_equal(kmeans_labels(bgr, 3), truth)
    np.testing.assert_array_equal(kmeans_labels(bgr, 2)[truth == 0], 0)


def test_evaluate_classical_on_a_dataset(tmp_path):
    grey = np.full((16, 16), 200, np.uint8)
    grey[4:12, 4:12] = 60
    gt = (grey < 128).astype(np.int64)
    gt[0, :] = 255
    name, _ = _register(tmp_path, [np.repeat(grey[..., None], 3, 2)], [gt], num_classes=2)
    res = evaluate_classical(name, "otsu", str(tmp_path / "cl"), num_vis=1)
    assert res["fgDice"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
    assert len(list((tmp_path / "cl" / "overlays").glob("*.png"))) == 1
