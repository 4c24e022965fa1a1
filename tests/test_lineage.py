"""The course's detection lineage: single-WBC set, patch tables, IoU, selective search, the R-CNN
SVM / box-regression stage, and Fast R-CNN / patch / R-CNN models training on tiny data."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from converters.bccd_wbc1 import (load_bccd_wbc1, load_wbc1_csv, single_wbc_records,
                                  wbc1_csv_text, write_wbc1_csv)
from converters.common import ConversionReport, make_box_annotation, make_record

# ------------------------------------------------------------------------- single-WBC set
RBC, WBC, PLT = 0, 1, 2


def _rec(name, boxes):
    return make_record(name, 0, [make_box_annotation(b, c) for c, b in boxes], 480, 640)


def test_single_wbc_filter_keeps_exactly_one():
    records = [
        _rec("BloodImage_00003.jpg", [(RBC, [10, 10, 50, 50]), (PLT, [0, 0, 9, 9])]),  # 0 WBC
        _rec("BloodImage_00007.jpg", [(RBC, [10, 10, 50, 50]), (WBC, [309, 49, 530, 240])]),  # 1
        _rec("BloodImage_00009.jpg", [(WBC, [0, 0, 100, 100]), (WBC, [200, 200, 300, 300])]),  # 2
    ]
    report = ConversionReport("bccd_wbc1")
    kept = single_wbc_records(records, WBC, report)
    assert [os.path.basename(r["file_name"]) for r in kept] == ["BloodImage_00007.jpg"]
    assert kept[0]["image_id"] == 8  # the file number + 1, the same in every split
    assert kept[0]["annotations"] == [make_box_annotation([309, 49, 530, 240], 0)]
    assert report.notes["dropped_images"] == [
        {"image": "BloodImage_00003.jpg", "reason": "0 WBC boxes"},
        {"image": "BloodImage_00009.jpg", "reason": "2 WBC boxes"}]
    assert report.num_images == 1 and dict(report.objects_per_class) == {"WBC": 1}
    # the course CSV: x range first, VOC 1-based values
    assert wbc1_csv_text(kept) == "filename,xmin,xmax,ymin,ymax\nBloodImage_00007.jpg,310,530,50,240\n"


def _voc(objects):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return objs


def _write_bccd(root, images):
    """A BCCD-layout folder: {name: [(class, (xmin, ymin, xmax, ymax)), ...]}, 64x48 images."""
    ann, jpg, sets = (root / "BCCD" / d for d in ("Annotations", "JPEGImages", "ImageSets/Main"))
    for d in (ann, jpg, sets):
        d.mkdir(parents=True)
    for name, objects in images.items():
        Image.new("RGB", (64, 48), (200, 100, 100)).save(jpg / f"{name}.jpg")
        (ann / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height>"
            f"<depth>3</depth></size>{_voc(objects)}</annotation>")
    (sets / "train.txt").write_text("\n".join(images) + "\n")


def test_single_wbc_set_from_voc_and_csv_round_trip(tmp_path):
    root = tmp_path / "data"
    _write_bccd(root, {
        "BloodImage_00000": [("RBC", (1, 1, 10, 10))],
        "BloodImage_00001": [("WBC", (11, 21, 40, 44)), ("RBC", (1, 1, 10, 10))],
        "BloodImage_00002": [("WBC", (1, 1, 20, 20)), ("WBC", (30, 10, 60, 40))],
    })
    report = ConversionReport("bccd_wbc1")
    recs = load_bccd_wbc1(root, "train", report)
    assert len(recs) == 1 and recs[0]["image_id"] == 2
    assert recs[0]["annotations"][0]["bbox"] == [10.0, 20.0, 40.0, 44.0]
    assert report.notes["dropped_reasons"] == {"0 WBC boxes": 1, "2 WBC boxes": 1}
    csv_file = tmp_path / "wbc1.csv"
    write_wbc1_csv(recs, csv_file)
    assert csv_file.read_text() == "filename,xmin,xmax,ymin,ymax\nBloodImage_00001.jpg,11,40,21,44\n"
    back = load_wbc1_csv(csv_file, root / "BCCD" / "JPEGImages")
    assert back[0]["annotations"][0]["bbox"] == [10.0, 20.0, 40.0, 44.0]
    assert (back[0]["height"], back[0]["width"]) == (48, 64)
    # the same through tools/convert.py, with the dropped images in the report
    import json

    from tools.convert import main

    out = tmp_path / "out"
    assert main(["bccd-wbc1", "--root", str(root), "--split", "train", "--csv-out", str(out / "w.csv"),
                 "--output", str(out / "w.json"), "--report", str(out / "r.json")]) == 0
    assert (out / "w.csv").read_text() == csv_file.read_text()
    rep = json.loads((out / "r.json").read_text())
    assert rep["dropped_images"] == [{"image": "BloodImage_00000.jpg", "reason": "0 WBC boxes"},
                                     {"image": "BloodImage_00002.jpg", "reason": "2 WBC boxes"}]
    coco = json.loads((out / "w.json").read_text())
    assert [a["bbox"] for a in coco["annotations"]] == [[10.0, 20.0, 30.0, 24.0]]  # XYWH


def test_bccd_single_wbc_counts(shared_data):
    report = ConversionReport("bccd_wbc1")
    recs = load_bccd_wbc1(shared_data / "bccd", None, report)
    assert len(recs) == 344 and report.notes["dropped_reasons"] == {"2 WBC boxes": 14, "0 WBC boxes": 6}
    assert [len(load_bccd_wbc1(shared_data / "bccd", s)) for s in ("train", "val", "test")] == [194, 85, 65]


def test_wbc1_csv_second_box_is_an_error(tmp_path):
    from converters.common import ConversionError

    f = tmp_path / "w.csv"
    f.write_text("filename,xmin,xmax,ymin,ymax\na.jpg,1,5,1,5\na.jpg,2,6,2,6\n")
    with pytest.raises(ConversionError, match=r"w.csv:3: second box for a.jpg \(first on line 2\)"):
        load_wbc1_csv(f, read_sizes=False)


# ------------------------------------------------------------------------- patch tables
def test_course_example_four_patches():
    from d2ext.data.patches import grid_patches, label_patches, patch_table_rows, write_patch_csv

    patches = grid_patches(640, 480, 2)
    np.testing.assert_array_equal(patches, [[0, 0, 320, 240], [320, 0, 640, 240],
                                            [0, 240, 320, 480], [320, 240, 640, 480]])
    # the course's WBC x 310-530, y 50-240 labels patch 2 (1-based, row-major)
    np.testing.assert_array_equal(label_patches(patches, [[310, 50, 530, 240]]), [0, 1, 0, 0])
    rec = {"file_name": "/x/BloodImage_00007.jpg", "height": 480, "width": 640,
           "annotations": [{"bbox": [310, 50, 530, 240]}]}
    rows = patch_table_rows([rec], lambda w, h: grid_patches(w, h, 2))
    assert rows == [["BloodImage_00007.jpg", 1, 0, 320, 0, 240, 0],
                    ["BloodImage_00007.jpg", 2, 320, 640, 0, 240, 1],
                    ["BloodImage_00007.jpg", 3, 0, 320, 240, 480, 0],
                    ["BloodImage_00007.jpg", 4, 320, 640, 240, 480, 0]]


def test_sixteen_patches_best_cell_is_positive(tmp_path):
    from d2ext.data.patches import grid_patches, label_patches, patch_table_rows, write_patch_csv

    patches = grid_patches(640, 480, 4)
    assert patches.shape == (16, 4)
    np.testing.assert_array_equal(patches[5], [160, 120, 320, 240])  # patch 6: row 2, column 2
    # no 160x120 cell reaches IoU 0.5 with the 220x190 WBC; its best cell (patch 7: x 320-480,
    # y 120-240, inside the box: IoU 19200 / 41800 = 0.46) is the positive
    labels = label_patches(patches, [[310, 50, 530, 240]])
    assert labels.tolist() == [0] * 6 + [1] + [0] * 9
    rec = {"file_name": "a.jpg", "height": 480, "width": 640, "annotations": [{"bbox": [310, 50, 530, 240]}]}
    out = tmp_path / "p.csv"
    write_patch_csv(patch_table_rows([rec], lambda w, h: grid_patches(w, h, 4)), out)
    lines = out.read_text().splitlines()
    assert lines[0] == "filename,patch,xmin,xmax,ymin,ymax,WBC"
    assert lines[7] == "a.jpg,7,320,480,120,240,1" and len(lines) == 17
    assert sum(line.endswith(",1") for line in lines[1:]) == 1


def test_anchor_patches_shapes_and_clipping():
    from d2ext.data.patches import anchor_patches

    boxes = anchor_patches(200, 100, sizes=[40], aspect_ratios=[0.25, 1.0, 4.0], stride=100)
    # centres (50, 50) and (150, 50); ratio h/w 0.25 -> 80 x 20, 1 -> 40 x 40, 4 -> 20 x 80
    np.testing.assert_allclose(boxes, [[10, 40, 90, 60], [110, 40, 190, 60],
                                       [30, 30, 70, 70], [130, 30, 170, 70],
                                       [40, 10, 60, 90], [140, 10, 160, 90]])
    clipped = anchor_patches(100, 100, sizes=[160], aspect_ratios=[1.0], stride=100)
    np.testing.assert_allclose(clipped, [[0, 0, 100, 100]])


# ------------------------------------------------------------------------- IoU
def test_best_box_iou_hand_computed():
    from d2ext.evaluation.best_box import image_best_box_iou

    # the course's figure: WBC x 310-530, y 50-240 against patch 2 (x 320-640, y 0-240):
    # overlap 210 x 190 = 39900; union 76800 + 41800 - 39900 = 78700
    assert image_best_box_iou([[320, 0, 640, 240]], [1.0], [[310, 50, 530, 240]]) == pytest.approx(39900 / 78700)
    # the best-scoring box counts, not the best-overlapping one: 5x5 overlap of two 10x10 boxes
    assert image_best_box_iou([[0, 0, 10, 10], [5, 5, 15, 15]], [0.2, 0.9], [[0, 0, 10, 10]]) == \
        pytest.approx(25 / 175)
    assert image_best_box_iou([[0, 0, 10, 10]], [0.5], [[20, 20, 30, 30]]) == 0.0
    assert image_best_box_iou(np.zeros((0, 4)), [], [[0, 0, 10, 10]]) == 0.0


def test_best_box_iou_evaluator():
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    from d2ext.evaluation.best_box import BestBoxIoUEvaluator

    name = "test_lineage_best_box"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [
            {"file_name": "a", "image_id": 1, "height": 40, "width": 40,
             "annotations": [{"bbox": [0, 0, 10, 10], "bbox_mode": 0, "category_id": 0}]},
            {"file_name": "b", "image_id": 2, "height": 40, "width": 40,
             "annotations": [{"bbox": [0, 0, 10, 20], "bbox_mode": 1, "category_id": 0}]}])  # XYWH
    ev = BestBoxIoUEvaluator(name)
    ev.reset()
    for image_id, boxes, scores in [(1, [[0, 0, 10, 10]], [0.9]), (2, [[0, 0, 10, 10]], [0.8])]:
        inst = Instances((40, 40))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.tensor(scores)
        ev.process([{"image_id": image_id}], [{"instances": inst}])
    res = ev.evaluate()["best_box_iou"]
    assert res["mean_iou"] == pytest.approx((1.0 + 0.5) / 2)  # image 2: 100 / 200
    assert res["iou50_rate"] == 1.0 and res["num_images"] == 2


# ------------------------------------------------------------------------- selective search
def _blob_image(h=72, w=96):
    img = np.full((h, w, 3), 230, np.uint8)
    img[10:40, 12:50] = (160, 40, 120)  # a purple "cell"
    img[45:70, 60:90] = (60, 60, 200)
    return img


def test_selective_search_inside_image_and_deterministic(tmp_path, monkeypatch):
    from tools.proposals import cached_proposals, proposal_dict, selective_search

    img = _blob_image()
    a = selective_search(img, "fast", max_side=0, min_size=4)
    b = selective_search(img, "fast", max_side=0, min_size=4)
    assert len(a) > 0
    np.testing.assert_array_equal(a, b)
    assert (a[:, 0] >= 0).all() and (a[:, 1] >= 0).all() and (a[:, 2] <= 96).all() and (a[:, 3] <= 72).all()
    assert ((a[:, 2] - a[:, 0]) >= 4).all() and ((a[:, 3] - a[:, 1]) >= 4).all()
    assert len(np.unique(a, axis=0)) == len(a)
    # shrinking first keeps the boxes in the original image's pixels
    small = selective_search(img, "fast", max_side=48, min_size=4)
    assert (small[:, 2] <= 96).all() and (small[:, 3] <= 72).all() and small[:, 2].max() > 48
    # the per-image cache returns the same boxes; the proposal dict is Detectron2's format
    monkeypatch.setenv("D2EXT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "img.png"
    Image.fromarray(img[:, :, ::-1]).save(path)
    first = cached_proposals(str(path), "fast", 0, 4)
    np.testing.assert_array_equal(first, a)
    assert len(list((tmp_path / "cache" / "selective_search").rglob("*.npy"))) == 1
    np.testing.assert_array_equal(cached_proposals(str(path), "fast", 0, 4), a)
    props = proposal_dict([{"file_name": str(path), "image_id": 7}], max_proposals=3, max_side=0, min_size=4)
    assert props["ids"] == [7] and props["boxes"][0].shape == (min(3, len(a)), 4)
    assert list(props["objectness_logits"][0]) == sorted(props["objectness_logits"][0], reverse=True)


# ------------------------------------------------------------------------- SVM + box regression
def test_svm_hard_negatives_and_box_regression_recover_linear_rules():
    from d2ext.modeling.meta_arch.rcnn_classic import fit_box_regressor, train_svm_hard_negatives

    rng = np.random.default_rng(0)
    w_true, b_true = np.array([2.0, -1.0, 0.5, 0.0, 1.0]), -0.5
    x = rng.normal(size=(3000, 5))
    margin = x @ w_true + b_true
    x, margin = x[np.abs(margin) > 0.3], margin[np.abs(margin) > 0.3]  # separable with a gap
    pos, neg = x[margin > 0], x[margin < 0]
    # start from 20 random negatives: mining has to find the ones near the boundary
    w, b = train_svm_hard_negatives(pos[:800], neg[:800], C=10.0, rounds=5, first_negatives=20)
    cos = w @ w_true / (np.linalg.norm(w) * np.linalg.norm(w_true))
    assert cos > 0.98
    test_pred = (x[1600:] @ w + b) > 0
    assert (test_pred == (margin[1600:] > 0)).mean() > 0.99
    w1, b1 = train_svm_hard_negatives(pos[:800], neg[:800], C=10.0, rounds=1, first_negatives=20)
    assert ((neg[:800] @ w1 + b1) > 0).sum() > ((neg[:800] @ w + b) > 0).sum()  # mining helped
    # box regression: deltas = A x + c exactly; a small ridge penalty recovers A and c
    a_true = rng.normal(size=(4, 5))
    c_true = np.array([0.1, -0.2, 0.05, 0.0])
    feats = rng.normal(size=(500, 5))
    a, c = fit_box_regressor(feats, feats @ a_true.T + c_true, lam=1e-6)
    np.testing.assert_allclose(a, a_true, atol=1e-4)
    np.testing.assert_allclose(c, c_true, atol=1e-4)


# ------------------------------------------------------------------------- tiny training runs
def _tiny_dataset(tmp_path, name):
    """3 images 96x72 with one purple 'cell' each; registered as ``name``; proposal file."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from tools.proposals import write_proposal_file

    records = []
    for i, (x0, y0) in enumerate([(10, 8), (40, 20), (50, 30)]):
        img = np.full((72, 96, 3), 230, np.uint8)
        img[y0:y0 + 30, x0:x0 + 36] = (160, 40, 120)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img[:, :, ::-1]).save(path)
        records.append({"file_name": str(path), "image_id": i + 1, "height": 72, "width": 96,
                        "annotations": [{"bbox": [x0, y0, x0 + 36, y0 + 30], "bbox_mode": 0,
                                         "category_id": 0, "iscrowd": 0}]})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(thing_classes=["WBC"], evaluator_type=["coco", "best_box_iou"])
    props = tmp_path / "props.pkl"
    write_proposal_file(records, props, max_proposals=50, max_side=0, min_size=4)
    return props


