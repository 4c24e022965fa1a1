"""Hostile and malformed inputs through the converters (issue 15, converter side), plus the
output contract of issue 14 and the light start-up of issue 13.

A fresh set of tiny fixtures (none of the files of the original report): outputs that would
destroy inputs, interrupted and half-failed runs, paths leaving their folder, non-finite and
absurd numbers, masks in every PNG mode, and the one-line messages. Each case asserts the exact
outcome: refused with the inputs' bytes unchanged, skipped and reported with file and line, or
one error line naming the file. 70 hostile cases in all (for the closing note of issue 15):
15 outputs that would destroy inputs or half-commit, 11 paths leaving their folder, 33 bad
numbers / entries, 6 mask modes (one in test_convert_bad_input_cricket_wbc.py), 5 message /
fallback cases.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from converters.common import (ConversionError, ConversionReport, jpeg_header_size,
                               read_image_size)
from converters.wbc_seg import load_mask, load_wbc_seg
from tools.convert import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACE = "1 1 4 4 0 0 0 0 0 0"


def _digest(*paths):
    """sha256 of every file under ``paths`` (files or folders), by relative name."""
    out = {}
    for p in paths:
        p = str(p)
        files = [p] if os.path.isfile(p) else [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs]
        for f in sorted(files):
            with open(f, "rb") as fh:
                out[os.path.relpath(f, os.path.dirname(p))] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


# ---------------------------------------------------------------------------------------------
# fixtures: tiny datasets of every format
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def wider(tmp_path):
    imgs = tmp_path / "images"
    (imgs / "0--A").mkdir(parents=True)
    Image.new("L", (20, 10)).save(imgs / "0--A" / "a.jpg")
    Image.new("L", (20, 10)).save(imgs / "0--A" / "b.jpg")
    Image.new("L", (20, 10)).save(tmp_path / "outside.jpg")
    ann = tmp_path / "gt.txt"
    ann.write_text(f"0--A/a.jpg\n1\n{FACE}\n0--A/b.jpg\n2\n{FACE}\n2 2 4 4 0 0 0 0 0 0\n")
    return tmp_path, ann, imgs


def _wider_run(tmp_path, text, *extra, out="out.json"):
    ann = tmp_path / "hostile.txt"
    ann.write_text(text)
    rep = tmp_path / "rep.json"
    rc = main(["widerface", "--annotations", str(ann), "--images", str(tmp_path / "images"),
               "--output", str(tmp_path / out), "--report", str(rep), "--no-progress", *extra])
    return rc, (json.loads(rep.read_text()) if rep.exists() else None)


@pytest.fixture
def bccd(tmp_path):
    imgs = tmp_path / "JPEGImages"
    imgs.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (64, 48)).save(imgs / f"{stem}.jpg")
    Image.new("RGB", (64, 48)).save(tmp_path / "secret.jpg")
    return tmp_path, imgs


def _csv_run(tmp_path, imgs, rows, *extra):
    csv = tmp_path / "boxes.csv"
    csv.write_text("filename,cell_type,xmin,xmax,ymin,ymax\n" + "".join(r + "\n" for r in rows))
    rep = tmp_path / "rep.json"
    rc = main(["bccd-csv", "--csv", str(csv), "--images", str(imgs), "--out", str(tmp_path / "o.json"),
               "--report", str(rep), "--no-progress", *extra])
    return rc, (json.loads(rep.read_text()) if rep.exists() else None)


def _voc_xml(filename, objects, size=(64, 48)):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>\n" for n, a, b, c, d in objects)
    return (f"<annotation>\n<filename>{filename}</filename>\n<size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>\n{objs}</annotation>\n")


def _voc_run(tmp_path, imgs, xmls, *extra, split=None):
    ann = tmp_path / "Annotations"
    ann.mkdir(exist_ok=True)
    for name, text in xmls.items():
        (ann / name).write_text(text)
    args = ["voc", "--annotations", str(ann), "--images", str(imgs), "--out", str(tmp_path / "o.json"),
            "--report", str(tmp_path / "rep.json"), "--no-progress", *extra]
    if split is not None:
        (tmp_path / "split.txt").write_text(split)
        args += ["--split-file", str(tmp_path / "split.txt")]
    rc = main(args)
    rep = tmp_path / "rep.json"
    return rc, (json.loads(rep.read_text()) if rep.exists() else None)


def _coco(images, annotations, categories=None):
    return {"images": images, "annotations": annotations,
            "categories": categories if categories is not None else [{"id": 1, "name": "person"}]}


def _coco_run(tmp_path, imgs, data, *extra, raw=None):
    src = tmp_path / "in.json"
    src.write_text(raw if raw is not None else json.dumps(data))
    rep = tmp_path / "rep.json"
    rc = main(["coco-keypoints", "--json", str(src), "--images", str(imgs), "--out",
               str(tmp_path / "o.json"), "--report", str(rep), "--no-progress", *extra])
    return rc, (json.loads(rep.read_text()) if rep.exists() else None)


def _mask():
    m = np.zeros((10, 12), np.uint8)
    m[2:7, 3:9] = 128
    m[3:5, 4:6] = 255
    return m


def _wbc(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        Image.new("RGB", (12, 10), (200, 100, 100)).save(folder / f"{i:03d}.bmp")
        Image.fromarray(_mask()).save(folder / f"{i:03d}.png")
    return folder


# ---------------------------------------------------------------------------------------------
# group 2: inputs are never written
# ---------------------------------------------------------------------------------------------
def test_out_equal_to_input_is_refused_inputs_unchanged(wider, capsys):
    tmp_path, ann, imgs = wider
    before = _digest(ann, imgs)
    for out, report in [(ann, None),                          # --out is the annotation file
                        (imgs / "0--A" / "a.jpg", None),      # --out is an image
                        (imgs / "coco.json", None),           # --out inside the image folder
                        (tmp_path / "o.json", ann),           # --report is the input
                        (tmp_path / "o.json", tmp_path / "o.json"),  # --report equals --out
                        (tmp_path, None)]:                    # --out folder holds the inputs
        argv = ["widerface", "--annotations", str(ann), "--images", str(imgs), "--out", str(out),
                "--no-progress"] + (["--report", str(report)] if report else [])
        assert main(argv) == 1
        err = _one_line_error(capsys)
        assert "d2ext-convert widerface: " in err and ("input" in err or "two different outputs" in err)
    assert _digest(ann, imgs) == before
    assert not (tmp_path / "o.json").exists() and not (imgs / "coco.json").exists()


def test_coco_keypoints_out_equal_to_json_is_refused(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "imgs" / "x.jpg")
    src = tmp_path / "kp.json"
    src.write_text(json.dumps(_coco([{"id": 1, "file_name": "x.jpg", "height": 6, "width": 8}], [])))
    before = _digest(src)
    assert main(["coco-keypoints", "--json", str(src), "--images", str(tmp_path / "imgs"),
                 "--out", str(src)]) == 1
    assert "is the input" in _one_line_error(capsys)
    assert _digest(src) == before


def test_wbc_out_equal_to_root_or_holding_it_is_refused(tmp_path, capsys):
    root = _wbc(tmp_path / "data" / "wbc")
    before = _digest(root)
    for out in (root, tmp_path / "data", root / "labels"):
        assert main(["wbc-seg", "--root", str(root), "--mode", "three_class", "--out", str(out)]) == 1
        assert "d2ext-convert wbc-seg: output" in _one_line_error(capsys)
    assert _digest(root) == before
    # the library refuses it too (a registered dataset never writes into its data folder)
    from d2ext.core import UnsafeOutputError

    with pytest.raises(UnsafeOutputError):
        load_wbc_seg(root, "binary", root)
    assert _digest(root) == before


_KILL_ON_THIRD_LABEL = r"""
import os, signal, sys
sys.path.insert(0, {repo!r})
import converters.wbc_seg as w
real, calls = w._png_bytes, []
def dying(labels):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(labels)
w._png_bytes = dying
from tools.convert import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_wbc_run_leaves_previous_output_byte_identical(tmp_path):
    root = _wbc(tmp_path / "data", n=5)
    out = tmp_path / "labels"
    assert main(["wbc-seg", "--root", str(root), "--mode", "binary", "--out", str(out),
                 "--no-progress"]) == 0
    before = _digest(out)
    assert json.loads((out / "dataset.json").read_text())["mode"] == "binary"
    proc = subprocess.run([sys.executable, "-c", _KILL_ON_THIRD_LABEL.format(repo=REPO), "wbc-seg",
                           "--root", str(root), "--mode", "3class", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert _digest(out) == before  # still the whole binary run, no three-class label in it
    # a later run completes and replaces the folder whole
    assert main(["wbc-seg", "--root", str(root), "--mode", "3class", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "dataset.json").read_text())["mode"] == "three_class"
    assert np.asarray(Image.open(out / "001.png")).max() == 2


def test_unwritable_report_replaces_nothing(wider, capsys):
    tmp_path, ann, imgs = wider
    out = tmp_path / "o.json"
    out.write_text('{"previous": true}')
    (tmp_path / "blocker").write_text("a file where the report's folder should be")
    rc = main(["widerface", "--annotations", str(ann), "--images", str(imgs), "--out", str(out),
               "--report", str(tmp_path / "blocker" / "r.json"), "--no-progress"])
    assert rc == 1 and "blocker" in _one_line_error(capsys)
    assert out.read_text() == '{"previous": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "gt.txt", "images", "o.json",
                                                           "outside.jpg"]


def test_wbc_outputs_commit_together(tmp_path, capsys):
    """--instances-out that cannot be written: neither the label folder nor the report appear."""
    root = _wbc(tmp_path / "data")
    (tmp_path / "blocker").write_text("")
    rc = main(["wbc-seg", "--root", str(root), "--mode", "binary", "--out", str(tmp_path / "labels"),
               "--instances-out", str(tmp_path / "blocker" / "i.json"), "--no-progress"])
    assert rc == 1 and "blocker" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "data"]


