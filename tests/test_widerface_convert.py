"""WIDER Face: tiny hand-made files (both empty-image forms, CRLF, trailing spaces) and the real
val file (exact counts, attributes checked against the official .mat ground truth)."""
import json

import pytest
from PIL import Image

from converters.common import BOX_MODE_XYWH_ABS, ConversionError, ConversionReport
from converters.widerface import (ATTRIBUTE_NAMES, convert_widerface, iter_widerface,
                                  load_widerface)

# 3 images: 2 faces (the second invalid); train-style empty (count 0 + dummy row);
# val-style empty (count 1 + all-zero row). CRLF and trailing spaces as in the real files.
TINY = ("0--Parade/0_Parade_a.jpg \r\n2 \r\n"
        "10 20 30 40 2 1 0 0 1 0 \r\n"
        "50 60 5 6 0 0 1 1 2 1 \r\n"
        "1--Handshaking/1_b.jpg\r\n0\r\n0 0 0 0 0 0 0 0 0 0 \r\n"
        "2--Demo/2_c.jpg\r\n1\r\n0 0 0 0 0 0 0 0 0 0 \r\n")


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "wider_tiny.txt"
    p.write_bytes(TINY.encode())
    return p


def test_tiny_records_attributes_and_empty_forms(tiny):
    report = ConversionReport("widerface")
    recs = load_widerface(tiny, None, report=report)
    assert [r["file_name"] for r in recs] == ["0--Parade/0_Parade_a.jpg", "1--Handshaking/1_b.jpg",
                                              "2--Demo/2_c.jpg"]
    assert [r["event"] for r in recs] == ["0--Parade", "1--Handshaking", "2--Demo"]
    assert [r["image_id"] for r in recs] == [1, 2, 3]
    a, b = recs[0]["annotations"]
    assert a["bbox"] == [10, 20, 30, 40] and a["bbox_mode"] == BOX_MODE_XYWH_ABS
    assert a["attributes"] == {"blur": 2, "expression": 1, "illumination": 0, "invalid": 0,
                               "occlusion": 1, "pose": 0}
    assert a["iscrowd"] == 0 and a["category_id"] == 0
    assert b["attributes"] == {"blur": 0, "expression": 0, "illumination": 1, "invalid": 1,
                               "occlusion": 2, "pose": 1}
    assert b["iscrowd"] == 1  # invalid faces are ignored regions
    assert recs[1]["annotations"] == [] and recs[2]["annotations"] == []
    assert "height" not in recs[0]
    assert [(s["line"], s["reason"].split(" (")[0]) for s in report.skipped] == [
        (7, "placeholder row of a face-less image"), (10, "placeholder row of a face-less image")]
    assert report.notes["num_face_rows"] == 3  # 2 + 0 + 1
    assert report.notes["num_faces_kept"] == 2 and report.notes["num_faces_skipped"] == 1
    assert report.notes["num_empty_images"] == 2 and report.notes["num_crowd_faces"] == 1