def _tiny_opts(name, props, tmp_path):
    return ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
            "DATASETS.PROPOSAL_FILES_TRAIN", f"('{props}',)", "DATASETS.PROPOSAL_FILES_TEST", f"('{props}',)",
            "INPUT.MIN_SIZE_TRAIN", "(72,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "72",
            "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
            "SEED", "0"]


def test_fast_rcnn_config_trains_10_iterations_on_precomputed_proposals(tmp_path, repo_root, monkeypatch):
    import torch

    import d2ext.engine  # noqa: F401
    from d2ext.engine import Trainer, setup_cfg

    monkeypatch.setenv("D2EXT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    name = "test_lineage_tiny_fast"
    props = _tiny_dataset(tmp_path, name)
    with open(props, "rb") as f:
        assert len(pickle.load(f)["ids"]) == 3
    cfg = setup_cfg(str(repo_root / "configs/bccd_wbc1/fast_rcnn_R18_C4.yaml"),
                    _tiny_opts(name, props, tmp_path) + ["SOLVER.MAX_ITER", "10"])
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals" and cfg.MODEL.LOAD_PROPOSALS
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIPool" and cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 7
    trainer = Trainer(cfg)
    assert trainer.model.proposal_generator is None  # PrecomputedProposals: none is built
    trainer.train()
    assert trainer.iter == 10 and os.path.exists(tmp_path / "out" / "model_final.pth")
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 10 and np.isfinite(losses).all()
    # background RoIs can only come from the precomputed proposals (ground truth is appended)
    assert trainer.storage.history("roi_head/num_bg_samples").latest() > 0
    res = Trainer.test(cfg, trainer.model)
    assert 0.0 <= res["best_box_iou"]["mean_iou"] <= 1.0 and res["best_box_iou"]["num_images"] == 3
    assert "AP50" in res["bbox"]


def test_patch_detector_and_rcnn_train_and_predict(tmp_path, repo_root, monkeypatch):
    import torch

    import d2ext.engine  # noqa: F401
    from d2ext.data import build_dataset_mapper
    from d2ext.engine import Trainer, setup_cfg
    from detectron2.data import DatasetCatalog
    from tools.train_rcnn_svm import fit_svm_stage

    monkeypatch.setenv("D2EXT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    name = "test_lineage_tiny_patch"
    props = _tiny_dataset(tmp_path, name)
    opts = _tiny_opts(name, props, tmp_path) + ["SOLVER.MAX_ITER", "2", "MODEL.PATCH_DETECTOR.CROP_SIZE", "32"]
    # the course's 4 patches: one box per image, which is one of the 4 grid cells
    cfg = setup_cfg(str(repo_root / "configs/bccd_wbc1/patch4_R18.yaml"), opts)
    trainer = Trainer(cfg)
    trainer.train()
    model = trainer.model.eval()
    inputs = [build_dataset_mapper(cfg, False)(DatasetCatalog.get(name)[0])]
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    assert len(inst) == 1
    cells = [[0, 0, 48, 36], [48, 0, 96, 36], [0, 36, 48, 72], [48, 36, 96, 72]]
    assert inst.pred_boxes.tensor[0].tolist() in cells
    # R-CNN: fine-tune 2 steps, fit the SVM stage, predict regressed boxes from the SVM scores
    cfg = setup_cfg(str(repo_root / "configs/bccd_wbc1/rcnn_R18.yaml"),
                    opts + ["MODEL.RCNN_CLASSIC.SVM_C", "1.0"])
    trainer = Trainer(cfg)
    trainer.train()
    model = trainer.model.eval()
    counts = fit_svm_stage(cfg, model)
    assert counts[0]["positives"] == 3 and counts[0]["negatives"] > 0
    assert int(model.svm_trained) == 1 and float(model.svm_weight.abs().sum()) > 0
    rec = get_first_with_proposals(name, props)
    inputs = [build_dataset_mapper(cfg, False)(rec)]
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    assert 1 <= len(inst) <= 10 and ((inst.scores > 0) & (inst.scores < 1)).all()
    # a hand-made stage: every score sigmoid(0) = 0.5, deltas dx = 0.25 (a quarter width right)
    d = model.svm_weight.shape[1]
    model.load_svm_stage(np.zeros((1, d)), np.zeros(1), np.zeros((1, 4, d)), [[0.25, 0, 0, 0]], 1.0)
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    props_xyxy = rec["proposal_boxes"][:300]
    shifted = props_xyxy + np.outer(0.25 * (props_xyxy[:, 2] - props_xyxy[:, 0]), [1, 0, 1, 0])
    shifted = np.minimum(shifted, [96, 72, 96, 72])
    torch.testing.assert_close(inst.scores, torch.full((len(inst),), 0.5))
    for box in inst.pred_boxes.tensor.numpy():
        assert np.abs(shifted - box).max(axis=1).min() < 1e-3  # a proposal moved right, clipped


def get_first_with_proposals(name, props):
    from detectron2.data import get_detection_dataset_dicts

    return get_detection_dataset_dicts([name], filter_empty=False, proposal_files=[str(props)])[0]