# ---------------------------------------------------------------------------------------------
# group 3: values checked where they enter
# ---------------------------------------------------------------------------------------------
def test_wider_paths_leaving_the_image_folder_are_reported_not_followed(wider, capsys):
    tmp_path, _, _ = wider
    text = (f"0--A/a.jpg\n1\n{FACE}\n../outside.jpg\n1\n{FACE}\n{tmp_path}/outside.jpg\n1\n{FACE}\n"
            f"0--A/../../outside.jpg\n1\n{FACE}\n")
    rc, rep = _wider_run(tmp_path, text)
    assert rc == 0 and rep["num_images"] == 1
    assert [(s["line"], s["reason"].split(" is ")[0]) for s in rep["skipped"]] == [
        (4, "image path '../outside.jpg'"), (7, f"image path '{tmp_path}/outside.jpg'"),
        (10, "image path '0--A/../../outside.jpg'")]
    coco = json.loads((tmp_path / "out.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["0--A/a.jpg"]
    rc, _ = _wider_run(tmp_path, text, "--strict", out="strict.json")
    assert rc == 1 and "hostile.txt:4: image path '../outside.jpg'" in _one_line_error(capsys)
    assert not (tmp_path / "strict.json").exists()


def test_wider_symlinked_folder_pointing_outside_is_refused(wider):
    tmp_path, _, imgs = wider
    (tmp_path / "elsewhere").mkdir()
    Image.new("L", (20, 10)).save(tmp_path / "elsewhere" / "c.jpg")
    os.symlink(tmp_path / "elsewhere", imgs / "1--B")
    rc, rep = _wider_run(tmp_path, f"0--A/a.jpg\n1\n{FACE}\n1--B/c.jpg\n1\n{FACE}\n")
    assert rc == 0 and rep["num_images"] == 1
    assert rep["skipped"][0]["line"] == 4 and "leaves the image folder" in rep["skipped"][0]["reason"]


def test_wider_symlinked_file_after_a_good_one_in_its_folder_is_refused(wider):
    tmp_path, _, imgs = wider
    os.symlink(tmp_path / "outside.jpg", imgs / "0--A" / "link.jpg")  # b.jpg there is fine
    rc, rep = _wider_run(tmp_path, f"0--A/a.jpg\n1\n{FACE}\n0--A/link.jpg\n1\n{FACE}\n"
                                   f"0--A/b.jpg\n1\n{FACE}\n0--A/..\n1\n{FACE}\n")
    assert rc == 0 and rep["num_images"] == 2
    assert [(s["line"], "leaves the image folder" in s["reason"]) for s in rep["skipped"]] == [
        (4, True), (10, True)]


def test_bccd_csv_paths_and_numbers(bccd, capsys):
    tmp_path, imgs = bccd
    rows = ["a.jpg,RBC,1,10,1,10", "../secret.jpg,RBC,1,10,1,10", f"{tmp_path}/secret.jpg,WBC,1,10,1,10",
            "b.jpg,RBC,nan,10,1,10", "b.jpg,RBC,1,inf,1,10", "b.jpg,WBC,1,1e300,1,10",
            "b.jpg,RBC,491,260,1,10", "b.jpg,RBC,5,9,30,20", "b.jpg,Platelets,2,12,2,12"]
    rc, rep = _csv_run(tmp_path, imgs, rows)
    assert rc == 0 and rep["num_images"] == 2 and rep["num_annotations"] == 2
    assert sorted((s["line"], s["reason"]) for s in rep["skipped"]) == [
        (3, "image path '../secret.jpg' is absolute or leaves the image folder; its 1 boxes skipped"),
        (4, f"image path '{tmp_path}/secret.jpg' is absolute or leaves the image folder; its 1 boxes "
            "skipped"),
        (5, "bad coordinate: xmin nan is not finite"),
        (6, "bad coordinate: xmax inf is not finite"),
        (7, "bad coordinate: xmax 1e+300 is out of range (|v| <= 1.04858e+06)"),
        (8, "inverted box: xmin 491 > xmax 260"),
        (9, "inverted box: ymin 30 > ymax 20")]
    coco = json.loads((tmp_path / "o.json").read_text())
    assert "NaN" not in (tmp_path / "o.json").read_text()
    assert [a["bbox"] for a in coco["annotations"]] == [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]]


def test_voc_paths_split_ids_and_numbers(bccd, capsys):
    tmp_path, imgs = bccd
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "a.xml").write_text(_voc_xml("a.jpg", [("RBC", 1, 1, 9, 9)]))  # outside --annotations
    xmls = {"ok.xml": _voc_xml("a.jpg", [("RBC", 1, 1, 9, 9), ("RBC", 491, 1, 260, 9),
                                          ("WBC", 1, "nan", 9, 9), ("WBC", 1, 1, 1e300, 9)]),
            "out.xml": _voc_xml("../secret.jpg", [("RBC", 1, 1, 9, 9)]),
            "inf.xml": _voc_xml("b.jpg", [("RBC", 2, 2, 8, 8)], size=("inf", 48))}
    rc, rep = _voc_run(tmp_path, imgs, xmls, split="ok\n../v1/a\n/etc/passwd\nmissing\n\nout\ninf\n")
    assert rc == 0 and rep["format"] == "voc" and rep["num_images"] == 2
    reasons = [(os.path.basename(s["file"]), s["line"], s["reason"]) for s in rep["skipped"]]
    assert reasons == [
        ("split.txt", 2, "id '../v1/a' names a file outside the annotation folder"),
        ("split.txt", 3, "id '/etc/passwd' names a file outside the annotation folder"),
        ("ok.xml", 5, "inverted box: xmin 491 > xmax 260"),
        ("ok.xml", 6, "bad coordinate: ymin nan is not finite"),
        ("ok.xml", 7, "bad coordinate: xmax 1e+300 is out of range (|v| <= 1.04858e+06)"),
        ("split.txt", 4, f"annotation file missing: {tmp_path / 'Annotations' / 'missing.xml'}"),
        ("out.xml", 1, "<filename> '../secret.jpg' is absolute or leaves the image folder; its boxes "
                       "skipped")]
    # <width>inf: one line naming file and line; the image header gives the size
    assert [(os.path.basename(r["file"]), r["line"], r["reason"]) for r in rep["repaired"]] == [
        ("inf.xml", 3, "<width>: expected an integer, got 'inf'; size taken from the image header")]


