"""converters.common: errors, report, atomic writers, image headers, COCO export, registration."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from converters import common
from converters.common import (BOX_MODE_XYWH_ABS, BOX_MODE_XYXY_ABS, ConversionError,
                               ConversionReport, atomic_open, atomic_write_json, check_box_xyxy,
                               export_coco_json, iter_text_lines, make_box_annotation, make_record,
                               read_image_size, register_dataset)


def test_error_names_format_file_and_line():
    e = ConversionError("wider_face_val_bbx_gt.txt", 1487, "expected 10 integers per face, got 9",
                        fmt="widerface")
    assert str(e) == ("converters.widerface: wider_face_val_bbx_gt.txt:1487: "
                      "expected 10 integers per face, got 9")
    assert str(ConversionError("a.csv", None, "empty file", fmt="bccd")) == "converters.bccd: a.csv: empty file"
    assert (e.file, e.line, e.fmt) == ("wider_face_val_bbx_gt.txt", 1487, "widerface")


def test_report_counts_skips_and_strict(tmp_path):
    r = ConversionReport("x", sources=["in.txt"])
    r.add_record(make_record("a.jpg", 1, [make_box_annotation([0, 0, 2, 2], 1),
                                          make_box_annotation([0, 0, 2, 2], 1)]), ["cat", "dog"])
    r.add_record(make_record("b.jpg", 2, []), ["cat", "dog"])
    r.skip("in.txt", 7, "zero-area box: w 0", image="b.jpg")
    r.repair("in.txt", 8, "box clipped to the image")
    d = r.to_dict()
    assert d["num_images"] == 2 and d["num_annotations"] == 2
    assert d["objects_per_class"] == {"cat": 0, "dog": 2}
    assert d["skipped"] == [{"file": "in.txt", "line": 7, "reason": "zero-area box: w 0", "image": "b.jpg"}]
    assert d["skip_reasons"] == {"zero-area box": 1} and d["num_repaired"] == 1
    r.write(tmp_path / "sub" / "r.json")
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["num_skipped"] == 1
    assert os.listdir(tmp_path / "sub") == ["r.json"]  # no temp file left
    strict = ConversionReport("x", strict=True)
    with pytest.raises(ConversionError, match=r"converters.x: f.txt:3: bad row \(--strict"):
        strict.skip("f.txt", 3, "bad row")


def test_iter_text_lines_bom_crlf_and_bad_bytes(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbfhead,er\r\nrow 1 \r\n\r\nlast")
    assert list(iter_text_lines(p)) == [(1, "head,er"), (2, "row 1 "), (3, ""), (4, "last")]
    p.write_bytes(b"ok\nbad \xff byte\n")
    with pytest.raises(ConversionError, match=r"t.txt:2: not valid UTF-8 \(byte 0xff at column 5\)"):
        list(iter_text_lines(p, "f"))
    with pytest.raises(ConversionError, match="cannot open"):
        list(iter_text_lines(tmp_path / "missing.txt"))


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 1 << 20])
def test_iter_text_lines_any_block_size(tmp_path, block_size):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffa\r\n  \r\nb\u00e9c d \n\n\u20acz".encode("utf-8"))
    assert list(iter_text_lines(p, block_size=block_size)) == [
        (1, "a"), (2, "  "), (3, "b\u00e9c d "), (4, ""), (5, "\u20acz")]
    assert list(iter_text_lines(p, skip_blank=True, block_size=block_size)) == [
        (1, "a"), (3, "b\u00e9c d"), (5, "\u20acz")]
    p.write_bytes(b"ok\nok\nab\xffc\n")
    with pytest.raises(ConversionError, match=r"t.txt:3: not valid UTF-8 \(byte 0xff at column 3\)"):
        list(iter_text_lines(p, block_size=block_size))


def test_atomic_open_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write('{"half": ')
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_read_image_size_header_and_exif(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    assert read_image_size(tmp_path / "a.png") == (20, 30)
    im = Image.new("RGB", (40, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: Detectron2's read_image returns 40 rows x 10 columns
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image_size(tmp_path / "r.jpg") == (40, 10)
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(ConversionError, match="not a readable image"):
        read_image_size(tmp_path / "x.jpg")
    with pytest.raises(ConversionError, match="image not found"):
        read_image_size(tmp_path / "none.jpg")


def test_check_box_xyxy():
    r = ConversionReport("x")
    assert check_box_xyxy([1, 2, 5, 6], 10, 10, r, "f", 1) == [1, 2, 5, 6]
    assert check_box_xyxy([-2, 2, 5, 12], 10, 10, r, "f", 2) == [0, 2, 5, 10]
    assert check_box_xyxy([3, 3, 3, 9], 10, 10, r, "f", 3) is None
    assert check_box_xyxy([11, 0, 15, 4], 10, 10, r, "f", 4) is None
    assert check_box_xyxy([11, 0, 15, 4], None, None, r, "f", 5) == [11, 0, 15, 4]
    assert [s["line"] for s in r.skipped] == [3, 4] and [s["line"] for s in r.repaired] == [2]
    assert r.skipped[0]["reason"].startswith("zero or negative size box: width 0")


def _tiny_records(root):
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(np.pad(np.ones((3, 4), np.uint8), ((1, 2), (2, 0)))))
    return [
        make_record(os.path.join(root, "ev/a.jpg"), 3, [
            make_box_annotation([1, 2, 4, 5], 0, bbox_mode=BOX_MODE_XYWH_ABS,
                                attributes={"blur": 2, "pose": 0}),
            make_box_annotation([2, 1, 4, 3], 1, bbox_mode=BOX_MODE_XYWH_ABS, iscrowd=1,
                                segmentation=rle),
        ], height=6, width=6),
        make_record(os.path.join(root, "b.jpg"), 7, [
            make_box_annotation([0, 0, 4, 4], 1, bbox_mode=BOX_MODE_XYWH_ABS,
                                segmentation=[[0, 0, 4, 0, 4, 4, 0, 4]],
                                keypoints=[1.5, 2.5, 2, 0.5, 0.5, 0]),
        ], height=8, width=9),
        make_record(os.path.join(root, "empty.jpg"), 9, [], height=4, width=4),
    ]


def test_coco_export_round_trip(tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json
    from pycocotools.coco import COCO

    records = _tiny_records(str(tmp_path / "img"))
    out = tmp_path / "coco.json"
    counts = export_coco_json(iter(records), ["face", "cell"], out, image_root=tmp_path / "img",
                              keypoint_names=["a", "b"], skeleton=[[1, 2]])
    assert counts == {"num_images": 3, "num_annotations": 3}
    coco = COCO(str(out))
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2]
    assert coco.imgs[3]["file_name"] == "ev/a.jpg"
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[3]))
    assert anns[0]["attributes"] == {"blur": 2, "pose": 0} and anns[0]["area"] == 20
    assert anns[1]["area"] == 12 and anns[1]["iscrowd"] == 1
    assert coco.loadAnns(coco.getAnnIds(imgIds=[7]))[0]["keypoints"] == [1.0, 2.0, 2, 0.0, 0.0, 0]
    assert coco.loadAnns(coco.getAnnIds(imgIds=[7]))[0]["num_keypoints"] == 1
    name = "test_common_round_trip"
    try:
        back = load_coco_json(str(out), str(tmp_path / "img"), name, extra_annotation_keys=["attributes"])
    finally:
        MetadataCatalog.remove(name)
    by_id = {r["image_id"]: r for r in back}
    for rec in records:
        got = by_id[rec["image_id"]]
        assert {k: got[k] for k in ("file_name", "height", "width")} == \
            {k: rec[k] for k in ("file_name", "height", "width")}
        assert len(got["annotations"]) == len(rec["annotations"])
        for a, b in zip(rec["annotations"], got["annotations"]):
            segm = b.pop("segmentation", None)
            if isinstance(segm, dict):  # compressed RLE: compare the decoded masks
                from pycocotools import mask as mask_util
                np.testing.assert_array_equal(mask_util.decode(segm), mask_util.decode(a["segmentation"]))
            elif segm is not None:
                assert segm == a["segmentation"]
            assert b == {k: v for k, v in a.items() if k != "segmentation"}


def test_coco_export_xyxy_and_missing_size(tmp_path):
    rec = make_record("a.jpg", 1, [make_box_annotation([2, 3, 10, 7], 0, bbox_mode=BOX_MODE_XYXY_ABS)],
                      height=10, width=12)
    export_coco_json([rec], ["x"], tmp_path / "c.json")
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["annotations"][0]["bbox"] == [2, 3, 8, 4] and d["annotations"][0]["area"] == 32
    assert d["categories"] == [{"id": 1, "name": "x", "supercategory": "x"}]
    with pytest.raises(ConversionError, match="image size unknown"):
        export_coco_json([make_record("b.jpg", 1, [])], ["x"], tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["c.json"]


def _loader(n, calls):
    calls.append(n)
    return [make_record(f"{i}.jpg", i, [], height=4, width=4) for i in range(n)]


def test_register_dataset_lazy_idempotent_and_conflict():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    calls = []
    name = "test_common_register"
    try:
        register_dataset(name, _loader, {"thing_classes": ["a"], "evaluator_type": "coco"}, n=3, calls=calls)
        assert calls == []  # lazy
        register_dataset(name, _loader, {"thing_classes": ["a"], "evaluator_type": "coco"}, n=3, calls=calls)
        with pytest.raises(ValueError, match=f"'{name}' is already registered with different arguments"):
            register_dataset(name, _loader, {"thing_classes": ["a"], "evaluator_type": "coco"}, n=4, calls=calls)
        with pytest.raises(ValueError, match="different arguments"):
            register_dataset(name, _loader, {"thing_classes": ["b"], "evaluator_type": "coco"}, n=3, calls=calls)
        assert len(DatasetCatalog.get(name)) == 3 and calls == [3]
        assert MetadataCatalog.get(name).thing_classes == ["a"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        common._REGISTERED.pop(name, None)


def test_converters_do_not_import_torch(repo_root):
    import subprocess
    import sys

    code = ("import sys, converters.common, converters.widerface, converters.bccd, "
            "converters.coco_keypoints, converters.builtin; "
            "print(any(m in sys.modules for m in ('torch', 'detectron2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.strip() == "False"


def test_convert_cli_starts_without_torch(repo_root):
    import subprocess
    import sys

    code = ("import sys; from tools.convert import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'detectron2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.strip() == "[]"


def test_coco_export_same_bytes_when_annotations_spill_to_disk(tmp_path, monkeypatch):
    # 600 images = 3 encoder chunks; a 1 kB spool limit sends the annotations to a temp file
    recs = [make_record(f"/d/{i}.jpg", i + 1, [make_box_annotation([1, 2, 3, 4], i % 2, bbox_mode=BOX_MODE_XYWH_ABS)],
                        height=10, width=20) for i in range(600)]
    export_coco_json(recs, ["a", "b"], tmp_path / "memory.json")
    monkeypatch.setattr(common, "_SPOOL_MEMORY", 1000)
    export_coco_json(recs, ["a", "b"], tmp_path / "disk.json")
    data = (tmp_path / "disk.json").read_bytes()
    assert data == (tmp_path / "memory.json").read_bytes() and len(data) > 50_000
    assert [a["id"] for a in json.loads(data)["annotations"]] == list(range(1, 601))


def test_normpath_skip_is_safe():
    import random

    rng = random.Random(0)
    parts = ["a", "b.jpg", ".", "..", "", "x.y", ".h", "c."]
    for _ in range(20000):
        rel = "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
        if not common._maybe_unnormal(rel):
            assert os.path.normpath(rel) == rel
    assert not common._maybe_unnormal("0--Parade/0_Parade_1.jpg")


def test_box_columns_export_the_same_bytes_as_checked_lists(tmp_path):
    """BoxColumns (a converter's checked boxes as columns, e.g. WIDER faces) are written straight
    from the columns; the file is byte for byte the one the checked path writes for the same
    boxes as Detectron2 dicts, and to_records() gives those dicts, each with its own extra dict."""
    from converters.common import BoxColumns

    shared = [{"blur": k, "pose": k % 2} for k in range(3)]  # extra values shared between images

    def columns(i):
        return BoxColumns([i] * 3, [0, 2, 4], [5, 6, 7], [7, 7, 7], [0, 0, 1], category_id=1,
                          extra_key="attributes", extra=shared)

    cols = [make_record(f"/d/{i}.jpg", i + 1, (), height=40, width=50) for i in range(300)]
    for i, r in enumerate(cols):
        r["annotations"] = columns(i)
    plain = [dict(r, annotations=r["annotations"].to_records()) for r in cols]
    assert plain[3]["annotations"][2] == {"bbox": [3, 4, 7, 7], "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": 1,
                                          "iscrowd": 1, "attributes": {"blur": 2, "pose": 0}}
    plain[0]["annotations"][0]["attributes"]["blur"] = 9  # records own their extra dicts
    assert shared[0]["blur"] == 0 and plain[1]["annotations"][0]["attributes"]["blur"] == 0
    plain[0]["annotations"][0]["attributes"]["blur"] = 0
    export_coco_json(plain, ["a", "b"], tmp_path / "plain.json")
    export_coco_json(cols, ["a", "b"], tmp_path / "columns.json")
    data = (tmp_path / "columns.json").read_bytes()
    assert data == (tmp_path / "plain.json").read_bytes()
    anns = json.loads(data)["annotations"]
    assert len(anns) == 900 and [a["id"] for a in anns] == list(range(1, 901))
    assert anns[2]["iscrowd"] == 1 and anns[1]["category_id"] == 2 and anns[4]["area"] == 6 * 7
    assert anns[4]["image_id"] == 2 and anns[4]["attributes"] == {"blur": 1, "pose": 1}
    plain_cols = BoxColumns([1], [2], [3], [4], [0])
    assert plain_cols.to_records() == [{"bbox": [1, 2, 3, 4], "bbox_mode": BOX_MODE_XYWH_ABS,
                                        "category_id": 0, "iscrowd": 0}]
    assert plain_cols.to_coco(7, 3) == [{"id": 7, "image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4],
                                         "iscrowd": 0, "area": 12}]
    with pytest.raises(ValueError, match="different lengths"):
        BoxColumns([1, 2], [2], [3], [4], [0])
    with pytest.raises(ValueError, match="COCO annotation key"):
        BoxColumns([1], [2], [3], [4], [0], extra_key="area", extra=[5])