def test_attribute_names_official_order():
    assert ATTRIBUTE_NAMES == ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def test_parsing_streams(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("0--A/a.jpg\n1\n1 1 4 4 0 0 0 0 0 0\n0--A/b.jpg\n2\n1 1 4 4 0 0 0 0 0 0\n")
    it = iter_widerface(p, None)
    assert next(it)["file_name"] == "0--A/a.jpg"  # produced before the broken tail is read
    with pytest.raises(ConversionError, match=r"w.txt:6: file ends after 1 of 2 faces of '0--A/b.jpg'"):
        next(it)


def test_file_ending_after_a_path_names_its_line(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("0--A/a.jpg\n1\n1 1 4 4 0 0 0 0 0 0\n0--A/b.jpg\n\n")
    with pytest.raises(ConversionError, match=r"w.txt:4: file ends after image path '0--A/b.jpg'"):
        list(iter_widerface(p, None))


def test_same_box_other_attributes_is_not_a_duplicate(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("0--A/a.jpg\n3\n1 1 4 4 0 0 0 0 0 0\n1 1 4 4 2 0 0 0 0 0\n1 1 4 4 0 0 0 0 0 0\n")
    report = ConversionReport("widerface")
    (rec,) = iter_widerface(p, None, report=report)
    assert [a["attributes"]["blur"] for a in rec["annotations"]] == [0, 2]
    assert [(s["line"], s["reason"]) for s in report.skipped] == [(5, "duplicate face row: same as line 3")]


def test_images_sizes_clip_missing_and_coco(tmp_path):
    imgs = tmp_path / "images"
    (imgs / "0--A").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(imgs / "0--A" / "a.jpg")
    p = tmp_path / "w.txt"
    p.write_text("0--A/a.jpg\n3\n1 2 10 10 0 0 0 0 0 0\n35 25 10 10 1 0 0 0 0 0\n"
                 "50 50 4 4 0 0 0 0 0 0\n0--A/missing.jpg\n1\n1 1 3 3 0 0 0 0 0 0\n")
    report = ConversionReport("widerface")
    out = tmp_path / "out" / "coco.json"
    convert_widerface(p, imgs, out, report=report)
    d = json.loads(out.read_text())
    assert d["images"] == [{"id": 1, "file_name": "0--A/a.jpg", "height": 30, "width": 40}]
    assert [a["bbox"] for a in d["annotations"]] == [[1, 2, 10, 10], [35, 25, 5, 5]]  # second clipped
    assert d["annotations"][1]["attributes"] == {"blur": 1, "expression": 0, "illumination": 0,
                                                 "invalid": 0, "occlusion": 0, "pose": 0}
    assert d["categories"] == [{"id": 1, "name": "face", "supercategory": "face"}]
    assert [(r["line"], r["reason"]) for r in report.repaired] == [(4, "face clipped to the image")]
    assert [s["line"] for s in report.skipped] == [5, 6]
    assert report.skipped[0]["reason"].startswith("face outside the image")
    assert report.skipped[1]["reason"] == "image unreadable: image not found"
    assert report.notes["num_faces_kept"] + report.notes["num_faces_skipped"] == 4


def test_real_val_counts_and_mat_attributes(shared_data):
    scipy_io = pytest.importorskip("scipy.io")
    wf = shared_data / "widerface"
    report = ConversionReport("widerface")
    recs = load_widerface(wf / "wider_face_split" / "wider_face_val_bbx_gt.txt", None, report=report)
    n = report.notes
    assert len(recs) == 3226 and n["num_face_rows"] == 39708
    assert n["num_faces_kept"] + n["num_faces_skipped"] == 39708
    assert n["num_faces_skipped"] == len(report.skipped) == 12
    assert report.skip_reasons() == {"placeholder row of a face-less image (count 1, all zeros)": 4,
                                     "zero or negative size face": 7, "duplicate face row": 1}
    assert report.num_annotations == n["num_faces_kept"] == 39708 - 12
    assert n["num_empty_images"] == 4
    assert len({r["event"] for r in recs}) == 61
    dup = [s for s in report.skipped if s["reason"].startswith("duplicate")]
    assert dup[0]["image"] == "21--Festival/21_Festival_Festival_21_604.jpg"
    assert all(r["file_name"].startswith(r["event"] + "/") for r in recs)
    assert max(len(r["annotations"]) for r in recs) > 500  # no cap on faces per image

    # The official .mat agrees row for row once the same rows are dropped (zero/negative size,
    # exact repeat): boxes AND the six attributes in ATTRIBUTE_NAMES order.
    mat = scipy_io.loadmat(str(wf / "eval_tools" / "ground_truth" / "wider_face_val.mat"))
    by_stem = {r["file_name"].rsplit("/", 1)[1][:-4]: r for r in recs}
    checked = 0
    for e in range(mat["event_list"].shape[0]):
        files = mat["file_list"][e, 0]
        for i in range(files.shape[0]):
            boxes = mat["face_bbx_list"][e, 0][i, 0]
            attrs = [mat[f"{a}_label_list"][e, 0][i, 0] for a in ATTRIBUTE_NAMES]
            rows = []
            for j in range(boxes.shape[0]):
                row = tuple(int(v) for v in boxes[j]) + tuple(int(a[j, 0]) for a in attrs)
                if row[2] > 0 and row[3] > 0 and row not in rows:
                    rows.append(row)
            rec = by_stem[str(files[i, 0][0])]
            ours = [tuple(int(v) for v in a["bbox"]) + tuple(a["attributes"][k] for k in ATTRIBUTE_NAMES)
                    for a in rec["annotations"]]
            assert ours == rows, rec["file_name"]
            checked += 1
    assert checked == 3226


def test_real_train_first4(shared_data):
    recs = load_widerface(shared_data / "widerface" / "wider_face_split" / "wider_face_train_bbx_gt_first4.txt")
    assert len(recs) == 4 and sum(len(r["annotations"]) for r in recs) == 32


def test_column_parser_agrees_with_row_parser():
    """The column-wise face parser (the hot path) gives the row parser's values, or declines
    (None) whenever some row needs the row parser's skip or error."""
    import random

    from converters.widerface import ATTRIBUTE_MAX, _face_values, _parse_face, _parse_faces

    rng = random.Random(0)
    taken = 0
    odd = ["+3", "007", "1_0", "2.5", "nan", "x", "3", "-1", "1048577", "\u0663"]
    for _ in range(400):
        rows = []
        for _ in range(rng.randint(1, 6)):
            vals = [str(rng.randint(-5, 400)) for _ in range(4)] + [
                str(rng.randint(0, ATTRIBUTE_MAX[name] + (rng.random() < 0.03))) for name in ATTRIBUTE_NAMES]
            if rng.random() < 0.15:
                vals[rng.randrange(10)] = rng.choice(odd)
            if rng.random() < 0.05:
                vals.pop()
            rows.append(rng.choices([" ", "\t", "  "], weights=[8, 1, 1])[0].join(vals))
        try:
            slow = [_parse_face("f.txt", (i, t), 0, len(rows)) for i, t in enumerate(rows, 1)]
        except ConversionError:
            slow = None
        fast = _parse_faces(rows)
        if fast is not None:
            taken += 1
            values = _face_values(fast)
            assert slow is not None and [v for _, v, _ in slow] == values
            assert fast[0] == [list(col) for col in list(zip(*values))[:4]]
            assert fast[1] == [v[4:] for v in values]
        elif slow is not None:  # declined: a row the row parser skips, or one not in the files'
            # own layout (single spaces, plain digits); those go row by row
            assert any(bad is not None for _, _, bad in slow) or any(
                c not in "0123456789-" for r in rows for c in r.replace(" ", "")) or any(
                "  " in r or len(tok) > 1 for r in rows for tok in r.split(" ")[4:])
    assert taken > 40


def test_columns_export_equals_the_records_export(tmp_path):
    """convert_widerface takes the faces of clean images as BoxColumns (no dict per face); the
    COCO file is byte for byte the export of load_widerface's Detectron2 records, with clean,
    clipped, skipped, duplicate and empty images mixed, and the records are plain lists."""
    from converters.common import BoxColumns, export_coco_json
    from converters.widerface import THING_CLASSES

    p = tmp_path / "w.txt"
    p.write_text("0--A/a.jpg\n3\n1 2 10 10 0 0 0 0 0 0\n5 5 10 10 1 1 1 1 2 1\n7 7 3 3 2 0 1 0 1 0\n"
                 "0--A/b.jpg\n2\n35 25 10 10 1 0 0 0 0 0\n1 1 4 4 0 0 0 0 0 0\n"
                 "0--A/c.jpg\n2\n1 1 4 4 0 0 0 0 0 0\n1 1 4 4 0 0 0 0 0 0\n"
                 "0--A/d.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n0--A/e.jpg\n1\n3 3 9 9 0 0 0 1 0 0\n")
    size = (30, 40)
    records = list(iter_widerface(p, None, image_size=size))
    assert all(type(r["annotations"]) is list for r in records)
    columns = list(iter_widerface(p, None, image_size=size, columns=True))
    assert [type(r["annotations"]) for r in columns] == [BoxColumns, list, list, list, BoxColumns]
    assert [r["annotations"].to_records() if type(r["annotations"]) is BoxColumns else r["annotations"]
            for r in columns] == [r["annotations"] for r in records]
    convert_widerface(p, None, tmp_path / "fast.json", image_size=size)
    info = {"description": "WIDER Face from w.txt", "attribute_names": list(ATTRIBUTE_NAMES)}
    export_coco_json(records, THING_CLASSES, tmp_path / "slow.json", info=info)
    assert (tmp_path / "fast.json").read_bytes() == (tmp_path / "slow.json").read_bytes()
    anns = json.loads((tmp_path / "fast.json").read_text())["annotations"]
    assert len(anns) == 7 and anns[1]["iscrowd"] == 1 and anns[1]["attributes"]["occlusion"] == 2