def test_voc_inf_size_without_images_is_a_reported_skip_then_strict_error(bccd, capsys):
    tmp_path, imgs = bccd
    from converters.bccd import load_voc

    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "x.xml").write_text(_voc_xml("b.jpg", [("RBC", 2, 2, 8, 8)], size=("inf", 48)))
    report = ConversionReport("voc")
    assert load_voc(tmp_path / "A", imgs, read_sizes=False, report=report) == []
    assert [(s["line"], s["reason"]) for s in report.skipped] == [
        (3, "<width>: expected an integer, got 'inf'; image skipped")]
    with pytest.raises(ConversionError, match=r"x\.xml:3: <width>: expected an integer, got 'inf'"):
        load_voc(tmp_path / "A", imgs, read_sizes=False, report=ConversionReport("voc", strict=True))


def test_coco_values_and_paths(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("a", "b", "c"):
        Image.new("RGB", (40, 30)).save(imgs / f"{n}.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "secret.jpg")
    kp = [10, 10, 2] * 17
    cats = [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)], "skeleton": []}]
    images = [{"id": 1, "file_name": "a.jpg", "height": 30, "width": 40},
              {"id": 2, "file_name": "../secret.jpg", "height": 30, "width": 40},
              {"id": 3, "file_name": str(tmp_path / "secret.jpg"), "height": 30, "width": 40},
              {"id": 4, "file_name": "b.jpg", "height": "abc", "width": 40},
              {"id": 5, "file_name": "c.jpg", "height": 30, "width": 40}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "keypoints": kp},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": ["1", "1", "5", "5"]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1e300, 1, 5, 5]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
             "keypoints": [float("nan")] + kp[1:]},
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
             "keypoints": kp[:3] + [float("inf")] + kp[4:]},
            {"id": 7, "image_id": [1], "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 8, "image_id": 5, "category_id": {"a": 1}, "bbox": [1, 1, 5, 5]},
            {"id": 9, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5],
             "segmentation": [[1, 1, 4, 1, float("nan"), 4]]}]
    # json.dumps writes NaN / Infinity tokens, which Python's json (and so this reader) accepts
    rc, rep = _coco_run(tmp_path, imgs, _coco(images, anns, cats))
    assert rc == 0 and rep["num_images"] == 2 and rep["num_annotations"] == 1
    assert [s["reason"] for s in rep["skipped"]] == [
        "annotation 7: unknown image_id [1]",
        "annotation 8: unknown category_id {'a': 1}",
        "annotation 2: bbox x '1' is not a number",
        "annotation 3: bbox x nan is not finite",
        "annotation 4: bbox x 1e+300 is out of range (|v| <= 1.04858e+06)",
        "annotation 5: keypoint value #0 nan is not finite",
        "annotation 6: keypoint value #3 inf is not finite",
        "image 2: file_name '../secret.jpg' is not a path inside the image folder; its 0 annotations "
        "skipped",
        f"image 3: file_name '{tmp_path / 'secret.jpg'}' is not a path inside the image folder; its 0 "
        "annotations skipped",
        "image 4: height 'abc' is not a positive integer; its 0 annotations skipped",
        "annotation 9: segmentation value 4 nan is not finite"]
    text = (tmp_path / "o.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize("categories, message", [
    ([{"name": "person"}], "categories[0]: no 'id' ({'name': 'person'})"),
    ([{"id": "1", "name": "person"}], "categories[0]: 'id' '1' is not an integer"),
    ([{"id": 1}], "categories[0]: no 'name' ({'id': 1})"),
    (["person"], "categories[0]: not an object: 'person'"),
])
def test_coco_bad_categories_are_one_line_naming_the_file(tmp_path, capsys, categories, message):
    (tmp_path / "imgs").mkdir()
    rc, _ = _coco_run(tmp_path, tmp_path / "imgs", _coco([], [], categories))
    assert rc == 1
    assert _one_line_error(capsys) == f"error: converters.coco_keypoints: {tmp_path / 'in.json'}: {message}"


