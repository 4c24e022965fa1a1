"""WIDER Face evaluation: hand-computed protocol cases, the real .mat files, prediction I/O,
the Detectron2 evaluator, the CLI and the benchmark's equality check."""
import json

import numpy as np
import pytest

from d2ext.evaluation.widerface import (WiderFaceEvaluator, WiderFaceGT, evaluate_widerface,
                                        load_widerface_gt, normalize_scores, plot_widerface_pr,
                                        read_prediction_file, read_widerface_predictions,
                                        voc_ap, widerface_gt_from_dicts,
                                        write_widerface_predictions)


def _gt(images, keep):
    """images: [(event, name, [[x, y, w, h], ...])]; keep: {setting: [bool per face, all images]}."""
    boxes = [np.asarray(b, dtype=float).reshape(-1, 4) for _, _, b in images]
    return WiderFaceGT(events=[e for e, _, _ in images], names=[n for _, n, _ in images],
                       boxes=np.concatenate(boxes), offsets=np.cumsum([0] + [len(b) for b in boxes]),
                       keep={k: np.asarray(v, bool) for k, v in keep.items()})


def _k(t):
    """Array index of threshold t_k = 1 - k/1000 for a t in (0, 1)."""
    return int(round((1 - t) * 1000)) - 1


# ---------------------------------------------------------------------------------------------
# The protocol on hand-made cases
# ---------------------------------------------------------------------------------------------
FACE0 = [10, 10, 20, 20]      # inclusive 21 x 21 px
FACE1 = [100, 100, 30, 30]


def _one_image_case():
    # pA hits face0, pB misses it (IoU 231/651 = 0.355), pC duplicates face0 (IoU 399/483 = 0.83),
    # pD hits face1. Raw scores 1.0 / 0.8 / 0.6 / 0.4 normalise to 1, 2/3, 1/3, 0.
    preds = {"img": np.array([
        [10, 10, 20, 20, 1.0],   # pA
        [20, 10, 20, 20, 0.8],   # pB
        [12, 10, 20, 20, 0.6],   # pC
        [100, 100, 30, 30, 0.4],  # pD
    ])}
    gt = _gt([("0--E", "img", [FACE0, FACE1])],
             {"face0": [True, False], "both": [True, True], "face1": [False, True]})
    return preds, gt


