"""Malformed input through ``tools/convert.py`` (WIDER, BCCD CSV, VOC, COCO keypoints): each case
ends in a one-line error naming file and line, or a reported skip; never a traceback, never a
half-written output. (Cricket / WBC cases live in their own test files.)"""
import json

import pytest
from PIL import Image

from tools.convert import main

FACE = "1 1 4 4 0 0 0 0 0 0"


@pytest.fixture
def wider(tmp_path):
    imgs = tmp_path / "images"
    (imgs / "0--A").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(imgs / "0--A" / "a.jpg")
    Image.new("RGB", (20, 10)).save(imgs / "0--A" / "b.jpg")

    def run(text, *extra, raw=None):
        ann = tmp_path / "gt.txt"
        ann.write_bytes(raw if raw is not None else text.encode())
        out = tmp_path / "out.json"
        rep = tmp_path / "report.json"
        rc = main(["widerface", "--annotations", str(ann), "--images", str(imgs), "--out", str(out),
                   "--report", str(rep), "--no-progress", *extra])
        return rc, out, json.loads(rep.read_text())
    return run


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_wider_nine_numbers(wider, capsys):
    rc, out, rep = wider(f"0--A/a.jpg\n2\n{FACE}\n1 1 4 4 0 0 0 0 0\n")
    assert rc == 1 and not out.exists()
    err = _err(capsys)
    assert err.startswith("error: converters.widerface: ")
    assert err.endswith("gt.txt:4: expected 10 integers per face, got 9")
    assert rep["error"] == err[len("error: "):]  # the report of a failed run keeps the error


def test_wider_truncated_file(wider, capsys):
    rc, out, _ = wider(f"0--A/a.jpg\n3\n{FACE}\n")
    assert rc == 1 and not out.exists()
    assert "gt.txt:3: file ends after 1 of 3 faces of '0--A/a.jpg'" in _err(capsys)


def test_wider_face_count_too_small(wider, capsys):
    rc, out, _ = wider(f"0--A/a.jpg\n1\n{FACE}\n2 2 4 4 0 0 0 0 0 0\n0--A/b.jpg\n0\n")
    assert rc == 1 and not out.exists()
    assert "gt.txt:4: expected an image path, got a row of numbers" in _err(capsys)


def test_wider_face_count_too_large(wider, capsys):
    rc, out, _ = wider(f"0--A/a.jpg\n2\n{FACE}\n0--A/b.jpg\n0\n")
    assert rc == 1 and not out.exists()
    assert "gt.txt:4: expected 10 integers per face, got '0--A/b.jpg'" in _err(capsys)


def test_wider_bad_count_line(wider, capsys):
    rc, _, _ = wider("0--A/a.jpg\nmany\n")
    assert rc == 1 and "gt.txt:2: expected a face count" in _err(capsys)


def test_wider_negative_and_zero_size_are_reported(wider):
    rc, out, rep = wider(f"0--A/a.jpg\n3\n{FACE}\n5 5 -3 4 0 0 0 0 0 0\n5 5 0 4 0 0 0 0 0 0\n")
    assert rc == 0 and rep["num_annotations"] == 1
    assert [(s["line"], s["reason"].split(":")[0]) for s in rep["skipped"]] == [
        (4, "zero or negative size face"), (5, "zero or negative size face")]
    assert len(json.loads(out.read_text())["annotations"]) == 1


def test_wider_strict_turns_skip_into_error(wider, capsys):
    rc, out, _ = wider(f"0--A/a.jpg\n2\n{FACE}\n5 5 0 4 0 0 0 0 0 0\n", "--strict")
    assert rc == 1 and not out.exists()
    assert "gt.txt:4: zero or negative size face" in _err(capsys)


