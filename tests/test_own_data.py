"""Your own data from the shell: COCO files as datasets (moved with their images), the class-count
check, a missing built-in dataset, and tools/evaluate.py's AP against hand-computed values."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from d2ext.data.coco_files import (DatasetNotFoundError, NumClassesError, check_datasets, coco_image_root,
                                   register_coco_file, resolve_dataset)
from d2ext.utils.metrics import average_precision, box_iou, coco_evaluate, plain_average_precision
from detectron2.data import DatasetCatalog, MetadataCatalog
from tools._common import split_inputs

REPO = str(Path(__file__).resolve().parents[1])

TINY = "configs/shapes/retinanet_R18_FPN_tiny.yaml"
CLASSES = ["disc", "block"]


def make_dataset(root, num_images, seed, image_root_key=True):
    """``root/images/*.png`` (64x64, a disc and/or a block each) and ``root/annotations/data.json``
    written by the converters' COCO writer; with ``image_root_key`` the file records its image
    folder the way tools/convert.py does (``"d2ext": {"image_root": "../images"}``)."""
    from converters.common import export_coco_json

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    records = []
    for i in range(num_images):
        img = Image.fromarray(rng.integers(0, 60, (64, 64, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        anns = []
        for c in rng.permutation(2)[: 1 + i % 2]:
            s = int(rng.integers(14, 24))
            x, y = (int(v) for v in rng.integers(2, 62 - s, 2))
            if c == 0:
                draw.ellipse([x, y, x + s, y + s], fill=(230, 60, 60))
            else:
                draw.rectangle([x, y, x + s, y + s], fill=(60, 220, 80))
            anns.append({"bbox": [x, y, x + s + 1, y + s + 1], "bbox_mode": 0, "category_id": int(c)})
        img.save(images / f"im{i:02d}.png")
        records.append({"file_name": str(images / f"im{i:02d}.png"), "image_id": i + 1, "height": 64,
                        "width": 64, "annotations": anns})
    out = root / "annotations" / "data.json"
    out.parent.mkdir()
    export_coco_json(records, CLASSES, out, image_root=images)
    coco = json.loads(out.read_text())
    if image_root_key:  # what the converters record (added here if this checkout's do not yet)
        coco.setdefault("d2ext", {"image_root": "../images"})
    else:
        coco.pop("d2ext", None)
    out.write_text(json.dumps(coco))
    return out


# ------------------------------------------------------------------------------------------
# evaluate.py / plain metrics on hand-made cases
# ------------------------------------------------------------------------------------------
GT = {"images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100},
                 {"id": 2, "file_name": "b.png", "height": 100, "width": 100}],
      "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
      "annotations": [
          {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
          {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0}]}


def _write(tmp_path, gt, rows):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(rows))
    return str(tmp_path / "gt.json"), str(tmp_path / "pred.json")


def test_perfect_predictions_give_ap_1(tmp_path):
    rows = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in GT["annotations"]]
    m = coco_evaluate(*_write(tmp_path, GT, rows))
    # pycocotools divides by tp + fp + eps, so "1" is 1 - 2e-16
    one = pytest.approx(1.0, abs=1e-12)
    assert (m["AP"], m["AP50"], m["AP75"]) == (one, one, one)
    assert m["per_class"] == {"cat": {"AP": one, "AP50": one, "num_gt": 2},
                              "dog": {"AP": one, "AP50": one, "num_gt": 1}}


def test_one_missed_of_two_gives_51_of_101(run_tool, tmp_path):
    # cat: 1 of its 2 boxes found -> precision 1 up to recall 0.5, then nothing: COCO samples 101
    # recall points, 51 of them (0, 0.01, ..., 0.50) at precision 1 -> AP 51/101. dog: perfect.
    rows = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 2, "bbox": [5, 5, 40, 40], "score": 0.8}]
    gt, pred = _write(tmp_path, GT, rows)
    proc = run_tool("evaluate.py", "--gt", gt, "--pred", pred, "--json", tmp_path / "m.json",
                    "--plot", tmp_path / "pr.png")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["per_class"]["cat"]["AP50"] == pytest.approx(51 / 101, abs=1e-12)
    assert m["per_class"]["cat"]["AP"] == pytest.approx(51 / 101, abs=1e-12)
    assert m["per_class"]["dog"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert m["AP50"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-12)
    from tools.evaluate import plain_ap50  # what --plain prints (in-process: torch is loaded here)

    assert plain_ap50(gt, pred) == {"cat": pytest.approx(51 / 101, abs=1e-12), "dog": 1.0}
    # the curve: precision 1 up to recall 0.5, 0 after
    curve = m["pr_curves"]["cat"]
    assert curve["precision"][:51] == [1.0] * 51 and curve["precision"][51:] == [0.0] * 50
    assert (tmp_path / "pr.png").stat().st_size > 0
    assert "cat    0.5050" in proc.stdout


def test_evaluate_names_an_image_id_the_ground_truth_lacks(run_tool, tmp_path):
    gt, pred = _write(tmp_path, GT, [{"image_id": "a.png", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    proc = run_tool("evaluate.py", "--gt", gt, "--pred", pred, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "'a.png'" in err and "--input" in err and "Traceback" not in err


def test_plain_iou_and_ap_are_the_textbook_values():
    # half-overlapping 10x10 squares: intersection 50, union 150
    # (float32: Detectron2's Boxes)
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]]).tolist() == [[pytest.approx(1 / 3), 0.0]]
    # TP, FP, TP over 2 ground-truth boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    recall, precision = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert average_precision(recall, precision, points=None) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(recall, precision) == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_plain_ap_equals_pycocotools_ap50(tmp_path):
    rng = np.random.default_rng(0)
    images, anns, rows = [], [], []
    for i in range(1, 7):
        images.append({"id": i, "file_name": f"{i}.png", "height": 200, "width": 200})
        for _ in range(3):
            x, y, w, h = (float(v) for v in rng.uniform(0, 120, 2).tolist() + rng.uniform(15, 60, 2).tolist())
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            # a jittered detection (IoU spread around 0.5) and a random false positive
            jit = rng.normal(0, 0.18, 4) * [w, h, w, h]
            rows.append({"image_id": i, "category_id": 1, "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                         "score": float(rng.uniform())})
            rows.append({"image_id": i, "category_id": 1, "bbox": rng.uniform(0, 140, 4).tolist(),
                         "score": float(rng.uniform(0, 0.6))})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    m = coco_evaluate(*_write(tmp_path, gt, rows))
    boxes = {}
    for a in anns:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    dets = [(r["image_id"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]],
             r["score"]) for r in rows]
    assert 0.1 < m["AP50"] < 0.9  # a case with real misses and false positives
    assert plain_average_precision(boxes, dets, 0.5) == pytest.approx(m["AP50"], abs=1e-12)


# ------------------------------------------------------------------------------------------
# COCO files as datasets
# ------------------------------------------------------------------------------------------
def test_coco_file_found_after_moving_and_its_metadata(tmp_path):
    src = make_dataset(tmp_path / "src", 3, seed=1)
    shutil.move(str(tmp_path / "src"), str(tmp_path / "moved"))
    path = str(tmp_path / "moved" / "annotations" / "data.json")
    assert register_coco_file(path) == path
    records = DatasetCatalog.get(path)
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert all(os.path.isfile(r["file_name"]) and "moved" in r["file_name"] for r in records)
    meta = MetadataCatalog.get(path)
    assert meta.thing_classes == CLASSES and meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1} and meta.json_file == path
    assert not os.path.exists(src)
    # without the d2ext key, images are relative to the file's own folder unless told otherwise
    coco = json.loads(open(path).read())
    del coco["d2ext"]
    assert coco_image_root(path, coco) == str(tmp_path / "moved" / "annotations")
    assert coco_image_root(path, coco, image_root=tmp_path / "moved" / "images") == str(tmp_path / "moved" / "images")
    bare = tmp_path / "moved" / "annotations" / "bare.json"
    bare.write_text(json.dumps(coco))
    register_coco_file(str(bare))
    with pytest.raises(FileNotFoundError, match="3 of 3 images not found.*--image-root"):
        DatasetCatalog.get(str(bare))
    register_coco_file(str(bare), image_root=tmp_path / "moved" / "images")
    assert len(DatasetCatalog.get(str(bare))) == 3


def test_num_classes_mismatch_names_the_key(tmp_path):
    from d2ext.engine import setup_cfg

    path = str(make_dataset(tmp_path, 2, seed=2))
    check_datasets(setup_cfg(TINY, ["DATASETS.TRAIN", f"('{path}',)"]))  # 3 outputs hold 2 classes
    cfg = setup_cfg(TINY, ["DATASETS.TRAIN", f"('{path}',)", "MODEL.RETINANET.NUM_CLASSES", "1"])
    with pytest.raises(NumClassesError) as e:
        check_datasets(cfg)
    assert str(e.value).endswith("but MODEL.RETINANET.NUM_CLASSES is 1: set MODEL.RETINANET.NUM_CLASSES 2")
    yolo = setup_cfg("configs/bccd/yolov3.yaml", ["DATASETS.TRAIN", f"('{path}',)", "DATASETS.TEST", "()",
                                                 "MODEL.YOLO.NUM_CLASSES", "1"])
    with pytest.raises(NumClassesError, match="set MODEL.YOLO.NUM_CLASSES 2"):
        check_datasets(yolo)


def test_missing_builtin_dataset_names_variable_and_folder(run_tool, tmp_path, monkeypatch):
    nowhere = tmp_path / "nowhere"
    monkeypatch.setenv("D2EXT_SHARED_DATA", str(nowhere))
    # in a fresh process: this one may already hold bccd_train from an earlier test
    code = ("from d2ext.data.coco_files import resolve_dataset, DatasetNotFoundError\n"
            "try:\n    resolve_dataset('bccd_train')\nexcept DatasetNotFoundError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, D2EXT_SHARED_DATA=str(nowhere))).stdout
    assert str(nowhere / "bccd") in out and "D2EXT_SHARED_DATA" in out
    with pytest.raises(DatasetNotFoundError, match="COCO file .*nope.json not found"):
        resolve_dataset(str(tmp_path / "nope.json"))
    # the case, from the shell: one line, no traceback
    proc = run_tool("train_net.py", "--config-file", "configs/bccd/yolov3.yaml", "OUTPUT_DIR", tmp_path / "out",
                    check=False, env={"D2EXT_SHARED_DATA": str(nowhere)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "D2EXT_SHARED_DATA" in line and str(nowhere / "bccd") in line and "Datasets: where to get them" in line


def test_input_ends_at_the_first_override(tmp_path):
    assert split_inputs([str(tmp_path), "INPUT.MIN_SIZE_TEST", "64"], ["MODEL.DEVICE", "cpu"]) == (
        [str(tmp_path)], ["INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"])
    assert split_inputs(["a.png", "b.png"]) == (["a.png", "b.png"], [])


def test_train_predict_evaluate_on_a_moved_coco_file(run_tool, tmp_path):
    """The README's own-data path: COCO files written in one folder, moved, trained on by path,
    predicted with --input <test>.json, evaluated."""
    make_dataset(tmp_path / "made" / "train", 8, seed=3)
    make_dataset(tmp_path / "made" / "test", 4, seed=4)
    shutil.move(str(tmp_path / "made"), str(tmp_path / "data"))
    train = tmp_path / "data" / "train" / "annotations" / "data.json"
    test = tmp_path / "data" / "test" / "annotations" / "data.json"
    out = tmp_path / "run"
    run_tool("train_net.py", "--config-file", TINY, "DATASETS.TRAIN", f"('{train}',)",
             "DATASETS.TEST", f"('{test}',)", "MODEL.RETINANET.NUM_CLASSES", "2",
             "SOLVER.MAX_ITER", "20", "OUTPUT_DIR", out)
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / "data" / "coco_instances_results.json").is_file()  # inside OUTPUT_DIR
    results = tmp_path / "results.json"
    run_tool("predict.py", "--config-file", out / "config.yaml", "--weights", out / "model_final.pth",
             "--input", test, "INPUT.MIN_SIZE_TEST", "64", "--output", results)
    rows = json.loads(results.read_text())
    assert rows and {r["image_id"] for r in rows} <= {1, 2, 3, 4} and {r["category_id"] for r in rows} <= {1, 2}
    proc = run_tool("evaluate.py", "--gt", test, "--pred", results, "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert isinstance(m["AP"], float) and 0.0 <= m["AP"] <= 1.0 and m["num_images"] == 4
    assert "AP50" in proc.stdout


def test_sem_seg_view_fills_each_class_with_its_colour_and_one_legend():
    from d2ext.utils.visualization import class_colors, draw_record
    from detectron2.data.catalog import Metadata

    img = np.full((120, 120, 3), 128, np.uint8)
    label = np.zeros((120, 120), np.uint8)
    label[60:110, 5:55] = 1
    label[60:110, 65:115] = 2
    meta = Metadata(name="seg_vis_test").set(stuff_classes=["background", "cytoplasm", "nucleus"], ignore_label=255)
    out = draw_record(img, {"file_name": "x.png", "sem_seg": label}, meta).astype(np.float64)
    colors = class_colors(3) * 255
    for c, (ys, xs) in ((1, (slice(70, 100), slice(15, 45))), (2, (slice(70, 100), slice(75, 105)))):
        inner = out[ys, xs].reshape(-1, 3)
        assert inner.std(axis=0).max() < 1.0  # one flat fill: no text label on the region
        np.testing.assert_allclose(inner.mean(axis=0), 0.5 * 128 + 0.5 * colors[c], atol=3)
    assert np.abs(colors[1] - colors[2]).max() > 60  # distinct colours
    assert (out[48:58] == 128).all()  # background (between the legend and the regions) left as it was
    legend = np.abs(out[:46, 60:] - 128).max(axis=2) > 30  # the one legend, upper right
    assert legend.mean() > 0.2 and not (np.abs(out[46:60, 60:] - 128).max(axis=2) > 30).any()


def test_segm_ap_of_the_ground_truth_masks_is_1(tmp_path):
    import pycocotools.mask as mask_util

    gt = {"images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 40}],
          "categories": [{"id": 3, "name": "cell"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 5, 20, 10], "area": 200,
                           "iscrowd": 0, "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]}]}
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:25] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    good = [{"image_id": 7, "category_id": 3, "segmentation": rle, "score": 0.9}]
    m = coco_evaluate(*_write(tmp_path, gt, good), iou_type="segm")
    assert m["AP"] == pytest.approx(1.0, abs=1e-12) and m["per_class"]["cell"]["num_gt"] == 1
    half = mask.copy()
    half[5:15, 15:25] = 0  # IoU 0.5: a match at 0.50 only -> AP = AP50 / 10
    rle2 = mask_util.encode(np.asfortranarray(half))
    rle2["counts"] = rle2["counts"].decode()
    m = coco_evaluate(*_write(tmp_path, gt, [dict(good[0], segmentation=rle2)]), iou_type="segm")
    assert m["AP50"] == pytest.approx(1.0, abs=1e-12) and m["AP75"] == 0.0
    assert m["AP"] == pytest.approx(0.1, abs=1e-12)


def test_label_map_coco_file_is_a_sem_seg_dataset(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.new("L", (8, 6)).save(tmp_path / "a_label.png")
    path = tmp_path / "seg.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.png", "height": 6, "width": 8, "sem_seg_file_name": "a_label.png"}],
        "categories": [{"id": 1, "name": "background"}, {"id": 2, "name": "cell"}]}))
    name = register_coco_file(str(path))
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "sem_seg" and meta.stuff_classes == ["background", "cell"]
    assert DatasetCatalog.get(name) == [{"file_name": str(tmp_path / "a.png"), "height": 6, "width": 8,
                                         "image_id": 5, "sem_seg_file_name": str(tmp_path / "a_label.png")}]


def test_boxes_drawn_in_their_class_colour_every_time():
    """Ground truth and predictions: one colour per class (the dataset's thing_colors if it has
    them), the same on every call; Detectron2's own drawers pick a random colour per box."""
    import torch
    from d2ext.utils.visualization import class_colors, draw_instances, draw_record
    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, BoxMode, Instances

    img = np.full((200, 200, 3), 128, np.uint8)
    boxes = [[20, 100, 80, 160], [110, 100, 180, 160], [20, 20, 60, 60]]
    classes = [1, 1, 0]
    record = {"file_name": "x.png", "annotations": [
        {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c} for b, c in zip(boxes, classes)]}
    inst = Instances((200, 200), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     pred_classes=torch.tensor(classes), scores=torch.tensor([0.9, 0.8, 0.7]))

    def edge_colours(out):  # middle of each box's right edge (Visualizer draws boxes at alpha 0.5)
        return [out[(b[1] + b[3]) // 2, b[2]].astype(np.float64) for b in boxes]

    plain = Metadata(name="vis_colour_test").set(thing_classes=["a", "b"])
    given = Metadata(name="vis_colour_test_given").set(thing_classes=["a", "b"],
                                                       thing_colors=[[255, 0, 0], [0, 0, 255]])
    for meta, palette in ((plain, class_colors(2) * 255), (given, np.array([[255, 0, 0], [0, 0, 255]]))):
        for draw in (lambda: draw_record(img, record, meta), lambda: draw_instances(img, inst, meta, 0.5)):
            first, again = draw(), draw()
            assert (first == again).all()
            for colour, c in zip(edge_colours(first), classes):
                np.testing.assert_allclose(colour, 0.5 * 128 + 0.5 * palette[c], atol=3)
