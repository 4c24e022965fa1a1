"""WBC segmentation converter: label modes on hand-made masks, label PNGs, dataset.json, cell-type
CSV, instance view, split, registration, CLI; plus the real 100-image set in ../shared/data."""
import json

import numpy as np
import pytest
from PIL import Image

from converters.common import ConversionReport
from converters.wbc_seg import (
    IGNORE_LABEL,
    convert_wbc_seg,
    load_wbc_instances,
    load_wbc_seg,
    mask_to_instance,
    mask_to_labels,
    read_cell_types,
    register_wbc_instances,
    register_wbc_seg,
    split_wbc,
)

W, H = 40, 30  # deliberately not square and not 300x300


def _cell_mask(cx=20, cy=15, r_cell=9, r_nucleus=4, w=W, h=H):
    yy, xx = np.mgrid[:h, :w]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    mask = np.zeros((h, w), np.uint8)
    mask[d2 <= r_cell ** 2] = 128
    mask[d2 <= r_nucleus ** 2] = 255
    return mask


def _write_sample(folder, stem, mask, mask_folder=None, image_size=None):
    folder.mkdir(parents=True, exist_ok=True)
    h, w = mask.shape
    iw, ih = image_size or (w, h)
    rgb = np.full((ih, iw, 3), 200, np.uint8)
    Image.fromarray(rgb).save(folder / f"{stem}.bmp")
    mf = mask_folder or folder
    mf.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(mf / f"{stem}.png")


def _dataset(root, n=10):
    masks = {}
    for i in range(1, n + 1):
        m = _cell_mask(cx=10 + i, cy=8 + i % 10, r_cell=5 + i % 3, r_nucleus=2)
        if i == 3:
            m[0, 0] = 7  # stray value far from the cell: background in three_class, cell in binary
            m[15, 20 + 1] = 140  # stray value inside: snaps to cytoplasm
        masks[f"{i:03d}"] = m
        _write_sample(root, f"{i:03d}", m)
    return masks


def test_mask_to_labels_exact_values():
    mask = np.array([[0, 7, 63, 64, 65, 128], [150, 191, 192, 200, 254, 255]], np.uint8)
    assert mask_to_labels(mask, "binary").tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert mask_to_labels(mask, "binary", threshold=64).tolist() == [[0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]]
    # nearest of 0 / 128 / 255; 64 is equidistant from 0 and 128 and goes to the lower level
    assert mask_to_labels(mask, "three_class").tolist() == [[0, 0, 0, 0, 1, 1], [1, 1, 2, 2, 2, 2]]
    ig = IGNORE_LABEL
    assert mask_to_labels(mask, "three_class", stray="ignore").tolist() == [
        [0, ig, ig, ig, ig, 1], [ig, ig, ig, ig, ig, 2]]
    with pytest.raises(ValueError, match="mode must be one of"):
        mask_to_labels(mask, "five_class")


