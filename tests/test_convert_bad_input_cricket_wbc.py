"""Malformed input for the cricket-folder and WBC-mask converters: each case gives an error that
names the file (and line where there is one) or a reported skip; never a traceback from deep
inside, never a half-written output."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from converters.common import ConversionError, ConversionReport
from converters.cricket import convert_cricket, load_cricket_records, load_keypoint_results
from converters.wbc_seg import (
    load_wbc_instances,
    load_wbc_seg,
    read_cell_types,
    scan_wbc,
)


def _img(path, size=(12, 10), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 100).save(path, format=fmt)
    return path


def _encoded(size=(64, 48), fmt="JPEG"):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _reasons(report):
    return [(s["file"].rsplit("/", 1)[-1], s["reason"].split(":")[0]) for s in report.skipped]


# ---------------------------------------------------------------------------------------------
# cricket folders
# ---------------------------------------------------------------------------------------------
def test_cricket_empty_class_folder_is_reported_and_keeps_its_label(tmp_path):
    _img(tmp_path / "0_cut" / "1_a.jpg")
    (tmp_path / "1_pull").mkdir()
    _img(tmp_path / "2_sweep" / "5_a.jpg")
    report = ConversionReport("cricket")
    classes, records = load_cricket_records(tmp_path, report=report)
    assert classes == ["cut", "pull", "sweep"]
    assert [(r["class_name"], r["label"]) for r in records] == [("cut", 0), ("sweep", 2)]
    assert _reasons(report) == [("1_pull", "empty class folder")]


def test_cricket_non_image_files_are_reported(tmp_path):
    _img(tmp_path / "0_cut" / "1_a.jpg")
    (tmp_path / "0_cut" / "labels.csv").write_text("a,b\n")
    (tmp_path / "0_cut" / "NOEXT").write_bytes(b"\x00")
    (tmp_path / "0_cut" / "nested").mkdir()
    (tmp_path / "0_cut" / ".DS_Store").write_bytes(b"\x00")  # hidden system file: not data
    report = ConversionReport("cricket")
    _, records = load_cricket_records(tmp_path, report=report)
    assert len(records) == 1
    assert sorted(_reasons(report)) == [
        ("NOEXT", "not an image file"), ("labels.csv", "not an image file"),
        ("nested", "sub-folder inside a class folder (only direct files are read)")]


def test_cricket_unreadable_and_truncated_images(tmp_path):
    cls = tmp_path / "0_cut"
    _img(cls / "1_ok.jpg")
    (cls / "2_empty.jpg").write_bytes(b"")
    (cls / "3_text.png").write_text("this is not a png")
    (cls / "4_cut_header.png").write_bytes(_encoded(fmt="PNG")[:20])
    (cls / "5_cut_data.jpg").write_bytes(_encoded()[:-600])  # header intact, pixels missing
    report = ConversionReport("cricket")
    _, records = load_cricket_records(tmp_path, report=report)
    # header-only reading (fast, the default) keeps the file whose header is intact
    assert [r["relative_path"] for r in records] == ["0_cut/1_ok.jpg", "0_cut/5_cut_data.jpg"]
    assert _reasons(report) == [("2_empty.jpg", "unreadable image"), ("3_text.png", "unreadable image"),
                                ("4_cut_header.png", "unreadable image")]
    report = ConversionReport("cricket")
    _, records = load_cricket_records(tmp_path, report=report, verify_images=True)
    assert [r["relative_path"] for r in records] == ["0_cut/1_ok.jpg"]
    assert ("5_cut_data.jpg", "unreadable image") in _reasons(report)
    assert "truncated" in report.skipped[-1]["reason"]


def test_cricket_strict_turns_a_skip_into_an_error_naming_the_file(tmp_path):
    _img(tmp_path / "0_cut" / "1_a.jpg")
    (tmp_path / "0_cut" / "notes.txt").write_text("x")
    with pytest.raises(ConversionError, match=r"converters\.cricket: .*notes\.txt: not an image file"):
        convert_cricket(tmp_path, report=ConversionReport("cricket", strict=True))


def test_cricket_root_problems(tmp_path):
    with pytest.raises(ConversionError, match="not a directory"):
        convert_cricket(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no class folders found"):
        convert_cricket(tmp_path / "empty")


def test_cricket_bad_keypoint_files(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n {"file_name": "a.jpg",\n  "keypoints": [1, 2, 2]\n')
    with pytest.raises(ConversionError, match=r"bad\.json:4: invalid JSON"):
        load_keypoint_results(bad_json)
    short = tmp_path / "short.json"
    short.write_text(json.dumps([{"file_name": "a.jpg", "keypoints": [0.0] * 51},
                                 {"file_name": "b.jpg", "keypoints": [0.0] * 50}]))
    with pytest.raises(ConversionError,
                       match=r"short\.json: entry 1: expected 51 keypoint numbers .* got 50"):
        load_keypoint_results(short)
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps([{"image_id": 3, "keypoints": [0.0] * 51}]))
    with pytest.raises(ConversionError, match="entry 0: expected 'file_name'"):
        load_keypoint_results(nameless)


def test_cricket_cli_strict_failure_writes_nothing(tmp_path, run_tool):
    _img(tmp_path / "shots" / "0_cut" / "1_a.jpg")
    (tmp_path / "shots" / "0_cut" / "2_b.jpg").write_bytes(b"GIF89a")
    out = tmp_path / "dicts.json"
    proc = run_tool("convert.py", "cricket", "--root", tmp_path / "shots", "--out", out, "--strict",
                    check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "2_b.jpg" in proc.stderr and "unreadable image" in proc.stderr
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []


# ---------------------------------------------------------------------------------------------
# WBC masks
# ---------------------------------------------------------------------------------------------
def _mask(h=10, w=12):
    m = np.zeros((h, w), np.uint8)
    m[2:7, 3:9] = 128
    m[3:5, 4:6] = 255
    return m


def _pair(folder, stem, mask=None, image_size=None):
    mask = _mask() if mask is None else mask
    h, w = mask.shape
    _img(folder / f"{stem}.bmp", size=image_size or (w, h))
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(folder / f"{stem}.png")


def test_wbc_size_mismatch_is_reported_with_both_sizes(tmp_path):
    data = tmp_path / "d"  # outputs may not lie inside the input folder
    _pair(data, "001")
    _pair(data, "002", image_size=(300, 300))
    report = ConversionReport("wbc_seg")
    recs = load_wbc_seg(data, "binary", tmp_path / "out", report=report)
    assert [r["sample_id"] for r in recs] == ["001"]
    [skip] = report.skipped
    assert skip["file"].endswith("002.png")
    assert skip["reason"] == "mask/image size mismatch: mask 12x10, image 002.bmp 300x300 (width x height)"
    assert not (tmp_path / "out" / "002.png").exists()


def test_wbc_missing_mask_and_orphan_mask(tmp_path):
    _pair(tmp_path, "001")
    _img(tmp_path / "002.bmp")
    Image.fromarray(_mask()).save(tmp_path / "003.png")
    (tmp_path / "README.txt").write_text("notes")
    report = ConversionReport("wbc_seg")
    samples = scan_wbc(tmp_path, report=report)
    assert [s["sample_id"] for s in samples] == ["001"]
    assert sorted(_reasons(report)) == [("002.bmp", "missing mask"), ("003.png", "mask without image"),
                                        ("README.txt", "not an image or mask file")]


def test_wbc_unreadable_and_truncated_files(tmp_path):
    data = tmp_path / "d"  # outputs may not lie inside the input folder
    _pair(data, "001")
    _pair(data, "002")
    (data / "002.bmp").write_bytes(b"BM\x00\x00")  # cut inside the header
    _pair(data, "003", mask=np.random.default_rng(1).integers(0, 255, (40, 50), dtype=np.uint8))
    png = (data / "003.png").read_bytes()
    (data / "003.png").write_bytes(png[: len(png) // 2])  # header fine, pixel data cut
    report = ConversionReport("wbc_seg")
    recs = load_wbc_seg(data, "three_class", tmp_path / "out", report=report)
    assert [r["sample_id"] for r in recs] == ["001"]
    assert _reasons(report) == [("002.bmp", "unreadable file"), ("003.png", "unreadable mask")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["001.png"]


def test_wbc_no_pairs_is_an_error(tmp_path):
    data = tmp_path / "d"  # outputs may not lie inside the input folder
    _img(data / "001.bmp")
    with pytest.raises(ConversionError, match=r"converters\.wbc_seg: .*: no image/mask pairs found"):
        load_wbc_seg(data, "binary", tmp_path / "out")


def test_wbc_bad_csv_rows_are_reported_with_lines(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(b"image ID,class\r\n1,2\r\ntwo,3\r\n3\r\n4,9\r\n1,4\r\n\r\n5, 1 \r\n")
    report = ConversionReport("wbc_seg")
    assert read_cell_types(csv_file, report) == {1: 2, 5: 1}
    assert [(s["line"], s["reason"].split(":")[0]) for s in report.skipped] == [
        (3, "bad row"), (4, "bad row"), (5, "unknown class 9"), (6, "duplicate image id 1 (first on line 2)")]
    with pytest.raises(ConversionError):
        read_cell_types(csv_file, ConversionReport("wbc_seg", strict=True))


def test_wbc_csv_structure_errors(tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text("image,label\n1,2\n")
    with pytest.raises(ConversionError, match=r"missing\.csv:1: missing column\(s\) \['image id', 'class'\]"):
        read_cell_types(missing)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ConversionError, match=r"empty\.csv: empty file"):
        read_cell_types(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"image ID,class\n1,2\n2,\xe9\n")
    with pytest.raises(ConversionError, match=r"latin\.csv:3: not valid UTF-8"):
        read_cell_types(latin)


def test_wbc_csv_ids_without_images_and_images_without_ids(tmp_path):
    _pair(tmp_path / "d", "001")
    _pair(tmp_path / "d", "002")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("image ID,class\n1,3\n77,1\n")
    report = ConversionReport("wbc_seg")
    samples = scan_wbc(tmp_path / "d", csv_file=csv_file, report=report)
    assert [s.get("cell_type") for s in samples] == [3, None]
    assert [(s["line"], s["reason"]) for s in report.skipped] == [
        (3, "cell type for image id 77: no such image")]
    assert report.notes["images_without_cell_type"] == ["002"]


def test_wbc_colour_and_empty_masks(tmp_path):
    data = tmp_path / "d"  # outputs may not lie inside the input folder
    _pair(data, "001")
    rgb = np.stack([_mask()] * 3, axis=-1)  # grey stored as RGB: read from one channel, no repair
    Image.fromarray(rgb).save(data / "001.png")
    _pair(data, "002")
    colour = np.zeros((10, 12, 3), np.uint8)
    colour[2:7, 3:9] = (255, 0, 0)  # a red cell: no grey level, so no class: skipped, reported
    Image.fromarray(colour).save(data / "002.png")
    _pair(data, "003", mask=np.zeros((10, 12), np.uint8))  # no cell at all
    report = ConversionReport("wbc_seg")
    recs = load_wbc_seg(data, "three_class", tmp_path / "out", report=report)
    assert [r["sample_id"] for r in recs] == ["001", "003"]
    labels = [np.asarray(Image.open(r["sem_seg_file_name"])) for r in recs]
    assert np.array_equal(labels[0], (_mask() == 128) * 1 + (_mask() == 255) * 2)
    assert labels[1].max() == 0
    assert [(x["file"][-7:], x["reason"]) for x in report.skipped] == [
        ("002.png", "unreadable mask: colour mask (mode RGB): pixel (row 2, col 3) is (255, 0, 0); "
                    "expected grey levels 0/128/255")]
    assert report.repaired == []
    inst_report = ConversionReport("wbc_seg")
    inst = load_wbc_instances(data, report=inst_report)
    assert [r["sample_id"] for r in inst] == ["001"]
    assert sorted(_reasons(inst_report)) == [("002.png", "unreadable mask"),
                                             ("003.png", "no cell pixels in the mask")]


def test_wbc_cli_strict_error_is_one_line_and_writes_no_dataset(tmp_path, run_tool):
    _pair(tmp_path / "d", "001")
    _pair(tmp_path / "d", "002", image_size=(13, 10))
    out = tmp_path / "out"
    proc = run_tool("convert.py", "wbc-seg", "--root", tmp_path / "d", "--mode", "binary", "--out", out,
                    "--strict", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "002.png: mask/image size mismatch" in proc.stderr
    assert not (out / "dataset.json").exists()
    # without --strict the same input converts, the mismatch counted in the report
    rep = tmp_path / "r.json"
    run_tool("convert.py", "wbc-seg", "--root", tmp_path / "d", "--mode", "binary", "--out", out,
             "--report", rep)
    report = json.loads(rep.read_text())
    assert report["num_images"] == 1 and report["skip_reasons"] == {"mask/image size mismatch": 1}
    assert len(json.loads((out / "dataset.json").read_text())["records"]) == 1