def test_wider_box_outside_image(wider):
    rc, _, rep = wider(f"0--A/a.jpg\n2\n30 1 4 4 0 0 0 0 0 0\n18 8 5 5 0 0 0 0 0 0\n")
    assert rc == 0 and rep["num_annotations"] == 1
    assert rep["skipped"][0]["line"] == 3 and rep["skipped"][0]["reason"].startswith("face outside the image")
    assert rep["repaired"][0]["line"] == 4 and rep["repaired"][0]["clipped"] == [18, 8, 20, 10]


def test_wider_non_utf8(wider, capsys):
    rc, out, _ = wider(None, raw=b"0--A/a.jpg\n1\n" + FACE.encode() + b"\n0--A/\xe9t\xe9.jpg\n0\n")
    assert rc == 1 and not out.exists()
    assert "gt.txt:4: not valid UTF-8" in _err(capsys)


def test_wider_empty_file(wider, capsys):
    rc, out, _ = wider("")
    assert rc == 1 and not out.exists()
    assert "gt.txt: no image entries: empty file?" in _err(capsys)


def test_wider_missing_image_is_reported(wider):
    rc, _, rep = wider(f"0--A/a.jpg\n1\n{FACE}\n0--A/zzz.jpg\n2\n{FACE}\n2 2 3 3 0 0 0 0 0 0\n")
    assert rc == 0 and rep["num_images"] == 1
    assert rep["skipped"] == [{"file": rep["skipped"][0]["file"], "line": 4, "reason":
                               "image unreadable: image not found", "image": rep["skipped"][0]["image"],
                               "faces": 2}]
    assert rep["num_faces_skipped"] == 2 and rep["num_face_rows"] == 3


def test_wider_duplicate_image_entry(wider, capsys):
    rc, out, _ = wider(f"0--A/a.jpg\n1\n{FACE}\n0--A/a.jpg\n1\n{FACE}\n")
    assert rc == 1 and not out.exists()
    assert "gt.txt:4: image '0--A/a.jpg' listed twice (first on line 1)" in _err(capsys)


def test_wider_attribute_out_of_range(wider, capsys):
    rc, _, _ = wider("0--A/a.jpg\n1\n1 1 4 4 3 0 0 0 0 0\n")
    assert rc == 1 and "gt.txt:3: attribute blur=3 out of range 0..2" in _err(capsys)