def test_convert_writes_label_pngs_and_dataset_json(tmp_path):
    masks = _dataset(tmp_path / "data")
    out = tmp_path / "labels"
    report = ConversionReport("wbc_seg")
    ds = convert_wbc_seg(tmp_path / "data", "three_class", out, report=report)
    assert ds["stuff_classes"] == ["background", "cytoplasm", "nucleus"] and ds["ignore_label"] == 255
    assert len(ds["records"]) == 10
    r = ds["records"][2]
    assert r["sample_id"] == "003" and r["image_id"] == 3  # ids from 1, as in every converter
    assert (r["height"], r["width"]) == (H, W)
    assert r["file_name"] == str((tmp_path / "data" / "003.bmp").resolve())
    assert r["sem_seg_file_name"] == str((out / "003.png").resolve())
    labels = np.asarray(Image.open(r["sem_seg_file_name"]))
    assert labels.dtype == np.uint8 and labels.shape == (H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[masks["003"] == 128] = 1
    expected[masks["003"] == 255] = 2
    expected[15, 21] = 1
    assert np.array_equal(labels, expected)
    # one repair entry for the stray mask, with its pixel count and values
    assert [(x["file"].endswith("003.png"), x["num_pixels"], x["values"]) for x in report.repaired] == [
        (True, 2, [7, 140])]
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk == json.loads(json.dumps(ds))
    assert (len(on_disk["splits"]["train"]), len(on_disk["splits"]["test"])) == (8, 2)
    assert sorted(on_disk["splits"]["train"] + on_disk["splits"]["test"]) == sorted(masks)
    # binary mode, same folder: the 7 in the corner is a cell pixel (cell = mask > 0)
    ds_bin = convert_wbc_seg(tmp_path / "data", "binary", tmp_path / "bin")
    lab = np.asarray(Image.open(ds_bin["records"][2]["sem_seg_file_name"]))
    assert np.array_equal(lab, (masks["003"] > 0).astype(np.uint8)) and lab[0, 0] == 1
    assert ds_bin["splits"] == ds["splits"]  # split independent of the label mode


def test_label_pngs_are_not_rewritten_when_unchanged(tmp_path):
    _dataset(tmp_path / "data", n=3)
    first = ConversionReport("wbc_seg")
    load_wbc_seg(tmp_path / "data", "binary", tmp_path / "out", report=first)
    again = ConversionReport("wbc_seg")
    load_wbc_seg(tmp_path / "data", "binary", tmp_path / "out", report=again)
    assert (first.notes["label_files_written"], again.notes["label_files_written"]) == (3, 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["001.png", "002.png", "003.png"]


def test_separate_mask_folder_and_sizes_read_per_image(tmp_path):
    _write_sample(tmp_path / "img", "7", _cell_mask(w=50, h=20, cx=25, cy=10), mask_folder=tmp_path / "msk")
    _write_sample(tmp_path / "img", "12", _cell_mask(w=33, h=41, cx=16, cy=20), mask_folder=tmp_path / "msk")
    recs = load_wbc_seg(tmp_path / "img", "binary", tmp_path / "out", mask_root=tmp_path / "msk")
    assert [(r["sample_id"], r["width"], r["height"]) for r in recs] == [("7", 50, 20), ("12", 33, 41)]


def test_cell_type_csv_crlf_bom_unpadded(tmp_path):
    _dataset(tmp_path / "data", n=3)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfimage ID,class\r\n1,2\r\n3,5\r\n2,1\r\n")
    assert read_cell_types(csv_file) == {1: 2, 3: 5, 2: 1}
    recs = load_wbc_seg(tmp_path / "data", "binary", tmp_path / "out", csv_file=csv_file)
    assert [(r["sample_id"], r["cell_type"], r["cell_type_name"]) for r in recs] == [
        ("001", 2, "lymphocyte"), ("002", 1, "neutrophil"), ("003", 5, "basophil")]
    # reversed column order is found by name
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("Class , Image ID\n4,2\n")
    assert read_cell_types(swapped) == {2: 4}


def test_mask_to_instance_box_polygon_specks_holes():
    from pycocotools import mask as mask_util

    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:31] = 128  # rows 5..19, cols 10..30
    mask[8:12, 15:20] = 0  # a hole inside the cell
    mask[27, 2] = 9  # a one-pixel speck away from the cell
    box, polygon, info = mask_to_instance(mask)
    assert box == [10.0, 5.0, 31.0, 20.0]
    assert info["num_specks"] == 1 and info["speck_pixels"] == [1] and info["num_holes"] == 1
    rle = mask_util.merge(mask_util.frPyObjects([polygon], 30, 40))
    filled = np.zeros_like(mask, bool)
    filled[5:20, 10:31] = True
    got = mask_util.decode(rle).astype(bool)
    # The polygon runs through the centres of the boundary pixels (10.5, 5.5)-(30.5, 19.5), so it
    # rasterises to the rectangle less half a pixel per side: 20 x 14, hole filled, no speck.
    assert got.sum() == 20 * 14 and not (got & ~filled).any()
    assert got[8:12, 15:20].all() and not got[27, 2]
    assert mask_to_instance(np.zeros((5, 5), np.uint8)) is None


def test_instance_view_records(tmp_path):
    masks = _dataset(tmp_path / "data", n=4)
    report = ConversionReport("wbc_seg")
    recs = load_wbc_instances(tmp_path / "data", report=report)
    assert len(recs) == 4 and all(len(r["annotations"]) == 1 for r in recs)
    ann = recs[0]["annotations"][0]
    ys, xs = np.nonzero(masks["001"])
    assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    assert (ann["category_id"], ann["bbox_mode"], ann["iscrowd"]) == (0, 0, 0)
    assert report.objects_per_class == {"wbc": 4}
    # 003 carries a speck at (0, 0): reported as a repair, not part of the box
    assert any(x["file"].endswith("003.png") and "speck" in x["reason"] for x in report.repaired)
    assert recs[2]["annotations"][0]["bbox"][0] > 0


def test_split_wbc_deterministic_80_20():
    ids = [f"{i:03d}" for i in range(1, 101)]
    a, b = split_wbc(ids, seed=0), split_wbc(list(reversed(ids)), seed=0)
    assert a == b and (len(a["train"]), len(a["test"])) == (80, 20)
    assert not set(a["train"]) & set(a["test"]) and sorted(a["train"] + a["test"]) == ids
    assert a["test"] == sorted(a["test"], key=int)
    assert split_wbc(ids, seed=1)["test"] != a["test"]


def test_register_and_detectron2_reads_labels(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils

    masks = _dataset(tmp_path / "data", n=5)
    register_wbc_seg("wbc_test_reg_sem_train", tmp_path / "data", "three_class", "train", tmp_path / "cache")
    register_wbc_seg("wbc_test_reg_sem_train", tmp_path / "data", "three_class", "train", tmp_path / "cache")
    with pytest.raises(ValueError, match="wbc_test_reg_sem_train"):
        register_wbc_seg("wbc_test_reg_sem_train", tmp_path / "data", "binary", "train", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # lazy: nothing written before Detectron2 asks
    meta = MetadataCatalog.get("wbc_test_reg_sem_train")
    assert meta.stuff_classes == ["background", "cytoplasm", "nucleus"]
    assert (meta.ignore_label, meta.evaluator_type) == (255, "sem_seg")
    recs = DatasetCatalog.get("wbc_test_reg_sem_train")
    assert len(recs) == 4  # round(0.8 * 5)
    # exactly how Detectron2's DatasetMapper reads the labels
    sem = utils.read_image(recs[0]["sem_seg_file_name"], "L").squeeze(2)
    m = masks[recs[0]["sample_id"]]
    assert np.array_equal(sem, (m == 128) * 1 + (m == 255) * 2)

    register_wbc_instances("wbc_test_reg_inst_test", tmp_path / "data", "test")
    meta = MetadataCatalog.get("wbc_test_reg_inst_test")
    assert meta.thing_classes == ["wbc"] and meta.evaluator_type == "coco"
    inst = DatasetCatalog.get("wbc_test_reg_inst_test")
    assert [r["sample_id"] for r in inst] == split_wbc(list(masks))["test"]


def test_cli_wbc_seg(tmp_path, run_tool):
    _dataset(tmp_path / "data", n=5)
    out, rep, coco = tmp_path / "out", tmp_path / "r.json", tmp_path / "inst.json"
    run_tool("convert.py", "wbc-seg", "--root", tmp_path / "data", "--mode", "binary", "--out", out,
             "--report", rep, "--instances-out", coco)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["mode"] == "binary" and len(ds["records"]) == 5
    assert sorted(p.name for p in out.glob("*.png")) == [f"00{i}.png" for i in range(1, 6)]
    report = json.loads(rep.read_text())
    assert report["num_images"] == 5 and report["num_repaired"] == 1
    from pycocotools.coco import COCO

    c = COCO(str(coco))
    assert len(c.getImgIds()) == 5 and len(c.getAnnIds()) == 5
    assert c.loadCats(1)[0]["name"] == "wbc"


# ----------------------------------------------------------------------------------------------
# real data: ../shared/data/wbc_seg (skipped when absent)
# ----------------------------------------------------------------------------------------------
def test_real_wbc_seg(shared_data, tmp_path):
    root = shared_data / "wbc_seg" / "dataset2"
    csv_file = shared_data / "wbc_seg" / "dataset2_class_labels.csv"
    report = ConversionReport("wbc_seg")
    recs = load_wbc_seg(root, "three_class", tmp_path / "3c", csv_file=csv_file, report=report)
    assert len(recs) == 100 and report.skipped == []
    assert sorted(x["file"][-7:-4] for x in report.repaired) == ["034", "035", "047", "050", "076"]
    assert all(r["cell_type_name"] in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
               for r in recs)
    assert recs[0]["sample_id"] == "001" and recs[0]["cell_type"] == 2  # CSV row "1,2"
    for r in recs:
        m = np.asarray(Image.open(r["mask_file_name"]))
        lab = np.asarray(Image.open(r["sem_seg_file_name"]))
        # independent formulation of "nearest level": cut points halfway between levels
        assert np.array_equal(lab, (m > 64).astype(np.uint8) + (m > 191))
    bin_recs = load_wbc_seg(root, "binary", tmp_path / "bin")
    for r in bin_recs[33:36]:  # 034 and 035 hold stray values
        m = np.asarray(Image.open(r["mask_file_name"]))
        assert np.array_equal(np.asarray(Image.open(r["sem_seg_file_name"])), (m > 0).astype(np.uint8))

    inst_report = ConversionReport("wbc_seg")
    inst = load_wbc_instances(root, report=inst_report)
    assert len(inst) == 100 and all(len(r["annotations"]) == 1 for r in inst)
    assert inst_report.objects_per_class == {"wbc": 100}
    from pycocotools import mask as mask_util

    ious = []
    for r in inst:
        m = np.asarray(Image.open(r["mask_file_name"])) > 0
        polygons = r["annotations"][0]["segmentation"]
        seg = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, *m.shape)))
        ious.append((seg.astype(bool) & m).sum() / (seg.astype(bool) | m).sum())
    assert min(ious) > 0.95
    split = split_wbc([r["sample_id"] for r in recs])
    assert (len(split["train"]), len(split["test"])) == (80, 20)