def test_one_image_hits_ignore_duplicate_and_low_iou():
    preds, gt = _one_image_case()
    r = evaluate_widerface(preds, gt)
    # face0 counts, face1 is an ignore face: pD is neither proposal nor recall
    p, rec = r["face0"]["precision"], r["face0"]["recall"]
    assert (p[_k(0.9)], rec[_k(0.9)]) == (1.0, 1.0)       # {pA}
    assert (p[_k(0.5)], rec[_k(0.5)]) == (0.5, 1.0)       # {pA, pB}: pB a false positive
    assert (p[_k(0.2)], rec[_k(0.2)]) == (1 / 3, 1.0)     # + pC: a duplicate is a proposal
    assert p[-1] == 1 / 3                                  # + pD: ignored (it would make 1/4)
    assert r["face0"]["ap"] == 1.0 and r["face0"]["num_faces"] == 1
    # both faces count
    p, rec = r["both"]["precision"], r["both"]["recall"]
    assert (p[_k(0.9)], rec[_k(0.9)]) == (1.0, 0.5)
    assert (p[_k(0.5)], rec[_k(0.5)]) == (0.5, 0.5)
    assert (p[_k(0.2)], rec[_k(0.2)]) == (1 / 3, 0.5)
    assert (p[-1], rec[-1]) == (0.5, 1.0)
    assert r["both"]["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5, abs=1e-15)
    # face0 is the ignore face: pA and pC are ignored, pB a false positive, pD recalls face1
    p, rec = r["face1"]["precision"], r["face1"]["recall"]
    assert (p[_k(0.9)], rec[_k(0.9)]) == (0.0, 0.0)       # no proposal yet (0/0 reported as 0)
    assert (p[_k(0.2)], rec[_k(0.2)]) == (0.0, 0.0)
    assert (p[-1], rec[-1]) == (0.5, 1.0)
    assert r["face1"]["ap"] == 0.5


def test_unsorted_input_is_sorted_by_score():
    preds, gt = _one_image_case()
    shuffled = {"img": preds["img"][[2, 0, 3, 1]]}
    a, b = evaluate_widerface(preds, gt), evaluate_widerface(shuffled, gt)
    for s in gt.settings:
        assert a[s]["ap"] == b[s]["ap"]
        np.testing.assert_array_equal(a[s]["precision"], b[s]["precision"])


def test_perfect_predictions_give_ap_one():
    faces = [[5, 5, 10, 12], [40, 8, 30, 30], [80, 80, 6, 6], [200, 10, 50, 60]]
    gt = _gt([("1--E", "a", faces[:3]), ("1--E", "b", faces[3:])],
             {"easy": [False, True, False, True], "medium": [True, True, False, True],
              "hard": [True, True, True, True]})
    preds = {"a": np.c_[faces[:3], [0.9, 0.3, 0.6]], "b": np.c_[faces[3:], [0.75]]}
    r = evaluate_widerface(preds, gt)
    assert {s: r[s]["ap"] for s in r} == pytest.approx({"easy": 1.0, "medium": 1.0, "hard": 1.0}, abs=1e-12)
    assert {s: r[s]["num_faces"] for s in r} == {"easy": 2, "medium": 3, "hard": 4}


def test_one_face_missing_gives_exact_recall():
    faces = [[5, 5, 10, 12], [40, 8, 30, 30], [80, 80, 6, 6], [200, 10, 50, 60]]
    gt = _gt([("1--E", "a", faces)], {"all": [True] * 4})
    preds = {"a": np.c_[faces[:3], [0.9, 0.5, 0.2]]}  # the fourth face is not found
    r = evaluate_widerface(preds, gt)["all"]
    assert r["recall"][-1] == 0.75 and r["recall"].max() == 0.75
    assert np.all(r["precision"][r["recall"] > 0] == 1.0)
    assert r["ap"] == 0.75


def test_pixel_inclusive_iou_and_degenerate_faces():
    # face 10..11 x 10..11 (inclusive 2x2 = 4 px); prediction w=0 covers 10..10 x 10..11 = 2 px:
    # inclusive IoU 2/4 = 0.5 >= 0.5 matches (an exclusive IoU would be 0).
    gt = _gt([("0--E", "a", [[10, 10, 1, 1]])], {"all": [True]})
    assert evaluate_widerface({"a": np.array([[10, 10, 0, 1, 0.7]])}, gt)["all"]["ap"] == 1.0
    # one pixel less overlap: 1/4 < 0.5 (prediction moved by one pixel)
    assert evaluate_widerface({"a": np.array([[11, 11, 0, 1, 0.7]])}, gt)["all"]["ap"] == 0.0
    # the val .mat's width -2 face (39_Ice_Skating_iceskiing_39_583 row 7) can never be matched,
    # a width-0 face (0_Parade_Parade_0_317 row 50) can
    gt = _gt([("39--I", "neg", [[1026, 474, -2, 23]]), ("0--P", "zero", [[706, 94, 0, 1]])],
             {"all": [True, True]})
    preds = {"neg": np.array([[1026, 474, -2, 23, 0.9]]), "zero": np.array([[706, 94, 0, 1, 0.8]])}
    r = evaluate_widerface(preds, gt)["all"]
    assert r["recall"][-1] == 0.5
    assert r["precision"][-1] == 0.5  # the prediction on the -2 face is a false positive


def test_faceless_image_and_image_without_predictions():
    # image "empty" has no faces: its (top-scored) prediction is not counted at all, but its score
    # does enter the normalisation (0.5 -> 0, 1.0 -> 1). Image "nopred" adds its face to recall.
    gt = _gt([("0--E", "face", [FACE0]), ("0--E", "empty", []), ("0--E", "nopred", [FACE1])],
             {"all": [True, True]})
    preds = {"face": np.array([FACE0 + [0.5]]), "empty": np.array([[50, 50, 20, 20, 1.0]])}
    r = evaluate_widerface(preds, gt)["all"]
    assert r["recall"][-2] == 0.0  # the face's normalised score is 0: counted only at t = 0
    assert (r["precision"][-1], r["recall"][-1]) == (1.0, 0.5)
    assert r["ap"] == 0.5


def test_score_normalisation():
    # min starts at 1 and max at 0, as in the toolkit
    np.testing.assert_array_equal(normalize_scores(np.array([0.25, 0.75, 0.5])), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(normalize_scores(np.array([2.0, 3.0])), [0.5, 1.0])
    # all negative: the max stays 0
    np.testing.assert_array_equal(normalize_scores(np.array([-0.5, -0.25])), [0.0, 0.5])
    np.testing.assert_array_equal(normalize_scores(np.array([0.3, 0.3])), [1.0, 1.0])  # no range


def test_scaling_scores_leaves_ap_unchanged():
    rng = np.random.default_rng(3)
    faces = rng.uniform(0, 400, (30, 2))
    faces = np.c_[faces, rng.uniform(8, 60, (30, 2))]
    gt = _gt([("0--E", "a", faces[:18]), ("0--E", "b", faces[18:])],
             {"x": rng.random(30) < 0.6, "y": np.ones(30, bool)})
    hits = faces[rng.random(30) < 0.7] + rng.normal(0, 3, (1, 4))
    fps = np.c_[rng.uniform(0, 400, (25, 2)), rng.uniform(8, 60, (25, 2))]
    boxes = np.concatenate([hits, fps])
    scores = rng.uniform(0.01, 0.99, len(boxes))
    img = rng.random(len(boxes)) < 0.5
    base = evaluate_widerface({"a": np.c_[boxes[img], scores[img]],
                               "b": np.c_[boxes[~img], scores[~img]]}, gt)
    assert 0 < base["x"]["ap"] < 1 and 0 < base["y"]["ap"] < 1
    for c in (4.0, 0.125, 32.0):  # powers of two: the normalised scores are bit-identical
        scaled = evaluate_widerface({"a": np.c_[boxes[img], c * scores[img]],
                                     "b": np.c_[boxes[~img], c * scores[~img]]}, gt)
        assert {s: scaled[s]["ap"] for s in scaled} == {s: base[s]["ap"] for s in base}


def test_voc_ap_makes_precision_monotone():
    # precision 0.5 at recall 0.5 is raised to the later 1.0 (monotone from the right)
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([0.5, 0.4, 1.0])) == 1.0
    assert voc_ap(np.array([0.25, 0.5]), np.array([1.0, 0.5])) == 0.25 * 1.0 + 0.25 * 0.5


# ---------------------------------------------------------------------------------------------
# Real ground truth
# ---------------------------------------------------------------------------------------------
def _gt_dir(shared_data):
    return shared_data / "widerface" / "eval_tools" / "ground_truth"


def test_real_mat_files_load(shared_data):
    gt = load_widerface_gt(_gt_dir(shared_data))
    assert gt.num_images == 3226 and len(gt.boxes) == 39708 and len(set(gt.events)) == 61
    assert {s: gt.num_faces(s) for s in gt.settings} == {"easy": 7211, "medium": 13319, "hard": 31958}
    i = gt.index("39_Ice_Skating_iceskiing_39_583")
    assert gt.events[i] == "39--Ice_Skating"
    assert gt.image_boxes(i)[7].tolist() == [1026, 474, -2, 23]  # kept verbatim
    assert gt.image_boxes(gt.index("0_Parade_marchingband_1_465"))[0].tolist() == [345, 211, 4, 4]


def test_real_perfect_predictions(shared_data):
    """All non-negative ground-truth boxes as predictions: easy and medium AP 1; hard misses the
    width -2 face and the second copy of the face listed twice in 21_Festival_Festival_21_604
    (its copy of the prediction matches the first row again: a false positive, scored lowest)."""
    gt = load_widerface_gt(_gt_dir(shared_data))
    rng = np.random.default_rng(0)
    preds = {}
    for k, name in enumerate(gt.names):
        b = gt.image_boxes(k)
        b = b[(b[:, 2] >= 0) & (b[:, 3] >= 0)]
        s = rng.uniform(0.2, 1.0, len(b))
        if name == "21_Festival_Festival_21_604":
            s[103] = 0.0  # row 103 repeats row 64
        preds[name] = np.c_[b, s]
    r = evaluate_widerface(preds, gt)
    assert r["easy"]["ap"] == pytest.approx(1.0, abs=1e-12)
    assert r["medium"]["ap"] == pytest.approx(1.0, abs=1e-12)
    assert r["hard"]["recall"][-1] == 31956 / 31958
    assert r["hard"]["ap"] == pytest.approx(31956 / 31958, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------------------------
def test_reader_blank_lines_trailing_spaces_and_missing_file(tmp_path):
    gt = _gt([("0--Parade", "img_a", [FACE0]), ("0--Parade", "img_b", [FACE1]),
              ("1--Handshaking", "img_c", [FACE0])], {"all": [True, True, True]})
    (tmp_path / "0--Parade").mkdir()
    (tmp_path / "1--Handshaking").mkdir()
    (tmp_path / "0--Parade" / "img_a.txt").write_text(
        "\n0--Parade/img_a.jpg  \n2 \n\n10 10 20 20 0.9 \n\n  12.5 11 19 21 0.25\n\n")
    (tmp_path / "1--Handshaking" / "img_c.txt").write_text("img_c\n0\n")
    (tmp_path / "1--Handshaking" / "stray.txt").write_text("stray\n0\n")
    preds, report = read_widerface_predictions(tmp_path, gt)
    np.testing.assert_array_equal(preds["img_a"], [[10, 10, 20, 20, 0.9], [12.5, 11, 19, 21, 0.25]])
    assert preds["img_c"].shape == (0, 5)
    assert "img_b" not in preds
    assert report.missing == ["0--Parade/img_b.txt"]
    assert report.unexpected == ["1--Handshaking/stray.txt"]
    assert (report.num_read, report.num_boxes) == (2, 2)
    assert "1 missing" in report.summary()
    r = evaluate_widerface(preds, gt)["all"]  # the missing image counts as no detections
    assert r["recall"][-1] == 1 / 3


def test_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("img\n2\n1 2 3 4 0.5\n1 2 3 0.5\n")
    with pytest.raises(ValueError, match=r"bad.txt:4: expected 5 numbers"):
        read_prediction_file(str(bad))
    bad.write_text("img\n3\n1 2 3 4 0.5\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: count line says 3 boxes, the file has 1"):
        read_prediction_file(str(bad))


def test_writer_round_trip(tmp_path):
    preds = {"img_a": np.array([[1.5, 2.0, 30.25, 40.0, 0.123456789], [0, 0, 1, 1, 1e-7]]),
             "img_b": np.zeros((0, 5))}
    n = write_widerface_predictions(tmp_path, preds, {"img_a": "3--Riot", "img_b": "4--Dancing"})
    assert n == 2
    assert (tmp_path / "3--Riot" / "img_a.txt").read_text().splitlines()[:2] == ["img_a", "2"]
    back, report = read_widerface_predictions(tmp_path)
    assert set(back) == {"img_a", "img_b"} and not report.missing
    np.testing.assert_array_equal(back["img_a"], preds["img_a"])
    assert back["img_b"].shape == (0, 5)


def test_plot_writes_png(tmp_path):
    preds, gt = _one_image_case()
    out = tmp_path / "pr.png"
    plot_widerface_pr(evaluate_widerface(preds, gt), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Detectron2 evaluator
# ---------------------------------------------------------------------------------------------
def _instances(xywh_scores, size=(200, 300)):
    import torch
    from detectron2.structures import Boxes, Instances

    a = torch.tensor(np.asarray(xywh_scores, dtype=np.float32).reshape(-1, 5))
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.cat([a[:, :2], a[:, :2] + a[:, 2:4]], dim=1))
    inst.scores = a[:, 4]
    inst.pred_classes = torch.zeros(len(a), dtype=torch.long)
    return {"instances": inst}


def test_gt_from_dataset_dicts():
    from detectron2.structures import BoxMode

    dicts = [
        {"file_name": "/x/0--Parade/p1.jpg", "event": "0--Parade", "annotations": [
            {"bbox": FACE0, "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0,
             "widerface_subsets": ["medium", "hard"]},
            {"bbox": [100, 100, 130, 130], "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 1,
             "widerface_subsets": []}]},
        {"file_name": "/x/0--Parade/p2.jpg", "annotations": [],
         "widerface_subsets": {"easy": [], "medium": [], "hard": []}},
    ]
    gt = widerface_gt_from_dicts(dicts)
    assert gt.names == ["p1", "p2"] and gt.events == ["0--Parade", "0--Parade"]
    np.testing.assert_array_equal(gt.boxes, [FACE0, FACE1])
    assert {s: gt.keep[s].tolist() for s in gt.settings} == {
        "easy": [False, False], "medium": [True, False], "hard": [True, False]}
    for d in dicts:  # without subset flags: one setting "all" = the valid (iscrowd 0) faces
        d.pop("widerface_subsets", None)
        for a in d["annotations"]:
            a.pop("widerface_subsets")
    assert {s: v.tolist() for s, v in widerface_gt_from_dicts(dicts).keep.items()} == {"all": [True, False]}


def test_evaluator_on_dataset_dicts(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    name = "widerface_eval_test_dicts"
    dicts = [
        {"file_name": "/x/0--Parade/img.jpg", "image_id": 1, "height": 200, "width": 300,
         "annotations": [
             {"bbox": FACE0, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
              "widerface_subsets": ["easy", "medium", "hard"]},
             {"bbox": FACE1, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
              "widerface_subsets": ["hard"]}]},
        {"file_name": "/x/1--Handshaking/other.jpg", "image_id": 2, "height": 200, "width": 300,
         "annotations": [
             {"bbox": FACE0, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
              "widerface_subsets": ["medium", "hard"]}]},
    ]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["face"], evaluator_type="widerface")

    from d2ext.evaluation import build_evaluator
    from detectron2.config import get_cfg

    ev = build_evaluator(get_cfg(), name, str(tmp_path))
    assert isinstance(ev, WiderFaceEvaluator)
    ev.reset()
    ev.process([{"file_name": dicts[0]["file_name"], "image_id": 1}],
               [_instances([FACE0 + [0.9], [20, 10, 20, 20, 0.6]])])  # face1 not found
    ev.process([{"file_name": dicts[1]["file_name"], "image_id": 2}], [_instances([FACE0 + [0.3]])])
    res = ev.evaluate()["widerface"]
    # easy: 1 face, found first -> 100; medium: 2 faces, found (0.9 & 0.3) with an FP at 0.6 in
    # between -> 50 + 50 * 2/3; hard: 3 faces, same two found -> (1/3) + (1/3)(2/3)
    assert res["AP_easy"] == pytest.approx(100.0)
    assert res["AP_medium"] == pytest.approx(50 + 50 * 2 / 3)
    assert res["AP_hard"] == pytest.approx(100 / 3 + 100 / 3 * 2 / 3)
    assert (tmp_path / "widerface_pr.png").is_file()
    saved = json.loads((tmp_path / "widerface_results.json").read_text())
    assert saved["easy"]["num_faces"] == 1 and saved["hard"]["num_faces"] == 3
    back, report = read_widerface_predictions(tmp_path / "widerface_predictions")
    assert set(back) == {"img", "other"} and back["img"].shape == (2, 5)
    assert (tmp_path / "widerface_predictions" / "1--Handshaking" / "other.txt").is_file()


def test_evaluator_with_official_mat(shared_data, tmp_path):
    """Metadata ``widerface_gt_dir`` set: ground truth comes from the .mat files (restricted to
    the dataset's images); predictions equal to the faces give AP 100 where faces exist."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    full = load_widerface_gt(_gt_dir(shared_data))
    names = ["0_Parade_Parade_0_194", "0_Parade_Parade_0_628"]  # easy 5 + 0, medium 5 + 3 faces
    dicts = [{"file_name": f"/nowhere/{full.events[full.index(n)]}/{n}.jpg", "image_id": i,
              "annotations": []} for i, n in enumerate(names)]
    ds = "widerface_eval_test_mat"
    if ds in DatasetCatalog.list():
        DatasetCatalog.remove(ds)
        MetadataCatalog.remove(ds)
    DatasetCatalog.register(ds, lambda: dicts)
    MetadataCatalog.get(ds).set(thing_classes=["face"], evaluator_type="widerface",
                                widerface_gt_dir=str(_gt_dir(shared_data)))
    ev = WiderFaceEvaluator(ds, output_dir=str(tmp_path), distributed=False)
    ev.reset()
    for d, n in zip(dicts, names):
        b = full.image_boxes(full.index(n))
        ev.process([d], [_instances(np.c_[b, np.linspace(0.9, 0.2, len(b))])])
    res = ev.evaluate()["widerface"]
    assert res == pytest.approx({"AP_easy": 100.0, "AP_medium": 100.0, "AP_hard": 100.0}, abs=1e-10)


def test_retinanet_config_builds_and_evaluates(tmp_path, repo_root):
    """configs/widerface/retinanet_R34_FPN.yaml builds Detectron2's RetinaNet on ResNet-34 and its
    outputs go through the WIDER evaluator (random weights: only the plumbing is checked)."""
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model

    from d2ext.engine import setup_cfg

    cfg = setup_cfg(str(repo_root / "configs" / "widerface" / "retinanet_R34_FPN.yaml"),
                    ["TEST.DETECTIONS_PER_IMAGE", "50"])
    assert cfg.MODEL.RESNETS.DEPTH == 34 and cfg.MODEL.RETINANET.NUM_CLASSES == 1
    assert cfg.DATASETS.TEST == ("widerface_val",)
    model = build_model(cfg).eval()
    ds = "widerface_eval_test_retinanet"
    dicts = [{"file_name": "/x/0--Parade/r1.jpg", "image_id": 1, "height": 64, "width": 96,
              "annotations": [{"bbox": [10, 10, 20, 24], "bbox_mode": 1, "iscrowd": 0,
                               "category_id": 0}]}]
    if ds in DatasetCatalog.list():
        DatasetCatalog.remove(ds)
        MetadataCatalog.remove(ds)
    DatasetCatalog.register(ds, lambda: dicts)
    MetadataCatalog.get(ds).set(thing_classes=["face"], evaluator_type="widerface")
    ev = WiderFaceEvaluator(ds, output_dir=str(tmp_path), distributed=False)
    ev.reset()
    inputs = [{"file_name": dicts[0]["file_name"], "image": torch.randint(0, 255, (3, 64, 96)).float(),
               "height": 64, "width": 96}]
    with torch.no_grad():
        ev.process(inputs, model(inputs))
    res = ev.evaluate()["widerface"]
    assert set(res) == {"AP_all"} and 0.0 <= res["AP_all"] <= 100.0


# ---------------------------------------------------------------------------------------------
# CLI and benchmark
# ---------------------------------------------------------------------------------------------
def test_cli_on_real_ground_truth(shared_data, tmp_path, run_tool):
    gt = load_widerface_gt(_gt_dir(shared_data))
    rng = np.random.default_rng(1)
    preds = {}
    for k, name in enumerate(gt.names):
        b = gt.image_boxes(k)
        b = b[(b[:, 2] > 0) & (b[:, 3] > 0)]
        b = b[rng.random(len(b)) < 0.8] + rng.normal(0, 1.0, (1, 4))
        preds[name] = np.c_[b, rng.uniform(0, 1, len(b))]
    skip = gt.names[5]
    events = dict(zip(gt.names, gt.events))
    write_widerface_predictions(tmp_path / "pred", {n: p for n, p in preds.items() if n != skip}, events)
    expected = evaluate_widerface({n: p for n, p in preds.items() if n != skip}, gt)
    proc = run_tool("eval_widerface.py", "--pred", tmp_path / "pred", "--gt", _gt_dir(shared_data),
                    "--json", tmp_path / "ap.json", "--plot", tmp_path / "pr.png")
    for s in ("easy", "medium", "hard"):
        assert f"{s.capitalize()} Val AP: {expected[s]['ap']}" in proc.stdout
    assert f"missing: {gt.events[5]}/{skip}.txt" in proc.stdout
    saved = json.loads((tmp_path / "ap.json").read_text())
    assert saved == {s: expected[s]["ap"] for s in ("easy", "medium", "hard")}
    assert (tmp_path / "pr.png").stat().st_size > 0
    bad = tmp_path / "pred" / gt.events[0] / f"{gt.names[0]}.txt"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ["1 2 3"] + lines[3:]) + "\n")  # first box line short
    proc = run_tool("eval_widerface.py", "--pred", tmp_path / "pred", "--gt", _gt_dir(shared_data),
                    check=False)
    assert proc.returncode == 2
    assert f"{gt.names[0]}.txt:3: expected 5 numbers" in proc.stderr


def test_benchmark_loop_form_agrees(shared_data, run_tool, tmp_path):
    """The benchmark asserts identical APs of tools/eval_widerface.py and the toolkit's Python port
    (both whole processes); run it on the first 40 val images with its seeded predictions."""
    out = tmp_path / "bench.json"
    run_tool("benchmark.py", "widerface_eval", "--widerface-images", "40", "--widerface-repeats", "1",
             "--json", out,
             env={"D2EXT_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1"})
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert "identical AP" in rows["widerface_eval"]["notes"]
    assert 0 < rows["widerface_eval_ap_hard"]["value"] < 1


def test_candidate_pruning_matches_brute_force():
    """The x-centre pruning of (prediction, face) pairs changes no match: crowded small integer
    boxes (many IoU == 0.5 ties and near misses) and fractional ones, against all pairs."""
    from d2ext.evaluation.widerface_protocol import _flatten_predictions, _match_predictions

    rng = np.random.default_rng(7)
    images, preds = [], {}
    for i in range(60):
        n = int(rng.integers(0, 12))
        xy = rng.integers(0, 25, (n, 2)).astype(float)
        wh = rng.integers(-1, 8, (n, 2)).astype(float)
        images.append(("0--E", f"i{i}", np.c_[xy, wh]))
        m = int(rng.integers(0, 30))
        pb = np.c_[rng.integers(0, 25, (m, 2)), rng.integers(0, 8, (m, 2))].astype(float)
        if n:  # half of them near a face: shifted / resized by a pixel, some fractionally
            idx = rng.integers(0, n, m // 2)
            pb[: m // 2] = np.c_[xy[idx], wh[idx]] + rng.integers(-1, 2, (m // 2, 4))
        pb[: m // 4] += rng.uniform(-0.5, 0.5, (m // 4, 4))
        preds[f"i{i}"] = np.c_[pb, rng.random(m)]
    gt = _gt(images, {"all": np.ones(sum(len(b) for _, _, b in images), bool)})
    boxes, _, img = _flatten_predictions(gt, preds)
    got = _match_predictions(boxes, img, gt, 0.5)
    expected = np.full(len(boxes), -1)
    for p in range(len(boxes)):
        g = gt.image_boxes(img[p])
        if len(g) == 0:
            continue
        b = boxes[p]
        bx2, by2, gx2, gy2 = b[0] + b[2], b[1] + b[3], g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]
        iw = np.minimum(bx2, gx2) - np.maximum(b[0], g[:, 0]) + 1
        ih = np.minimum(by2, gy2) - np.maximum(b[1], g[:, 1]) + 1
        ua = (bx2 - b[0] + 1) * (by2 - b[1] + 1) + (gx2 - g[:, 0] + 1) * (gy2 - g[:, 1] + 1) - iw * ih
        iou = np.where((iw > 0) & (ih > 0), iw * ih / np.where(ua > 0, ua, 1), 0.0)
        if iou.max() >= 0.5:
            expected[p] = gt.offsets[img[p]] + int(np.argmax(iou))
    assert (got >= 0).sum() > 100  # 129 with this seed
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# Light protocol, hostile prediction folders, the MAT reader, the registry
# ---------------------------------------------------------------------------------------------
def _write_tiny_gt(folder, compress=True):
    """The official .mat layout for one event, images img_a (FACE0, FACE1) and img_b (FACE0):
    easy keeps img_a's face 1, medium img_a's faces 1-2, hard all three."""
    from scipy.io import savemat

    def cells(values):
        out = np.empty((len(values), 1), dtype=object)
        for k, v in enumerate(values):
            out[k, 0] = v
        return out

    folder.mkdir(parents=True, exist_ok=True)
    events = cells(["0--Parade"])
    files = cells([cells(["img_a", "img_b"])])
    boxes = cells([cells([np.array([FACE0, FACE1], float), np.array([FACE0], float)])])
    savemat(folder / "wider_face_val.mat", {"event_list": events, "file_list": files,
                                            "face_bbx_list": boxes}, do_compression=compress)
    keep = {"easy": ([1], []), "medium": ([1, 2], []), "hard": ([1, 2], [1])}
    for s, (a, b) in keep.items():
        lists = cells([cells([np.array(a, np.uint8).reshape(-1, 1), np.array(b, np.uint8).reshape(-1, 1)])])
        savemat(folder / f"wider_{s}_val.mat", {"event_list": events, "file_list": files,
                                                "gt_list": lists}, do_compression=compress)
    return folder


_TINY_A = "img_a\n5\n10 10 20 20 0.9\n20 10 20 20 0.6\n30 30 5 5 1e308\n40 40 5 5 nan\n50 50 5 5 -1e308\n"
_TINY_B = "img_b\n1\n10 10 20 20 0.3\n"
# after leaving out the three bad lines: scores 0.9 / 0.6 / 0.3 normalise to 1 / 0.5 / 0; easy
# finds its face first (AP 1), medium one of two (0.5), hard two of three with a false positive
# in between (1/3 + 1/3 * 2/3)
_TINY_AP = {"easy": 1.0, "medium": 0.5, "hard": 1 / 3 + 2 / 9}

# runs a tool's main as __main__ and reports whether torch / detectron2 were imported
_PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print("PROBE", code, "torch" in sys.modules, "detectron2" in sys.modules)
"""


def _run_probe(repo_root, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _PROBE, str(repo_root / "tools" / "eval_widerface.py"),
                           *map(str, args)], cwd=repo_root, capture_output=True, text=True, timeout=120)


def _tiny_pred(tmp_path):
    pred = tmp_path / "pred" / "0--Parade"
    pred.mkdir(parents=True)
    (pred / "img_a.txt").write_text(_TINY_A)
    (pred / "img_b.txt").write_text(_TINY_B)
    return pred.parent


def test_cli_runs_without_torch_and_skips_non_finite_scores(tmp_path, repo_root):
    gt_dir = _write_tiny_gt(tmp_path / "gt")
    pred = _tiny_pred(tmp_path)
    proc = _run_probe(repo_root, "--pred", pred, "--gt", gt_dir, "--json", tmp_path / "ap.json",
                      "--report", tmp_path / "report.json")
    assert proc.stdout.strip().splitlines()[-1] == "PROBE 0 False False", proc.stdout + proc.stderr
    a = pred / "0--Parade" / "img_a.txt"
    assert f"skipped: {a}:5: score 1e+308 is beyond +-1e+09" in proc.stdout
    assert f"skipped: {a}:6: score nan is not finite" in proc.stdout
    assert f"skipped: {a}:7: score -1e+308 is beyond +-1e+09" in proc.stdout
    assert json.loads((tmp_path / "ap.json").read_text()) == pytest.approx(_TINY_AP, abs=1e-12)
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["num_read"], report["num_boxes"], len(report["skipped"])) == (2, 3, 3)