def test_cricket_keypoint_files(tmp_path, capsys):
    shots = tmp_path / "shots"
    (shots / "0_cut").mkdir(parents=True)
    for n in ("1_a", "2_b"):
        Image.new("RGB", (16, 12)).save(shots / "0_cut" / f"{n}.jpg")
    kp = [[5.0, 5.0, 2.0] * 17]
    good = {"keypoints": kp[0], "score": 0.9}
    bad = [{"file_name": "0_cut/1_a.jpg", **good},
           {"file_name": "0_cut/2_b.jpg", "keypoints": [float("nan")] + kp[0][1:], "score": 0.8},
           {"file_name": "0_cut/2_b.jpg", "keypoints": kp[0], "score": float("inf")},
           {"file_name": "0_cut/2_b.jpg", "keypoints": kp[0], "score": 0.5, "bbox": [0, 0, 1e300, 4]}]
    kfile = tmp_path / "kp.json"
    kfile.write_text(json.dumps(bad))
    rep = tmp_path / "rep.json"
    assert main(["cricket", "--root", str(shots), "--out", str(tmp_path / "d.json"), "--keypoints",
                 str(kfile), "--report", str(rep), "--ratios", "1", "0", "0"]) == 0
    skipped = [s["reason"] for s in json.loads(rep.read_text())["skipped"]]
    assert skipped == ["entry 1: keypoint value #0 nan is not finite; person skipped",
                       "entry 2: score inf is not finite; person skipped",
                       "entry 3: bbox width 1e+300 is out of range (|v| <= 1.04858e+06); person skipped"]
    out = json.loads((tmp_path / "d.json").read_text())["splits"]["train"]
    assert [len(r["keypoints"]) for r in out] == [1, 0]
    # a score that is not a number at all: one line naming the file and entry
    kfile.write_text(json.dumps([{"file_name": "0_cut/1_a.jpg", "keypoints": kp[0], "score": "abc"}]))
    assert main(["cricket", "--root", str(shots), "--out", str(tmp_path / "e.json"), "--keypoints",
                 str(kfile)]) == 1
    assert _one_line_error(capsys) == f"error: converters.cricket: {kfile}: entry 0: score 'abc' is not a number"


