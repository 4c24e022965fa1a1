"""Per-image Dice in the segmentation evaluator: exact values on a hand-made 3-image case."""
import json
import math
import uuid

import numpy as np
import pytest
from PIL import Image

from d2ext.evaluation.segmentation import SegmentationMetricsEvaluator, confusion_matrix, image_dice, per_image_summary
from detectron2.data import DatasetCatalog, MetadataCatalog


def _register(tmp_path, stems, labels):
    name = f"test_perimg_{uuid.uuid4().hex[:8]}"
    dicts = []
    for i, (stem, lab) in enumerate(zip(stems, labels)):
        f, g = tmp_path / f"{stem}.png", tmp_path / f"{stem}_label.png"
        Image.fromarray(np.full(lab.shape + (3,), 200, np.uint8)).save(f)
        Image.fromarray(lab.astype(np.uint8)).save(g)
        dicts.append({"file_name": str(f), "sem_seg_file_name": str(g), "height": 4, "width": 4, "image_id": i})
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=["background", "wbc"], ignore_label=255, evaluator_type="sem_seg")
    return name, dicts


def test_per_image_report_three_images(tmp_path):
    gt = np.zeros((4, 4), np.int64)
    gt[1:3, 1:3] = 1  # 4 cell pixels in every image
    exact = gt.copy()  # Dice 1
    half = np.zeros((4, 4), np.int64)
    half[1, 1:3] = 1  # 2 of 4 found: 2*2 / (4 + 2) = 2/3
    poor = np.zeros((4, 4), np.int64)
    poor[1, 1] = 1
    poor[0, 0] = 1  # 1 of 4 found + 1 false: 2*1 / (4 + 2) = 1/3
    name, dicts = _register(tmp_path, ["a_exact", "b_half", "c_poor"], [gt, gt, gt])
    ev = SegmentationMetricsEvaluator(name, str(tmp_path / "out"), distributed=False, num_vis=1)
    ev.reset()
    for d, pred in zip(dicts, [exact, half, poor]):
        ev.process([d], [pred])
    res = ev.evaluate()["sem_seg"]
    assert res["imgDice"] == pytest.approx(100 * 2 / 3)
    assert res["imgBelow50"] == pytest.approx(100 / 3)
    # the pooled Dice differs from the per-image mean: 2*7 / (12 truth + 8 predicted)
    assert res["fgDice"] == pytest.approx(100 * 14 / 20)
    rep = ev.per_image_report()
    assert rep["num_images"] == 3 and rep["fraction_below"] == pytest.approx(1 / 3)
    assert [(f.split("/")[-1], round(d, 6)) for f, d in rep["worst"]] == [
        ("c_poor.png", round(1 / 3, 6)), ("b_half.png", round(2 / 3, 6)), ("a_exact.png", 1.0)]
    saved = json.loads((tmp_path / "out" / "per_image_dice.json").read_text())
    assert saved["worst"][0][0].endswith("c_poor.png") and saved["mean_dice"] == pytest.approx(2 / 3)
    assert len(saved["images"]) == 3
    # num_vis=1: only the worst image is drawn
    assert [p.name for p in (tmp_path / "out" / "overlays").glob("*.png")] == ["c_poor.png"]


def test_image_dice_edge_cases():
    empty = np.zeros((3, 3), np.int64)
    assert image_dice(confusion_matrix(empty, empty, 2)) == 1.0  # nothing to find, nothing found
    assert math.isnan(image_dice(confusion_matrix(empty, np.full((3, 3), 255), 2)))  # all ignored
    one = empty.copy()
    one[0, 0] = 1
    assert image_dice(confusion_matrix(one, empty, 2)) == 0.0  # a false cell in an empty image
    # 3 classes: mean over the foreground classes present (class 2 absent from both: skipped)
    gt = np.array([[1, 1, 0]])
    pred = np.array([[1, 0, 0]])
    assert image_dice(confusion_matrix(pred, gt, 3)) == pytest.approx(2 / 3)


def test_per_image_summary_skips_undefined():
    s = per_image_summary([("x", float("nan")), ("y", 0.4), ("z", 0.8)], worst=1)
    assert s["num_images"] == 2 and s["mean_dice"] == pytest.approx(0.6)
    assert s["fraction_below"] == 0.5 and s["worst"] == [["y", 0.4]]