@pytest.mark.parametrize("case", ["folder", "symlink_loop", "not_utf8", "bad_count"])
def test_cli_unusable_prediction_file_is_one_line(tmp_path, repo_root, case):
    gt_dir = _write_tiny_gt(tmp_path / "gt")
    pred = _tiny_pred(tmp_path)
    target = pred / "0--Parade" / "img_b.txt"
    target.unlink()
    expected = {
        "folder": f"{target}: is a folder, expected a prediction file",
        "symlink_loop": f"{target}: cannot be read (a symlink loop)",
        "not_utf8": f"{target}:3: not UTF-8 text (byte 0xff at offset 14)",
        "bad_count": f"{target}:2: count line says 2 boxes, the file has 1",
    }[case]
    if case == "folder":
        target.mkdir()
    elif case == "symlink_loop":
        target.symlink_to(target)
    elif case == "not_utf8":
        target.write_bytes(b"img_b\n1\n10 10 \xff0 20 0.3\n")
    else:
        target.write_text("img_b\n2\n10 10 20 20 0.3\n")
    proc = _run_probe(repo_root, "--pred", pred, "--gt", gt_dir)
    assert proc.stdout.strip().splitlines()[-1] == "PROBE 2 False False"
    assert proc.stderr.strip().splitlines() == [f"eval_widerface: error: {expected} "
                                                "(run with --debug for the traceback)"]
    proc = _run_probe(repo_root, "--pred", pred, "--gt", gt_dir, "--debug")
    assert "Traceback" in proc.stderr and expected in proc.stderr