def test_wider_numbers(wider, capsys):
    tmp_path, _, _ = wider
    text = (f"0--A/a.jpg\n5\n{FACE}\nnan 1 4 4 0 0 0 0 0 0\n1 10.5 4 4 0 0 0 0 0 0\n"
            "1 1 99999999999 4 0 0 0 0 0 0\n1 1 1e400 4 0 0 0 0 0 0\n")
    rc, rep = _wider_run(tmp_path, text)
    assert rc == 0 and rep["num_annotations"] == 1
    assert [(s["line"], s["reason"]) for s in rep["skipped"]] == [
        (4, "face x1 'nan' is not a finite integer"), (5, "face y1 '10.5' is not a finite integer"),
        (6, "face w 99999999999 out of range (|v| <= 1.04858e+06)"),
        (7, "face w '1e400' is not a finite integer")]
    assert not any("too large" in s["reason"] for s in rep["skipped"])
    # with --strict the first is an error on its own line, without the face-count hint
    rc, _ = _wider_run(tmp_path, text, "--strict", out="s.json")
    err = _one_line_error(capsys)
    assert rc == 1 and err.endswith("hostile.txt:4: face x1 'nan' is not a finite integer (--strict: "
                                    "skips are errors)")
    # an attribute that is not an integer, a word in a face row: errors naming what was found
    rc, _ = _wider_run(tmp_path, "0--A/a.jpg\n1\n1 1 4 4 0.5 0 0 0 0 0\n", out="t.json")
    assert rc == 1 and _one_line_error(capsys).endswith("hostile.txt:3: attribute blur: expected an "
                                                        "integer, got '0.5'")
    rc, _ = _wider_run(tmp_path, "0--A/a.jpg\n1\n1 1 abc 4 0 0 0 0 0 0\n", out="t.json")
    assert rc == 1 and _one_line_error(capsys).endswith("hostile.txt:3: face w: expected an integer, "
                                                        "got 'abc'")


