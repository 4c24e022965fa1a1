"""BCCD: CSV by header name (x range first), VOC XML (<filename> not <path>), splits, and the
real data: CSV and XML agree box for box, exact class counts, zero-area boxes reported."""
import json
from collections import Counter

import pytest
from PIL import Image

from converters.bccd import BCCD_CLASSES, load_bccd_csv, load_voc, ordered_classes, read_voc_xml
from converters.common import BOX_MODE_XYXY_ABS, ConversionReport

XML = """<annotation>
  <folder>RBC</folder>
  <filename>img_1.jpg</filename>
  <path>/somewhere/else/WRONG.jpg</path>
  <size><width>640</width><height>480</height><depth>3</depth></size>
  <object><name>WBC</name><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>5</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>
  <object><name>Platelets</name><difficult>1</difficult>
    <bndbox><xmin>11</xmin><ymin>11</ymin><xmax>11</xmax><ymax>20</ymax></bndbox></object>
</annotation>
"""


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (64, 48)).save(d / "img_1.jpg")
    Image.new("RGB", (64, 48)).save(d / "img_2.jpg")
    return d


def test_csv_columns_by_name_bom_crlf(tmp_path, images):
    p = tmp_path / "boxes.csv"
    # a different column order than BCCD's, with BOM and CRLF
    p.write_bytes("\ufeffymin,ymax,Cell_Type,filename,xmax,xmin\r\n"
                  "5,30,WBC,img_1.jpg,40,1\r\n"
                  "2,9,RBC,img_2.jpg,20,11\r\n"
                  "11,11,Platelets,img_2.jpg,11,11\r\n".encode("utf-8"))
    report = ConversionReport("bccd")
    recs = load_bccd_csv(p, images, report=report)
    assert report.notes["thing_classes"] == ["RBC", "WBC", "Platelets"]
    assert [r["file_name"] for r in recs] == [str(images / "img_1.jpg"), str(images / "img_2.jpg")]
    assert (recs[0]["height"], recs[0]["width"]) == (48, 64)
    a = recs[0]["annotations"][0]
    # 1-based VOC pixels -> Detectron2 continuous XYXY (xmin - 1, ymin - 1, xmax, ymax)
    assert a["bbox"] == [0, 4, 40, 30] and a["bbox_mode"] == BOX_MODE_XYXY_ABS and a["category_id"] == 1
    assert recs[1]["annotations"][0]["bbox"] == [10, 1, 20, 9]
    assert len(recs[1]["annotations"]) == 1
    assert [(s["line"], s["reason"].split(":")[0]) for s in report.skipped] == [(4, "zero-area box")]


def test_bccd_order_is_stable():
    assert ordered_classes({"Platelets", "zeta", "RBC", "alpha"}) == ["RBC", "Platelets", "alpha", "zeta"]


def test_voc_xml_filename_truncated_difficult(tmp_path, images):
    x = tmp_path / "img_1.xml"
    x.write_text(XML)
    report = ConversionReport("bccd")
    rec, names = read_voc_xml(x, images, thing_classes=BCCD_CLASSES, report=report, image_id=5)
    assert rec["file_name"] == str(images / "img_1.jpg") and rec["image_id"] == 5
    assert (rec["height"], rec["width"]) == (48, 64)  # header wins over <size>
    assert [r["reason"] for r in report.repaired] == \
        ["<size> 640x480 differs from the image header 64x48: header used"]
    assert rec["annotations"] == [{"bbox": [0.0, 4.0, 40.0, 30.0], "bbox_mode": 0, "category_id": 1,
                                   "iscrowd": 0, "truncated": 1, "difficult": 0}]
    assert report.skipped[0]["line"] == 8 and report.skipped[0]["reason"].startswith("zero-area box")


def _boxes(records):
    return {r["file_name"].rsplit("/", 1)[1]:
            sorted((a["category_id"], tuple(a["bbox"])) for a in r["annotations"]) for r in records}