def test_protocol_imports_without_torch(repo_root):
    import subprocess
    import sys

    code = ("import sys, d2ext.evaluation.widerface_protocol, d2ext.evaluation.matfile, d2ext.evaluation\n"
            "print('torch' in sys.modules, 'detectron2' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_bulk_reader_equals_line_reader(tmp_path):
    """Files with the plain layout are parsed together (NumPy tokenising + np.fromstring); the
    values must equal Python's float() of each token, and files with blank lines, odd spacing or
    exponents must come out as the line-by-line reader gives them."""
    from d2ext.evaluation.widerface_protocol import _read_many

    rng = np.random.default_rng(5)
    texts = {
        "plain": "p\n3\n" + "".join(f"{x:.1f} {y:.1f} 20 21.5 {s!r}\n" for x, y, s in rng.random((3, 3)) * 500),
        "blank_first": "\n\nq\n1\n1 2 3 4 0.5\n",
        "crlf_tabs": "r\r\n2\r\n1\t2 3 4   1e-05\r\n\r\n-0.0 5 6 7 .25\r\n",
        "empty": "s\n0\n",
        "no_newline": "t\n1\n1 2 3 4 0.125",
        "exponents": "u\n2\n1E2 2e+1 3 4 0.75\n5 6 7 8 123456789.5\n",
    }
    files = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(text.encode())
        files.append((name, str(path)))
    got = dict(_read_many(files, []))
    for name, path in files:
        expected = np.array([[float(v) for v in line.split()] for line in
                             texts[name].replace("\r", "").split("\n")[2:] if line.strip()]
                            if name != "blank_first" else [[1, 2, 3, 4, 0.5]]).reshape(-1, 5)
        np.testing.assert_array_equal(got[name], expected)
        np.testing.assert_array_equal(got[name], read_prediction_file(path)[1])
        assert np.signbit(got["crlf_tabs"][1, 0])  # -0.0 kept


def test_mat_reader_matches_scipy(tmp_path, shared_data):
    from scipy.io import loadmat

    from d2ext.evaluation.matfile import read_mat

    def same(ours, theirs):
        if isinstance(ours, str):
            while isinstance(theirs, np.ndarray):
                theirs = theirs.flat[0] if theirs.size else ""
            return ours == str(theirs)
        if ours.dtype == object:
            return ours.shape == theirs.shape and all(same(a, b) for a, b in zip(ours.flat, theirs.flat))
        return ours.shape == theirs.shape and np.array_equal(ours, theirs)

    paths = sorted(_gt_dir(shared_data).glob("*.mat"))
    paths += sorted(_write_tiny_gt(tmp_path / "z", compress=True).glob("*.mat"))
    paths += sorted(_write_tiny_gt(tmp_path / "u", compress=False).glob("*.mat"))
    for path in paths:
        ours, theirs = read_mat(str(path)), loadmat(str(path))
        assert set(ours) == {k for k in theirs if not k.startswith("__")}, path
        for k in ours:
            assert same(ours[k], theirs[k]), (path, k)
    only = read_mat(str(paths[0]), ["event_list"])
    assert list(only) == ["event_list"] and only["event_list"].shape == (61, 1)
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file" * 20)
    with pytest.raises(ValueError, match=r"bad\.mat: not a MATLAB 5 MAT-file"):
        read_mat(str(bad))


def test_tiny_gt_through_the_loader(tmp_path):
    gt = load_widerface_gt(_write_tiny_gt(tmp_path / "gt"))
    assert gt.names == ["img_a", "img_b"] and gt.events == ["0--Parade"] * 2
    np.testing.assert_array_equal(gt.boxes, [FACE0, FACE1, FACE0])
    assert {s: gt.keep[s].tolist() for s in gt.settings} == {
        "easy": [True, False, False], "medium": [True, True, False], "hard": [True, True, True]}


def test_in_memory_predictions_out_of_range_are_refused():
    preds, gt = _one_image_case()
    preds["img"][1, 4] = 1e308
    with pytest.raises(ValueError, match=r"image 'img': score 1e\+308 is beyond"):
        evaluate_widerface(preds, gt)


def test_evaluator_registry_is_detectron2s():
    from detectron2.utils.registry import Registry

    import d2ext
    from d2ext.evaluation import EVALUATOR_REGISTRY, registered_evaluator_types

    d2ext.register_all()
    assert isinstance(EVALUATOR_REGISTRY, Registry)
    assert {"coco", "sem_seg", "classification", "widerface"} <= set(registered_evaluator_types())
    assert EVALUATOR_REGISTRY.get("widerface").__module__ == "d2ext.evaluation.widerface"