def _png16(path, values):
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")


def test_masks_read_by_value_in_every_png_mode(tmp_path):
    m = _mask()
    expected3 = (m == 128) * 1 + (m == 255) * 2
    _png16(tmp_path / "m16.png", m.astype(np.uint32) * 257)  # 0 / 32896 / 65535
    report = ConversionReport("wbc_seg")
    assert np.array_equal(load_mask(tmp_path / "m16.png", report), m)
    assert report.repaired[0]["reason"] == ("mask mode I;16: 16-bit levels [0, 32896, 65535] read as "
                                            "8-bit levels [0, 128, 255] (value / 257)")
    _png16(tmp_path / "small16.png", m)  # 16-bit file holding the 8-bit levels
    assert np.array_equal(load_mask(tmp_path / "small16.png"), m)
    odd = m.astype(np.uint32) * 100  # 12800 / 25500: no 8-bit reading exists
    _png16(tmp_path / "odd16.png", odd)
    with pytest.raises(ConversionError, match=r"odd16\.png: mask mode I;16: values \[12800, 25500\] "
                                              r"are above 255"):
        load_mask(tmp_path / "odd16.png")
    # palette with grey colours, indices unrelated to the levels
    pal = Image.fromarray(((m == 128) * 2 + (m == 255) * 1).astype(np.uint8), mode="L").convert("P")
    pal.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128] + [0] * (256 * 3 - 9))
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert np.array_equal(load_mask(tmp_path / "pal.png"), m)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))  # red / blue classes
    pal.save(tmp_path / "colour_pal.png")
    with pytest.raises(ConversionError, match=r"colour_pal\.png: palette mask with colours that are "
                                              r"not grey \(index, RGB\) \[\(1, \(255, 0, 0\)\), "
                                              r"\(2, \(0, 0, 255\)\)\]"):
        load_mask(tmp_path / "colour_pal.png")
    # through the converter: the 16-bit and palette masks give the same three-class labels
    root = _wbc(tmp_path / "data", n=2)
    _png16(root / "001.png", m.astype(np.uint32) * 257)
    (tmp_path / "pal.png").replace(root / "002.png")
    recs = load_wbc_seg(root, "3class", tmp_path / "labels")
    for r in recs:
        assert np.array_equal(np.asarray(Image.open(r["sem_seg_file_name"])), expected3), r["sample_id"]