def test_wider_existing_output_untouched_on_error(wider, tmp_path):
    (tmp_path / "out.json").write_text('{"old": true}')
    rc, out, _ = wider(f"0--A/a.jpg\n2\n{FACE}\n")
    assert rc == 1 and json.loads(out.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.txt", "images", "out.json", "report.json"]


# --- BCCD CSV ---------------------------------------------------------------------------------
@pytest.fixture
def bccd(tmp_path):
    imgs = tmp_path / "jpg"
    imgs.mkdir()
    Image.new("RGB", (64, 48)).save(imgs / "a.jpg")

    def run(raw, *extra):
        csv = tmp_path / "boxes.csv"
        csv.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
        out, rep = tmp_path / "o.json", tmp_path / "r.json"
        rc = main(["bccd-csv", "--csv", str(csv), "--images", str(imgs), "--out", str(out),
                   "--report", str(rep), "--no-progress", *extra])
        return rc, out, json.loads(rep.read_text())
    return run


HEADER = "filename,cell_type,xmin,xmax,ymin,ymax\r\n"


def test_csv_bom_crlf_ok(bccd):
    rc, out, rep = bccd(b"\xef\xbb\xbf" + (HEADER + "a.jpg,RBC,1,10,2,20\r\n").encode())
    assert rc == 0 and rep["num_annotations"] == 1
    assert json.loads(out.read_text())["annotations"][0]["bbox"] == [0, 1, 10, 19]


def test_csv_missing_column(bccd, capsys):
    rc, out, _ = bccd("filename,cell_type,xmin,xmax,ymin\na.jpg,RBC,1,2,3\n")
    assert rc == 1 and not out.exists()
    assert "boxes.csv:1: missing column(s): ymax" in _err(capsys)


def test_csv_unknown_class_is_reported(bccd):
    rc, _, rep = bccd(HEADER + "a.jpg,RBC,1,10,2,20\na.jpg,Neutrophil,1,10,2,20\n", "--classes", "RBC,WBC")
    assert rc == 0 and rep["num_annotations"] == 1
    assert rep["skipped"][0]["line"] == 3 and rep["skipped"][0]["reason"].startswith("unknown class 'Neutrophil'")


def test_csv_empty_file(bccd, capsys):
    rc, out, _ = bccd("")
    assert rc == 1 and not out.exists() and "boxes.csv: empty file" in _err(capsys)


def test_csv_bad_number_and_field_count(bccd, capsys):
    rc, _, _ = bccd(HEADER + "a.jpg,RBC,1,10,2,20\na.jpg,RBC,1,ten,2,20\n")
    assert rc == 1 and "boxes.csv:3: column xmax: expected a number, got 'ten'" in _err(capsys)
    rc, _, _ = bccd(HEADER + "a.jpg,RBC,1,10,2\n")
    assert rc == 1 and "boxes.csv:2: expected 6 fields, got 5" in _err(capsys)


def test_csv_missing_image_and_duplicate_row(bccd):
    rc, _, rep = bccd(HEADER + "a.jpg,RBC,1,10,2,20\na.jpg,RBC,1,10,2,20\nnope.jpg,WBC,1,5,1,5\n")
    assert rc == 0 and rep["num_images"] == 1 and rep["num_annotations"] == 1
    assert [(s["line"], s["reason"]) for s in rep["skipped"]] == [
        (3, "duplicate box: same as line 2"), (4, "image unreadable: image not found; its 1 boxes skipped")]


# --- VOC XML / COCO keypoints -----------------------------------------------------------------
def _voc(tmp_path, xml_text, split=None):
    ann, imgs = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    imgs.mkdir()
    Image.new("RGB", (64, 48)).save(imgs / "a.jpg")
    (ann / "a.xml").write_text(xml_text)
    args = ["voc", "--annotations", str(ann), "--images", str(imgs), "--out", str(tmp_path / "o.json"),
            "--report", str(tmp_path / "r.json"), "--no-progress"]
    if split is not None:
        (tmp_path / "split.txt").write_text(split)
        args += ["--split-file", str(tmp_path / "split.txt")]
    return main(args)


def test_voc_malformed_xml(tmp_path, capsys):
    rc = _voc(tmp_path, "<annotation>\n<filename>a.jpg</filename>\n<object><name>RBC</name>\n</annotation>\n")
    assert rc == 1 and not (tmp_path / "o.json").exists()
    assert "a.xml:4: not well-formed XML" in _err(capsys)


def test_voc_missing_filename(tmp_path, capsys):
    rc = _voc(tmp_path, "<annotation>\n<path>/x/a.jpg</path>\n</annotation>\n")
    assert rc == 1 and "a.xml:1: missing <filename>" in _err(capsys)


def test_voc_split_lists_missing_annotation(tmp_path):
    xml = ("<annotation><filename>a.jpg</filename><object><name>RBC</name><bndbox><xmin>1</xmin>"
           "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    assert _voc(tmp_path, xml, split="a\r\nb\r\na\r\n") == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["num_images"] == 1 and rep["num_annotations"] == 1
    assert [(s["line"], s["reason"].split(":")[0]) for s in rep["skipped"]] == [
        (3, "duplicate id 'a'"), (2, "annotation file missing")]


def test_coco_invalid_json(tmp_path, capsys):
    p = tmp_path / "kp.json"
    p.write_text('{"images": [],\n "categories": [}\n')
    rc = main(["coco-keypoints", "--json", str(p), "--images", str(tmp_path), "--no-progress"])
    assert rc == 1 and "kp.json:2: not valid JSON" in _err(capsys)