def test_real_csv_and_xml_agree(shared_data):
    b = shared_data / "bccd"
    rc, rx = ConversionReport("bccd"), ConversionReport("bccd")
    csv_recs = load_bccd_csv(b / "test.csv", b / "BCCD" / "JPEGImages", report=rc)
    xml_recs = load_voc(b / "BCCD" / "Annotations", b / "BCCD" / "JPEGImages", report=rx)
    assert len(csv_recs) == len(xml_recs) == 364
    assert rc.notes["thing_classes"] == rx.notes["thing_classes"] == ["RBC", "WBC", "Platelets"]
    assert _boxes(csv_recs) == _boxes(xml_recs)
    assert all((r["height"], r["width"]) == (480, 640) for r in csv_recs + xml_recs)
    for rep in (rc, rx):
        assert rep.num_annotations == 4886 and len(rep.skipped) == 2
        assert sorted(s["image"] for s in rep.skipped) == ["BloodImage_00338.jpg", "BloodImage_00343.jpg"]
        kept = dict(rep.objects_per_class)
        kept["RBC"] += 2  # both zero-area boxes are RBC
        assert kept == {"RBC": 4155, "WBC": 372, "Platelets": 361}
    assert rx.repaired == [] and rc.repaired == []
    assert sum(a["truncated"] for r in xml_recs for a in r["annotations"]) == 1131
    # the three files with a stale <path> still point at their own image
    names = {r["file_name"].rsplit("/", 1)[1] for r in xml_recs}
    assert {"BloodImage_00171.jpg", "BloodImage_00178.jpg", "BloodImage_00228.jpg"} <= names
    assert all(0 <= a["bbox"][0] < a["bbox"][2] <= 640 and 0 <= a["bbox"][1] < a["bbox"][3] <= 480
               for r in xml_recs for a in r["annotations"])


def test_real_splits_and_registration(shared_data):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from converters.builtin import register_builtin_datasets

    names = register_builtin_datasets(shared_data)
    assert register_builtin_datasets(shared_data) == names  # twice is harmless
    sizes = {s: len(DatasetCatalog.get(f"bccd_{s}")) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 205, "val": 87, "test": 72, "trainval": 292}
    train = {r["file_name"] for r in DatasetCatalog.get("bccd_train")}
    val = {r["file_name"] for r in DatasetCatalog.get("bccd_val")}
    test = {r["file_name"] for r in DatasetCatalog.get("bccd_test")}
    assert not (train & val) and not (train & test) and not (val & test)
    assert {r["file_name"] for r in DatasetCatalog.get("bccd_trainval")} == train | val
    meta = MetadataCatalog.get("bccd_train")
    assert meta.thing_classes == ["RBC", "WBC", "Platelets"] and meta.evaluator_type == "coco"
    total = Counter(a["category_id"] for s in ("trainval", "test")
                    for r in DatasetCatalog.get(f"bccd_{s}") for a in r["annotations"])
    assert total == {0: 4153, 1: 372, 2: 361}


def test_real_csv_cli_coco(shared_data, tmp_path):
    from pycocotools.coco import COCO

    from tools.convert import main

    b = shared_data / "bccd"
    out, rep = tmp_path / "bccd.json", tmp_path / "r.json"
    assert main(["bccd-csv", "--csv", str(b / "test.csv"), "--images", str(b / "BCCD" / "JPEGImages"),
                 "--out", str(out), "--report", str(rep), "--no-progress"]) == 0
    coco = COCO(str(out))
    assert len(coco.imgs) == 364 and len(coco.anns) == 4886
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["RBC", "WBC", "Platelets"]
    assert coco.imgs[1]["file_name"] == "BloodImage_00000.jpg"
    r = json.loads(rep.read_text())
    assert r["num_images"] == 364 and r["num_skipped"] == 2
    # the two degenerate rows of test.csv (grep -n ",504,504,337,337" / ",181,181,329,329")
    assert sorted((s["line"], s["image"]) for s in r["skipped"]) == [
        (3952, "BloodImage_00338.jpg"), (4006, "BloodImage_00343.jpg")]