# ---------------------------------------------------------------------------------------------
# group 4: one line naming the file
# ---------------------------------------------------------------------------------------------
def test_wider_face_count_hint_only_for_a_path_row(wider, capsys):
    tmp_path, _, _ = wider
    rc, _ = _wider_run(tmp_path, f"0--A/a.jpg\n2\n{FACE}\n0--A/b.jpg\n0\n")
    assert rc == 1 and _one_line_error(capsys).endswith(
        "hostile.txt:4: expected 10 integers per face, got '0--A/b.jpg' (face count on line 2 is 2: "
        "too large?)")


def test_debug_shows_the_traceback(wider):
    tmp_path, _, _ = wider
    with pytest.raises(ConversionError, match="face x1 'nan'"):
        _wider_run(tmp_path, "0--A/a.jpg\n1\nnan 1 4 4 0 0 0 0 0 0\n", "--strict", "--debug")


# ---------------------------------------------------------------------------------------------
# issue 14: one consistent output
# ---------------------------------------------------------------------------------------------
def test_coco_output_records_its_image_root_and_moves(wider, tmp_path_factory):
    tmp_path, ann, imgs = wider
    inside = tmp_path / "coco.json"  # images under the JSON's folder: relative root
    assert main(["widerface", "--annotations", str(ann), "--images", str(imgs), "--output",
                 str(inside)]) == 0
    data = json.loads(inside.read_text())
    assert data["d2ext"] == {"image_root": "images"}
    assert [i["file_name"] for i in data["images"]] == ["0--A/a.jpg", "0--A/b.jpg"]
    assert [i["id"] for i in data["images"]] == [1, 2] and [a["id"] for a in data["annotations"]] == [1, 2, 3]
    # the folder moved whole: the relative root still finds the images
    moved = tmp_path_factory.mktemp("moved") / "ds"
    os.rename(tmp_path, moved)
    for img in data["images"]:
        assert os.path.isfile(moved / data["d2ext"]["image_root"] / img["file_name"])
    # COCO's own layout (ds/annotations/x.json beside ds/images): relative too
    sibling = moved / "annotations" / "val.json"
    assert main(["widerface", "--annotations", str(moved / "gt.txt"), "--images", str(moved / "images"),
                 "--out", str(sibling)]) == 0
    assert json.loads(sibling.read_text())["d2ext"] == {"image_root": "../images"}
    # a JSON written elsewhere records the absolute folder and can be moved alone
    other = tmp_path_factory.mktemp("elsewhere") / "deep" / "c.json"
    assert main(["widerface", "--annotations", str(moved / "gt.txt"), "--images", str(moved / "images"),
                 "--out", str(other)]) == 0
    assert json.loads(other.read_text())["d2ext"] == {"image_root": str(moved / "images")}


def test_zero_images_kept_is_an_error(wider, capsys):
    tmp_path, ann, _ = wider
    (tmp_path / "empty").mkdir()
    rc = main(["widerface", "--annotations", str(ann), "--images", str(tmp_path / "empty"),
               "--output", str(tmp_path / "o.json")])
    assert rc == 1 and not (tmp_path / "o.json").exists()
    assert _one_line_error(capsys) == (f"error: converters.widerface: {ann}: no images kept (2 skipped: "
                                       "image unreadable 2); nothing written")


def test_widerface_no_images(wider):
    tmp_path, ann, _ = wider
    rep = tmp_path / "r.json"
    assert main(["widerface", "--annotations", str(ann), "--no-images", "--output",
                 str(tmp_path / "n.json"), "--report", str(rep)]) == 0
    data = json.loads((tmp_path / "n.json").read_text())
    assert data["images"] == [{"id": 1, "file_name": "0--A/a.jpg"}, {"id": 2, "file_name": "0--A/b.jpg"}]
    assert data["d2ext"] == {"image_sizes": False} and len(data["annotations"]) == 3
    assert json.loads(rep.read_text())["image_sizes"].startswith("not read (--no-images)")


def test_wbc_instances_ids_from_one_and_3class_alias(tmp_path):
    root = _wbc(tmp_path / "data")
    inst = tmp_path / "inst.json"
    assert main(["wbc-seg", "--root", str(root), "--mode", "3class", "--output", str(tmp_path / "l"),
                 "--instances-out", str(inst)]) == 0
    data = json.loads(inst.read_text())
    assert [i["id"] for i in data["images"]] == [1, 2, 3]
    assert [i["file_name"] for i in data["images"]] == ["001.bmp", "002.bmp", "003.bmp"]
    assert data["d2ext"]["image_root"] == "data"  # under the JSON's folder: relative
    ds = json.loads((tmp_path / "l" / "dataset.json").read_text())
    assert ds["mode"] == "three_class" and [r["image_id"] for r in ds["records"]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# issue 13: light start, header sizes
# ---------------------------------------------------------------------------------------------
_MODULES_AT_EXIT = r"""
import atexit, json, runpy, sys
sys.argv = ["tools/convert.py"] + sys.argv[1:]
atexit.register(lambda: print("MODULES " + json.dumps(sorted(m for m in sys.modules
                                                           if m.split(".")[0] in ("torch", "detectron2",
                                                           "converters", "PIL", "numpy")))))
runpy.run_path({script!r}, run_name="__main__")
"""


def test_convert_runs_a_real_conversion_without_torch(wider):
    tmp_path, ann, imgs = wider
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_AT_EXIT.format(script=os.path.join(REPO, "tools", "convert.py")),
         "widerface", "--annotations", str(ann), "--images", str(imgs), "--output",
         str(tmp_path / "o.json"), "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
    # only the chosen format's converter; no torch, no Detectron2, not even PIL or numpy
    assert modules == ["converters", "converters.common", "converters.widerface"]
    assert json.loads((tmp_path / "o.json").read_text())["images"][0]["height"] == 10


@pytest.mark.parametrize("orientation", range(0, 9))
def test_jpeg_header_size_matches_pil_and_imagesize(tmp_path, orientation):
    imagesize = pytest.importorskip("imagesize")
    path = tmp_path / "x.jpg"
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.new("RGB", (40, 30)).save(path, exif=exif.tobytes() if orientation else b"",
                                    progressive=orientation % 2 == 1)
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    assert jpeg_header_size(path) == (h, w) == read_image_size(path)
    assert imagesize.get(path) == (w, h)


@pytest.mark.parametrize("icc_bytes", [5000, 150000])
def test_jpeg_header_size_past_large_headers(tmp_path, icc_bytes):
    # APP2 segments (an ICC profile split over 3 of them at 150 kB) push the SOF beyond the first
    # read; EXIF written after them still decides the orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "x.jpg", icc_profile=bytes(range(256)) * (icc_bytes // 256),
                                    exif=exif.tobytes())
    assert (tmp_path / "x.jpg").stat().st_size > icc_bytes
    assert jpeg_header_size(tmp_path / "x.jpg") == (40, 30)


def test_jpeg_header_size_falls_back_on_odd_files(tmp_path):
    full = tmp_path / "full.jpg"
    Image.new("RGB", (40, 30)).save(full)
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:20])
    assert jpeg_header_size(tmp_path / "cut.jpg") is None
    with pytest.raises(ConversionError, match="cut.jpg: not a readable image"):
        read_image_size(tmp_path / "cut.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "png.jpg", format="PNG")  # misnamed: PIL reads it
    assert jpeg_header_size(tmp_path / "png.jpg") is None and read_image_size(tmp_path / "png.jpg") == (30, 40)
    with pytest.raises(ConversionError, match="missing.jpg: image not found"):
        read_image_size(tmp_path / "missing.jpg")


def test_every_converter_module_imports_without_torch_or_detectron2():
    from tools.convert import CONVERTER_MODULES

    code = ("import sys, json\n" + "".join(f"import converters.{m}\n" for m in CONVERTER_MODULES)
            + "print(json.dumps(sorted(m for m in ('torch', 'detectron2') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_format_help_imports_only_its_module():
    code = ("import sys, json\nsys.argv = ['convert.py', 'voc', '--help']\nfrom tools.convert import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('MODULES', json.dumps(sorted(m for m in sys.modules if m.startswith('converters.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "--output OUT, --out OUT" in proc.stdout
    assert json.loads(proc.stdout.split("MODULES ", 1)[1]) == ["converters.bccd", "converters.common"]
