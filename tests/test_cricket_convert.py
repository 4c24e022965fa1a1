"""Cricket-shot folder converter: class names/order, records, group-aware split, keypoints, CLI,
registration. Everything runs on tiny folder trees written with PIL into tmp_path."""
import json
from collections import Counter, defaultdict

import pytest
from PIL import Image

from converters.common import ConversionError, ConversionReport
from converters.cricket import (
    attach_keypoints,
    convert_cricket,
    discover_classes,
    group_stratified_split,
    load_cricket_records,
    load_keypoint_results,
    make_group_key_fn,
    parse_class_folder_name,
    register_cricket,
)


def _save(path, size=(8, 6), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 90).save(path)


def _make_tree(root, groups_per_class, copies=(1, 2, 3),
               folders=("0. Cut Shot", "1. Cover Drive", "03_pull")):
    """Each class gets ``groups_per_class`` photos, photo g with ``copies[g % len(copies)]``
    augmented copies named ``<g>_<tag>.jpg``."""
    for c, folder in enumerate(folders):
        for g in range(groups_per_class):
            for k in range(copies[g % len(copies)]):
                tag = "main" if k == 0 else str(30 * k)
                _save(root / folder / f"{g + 100 * c}_{tag}.jpg", size=(8 + c, 6 + k))
    return root


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("0. Cut Shot", (0, "Cut Shot")),
        ("03_pull", (3, "pull")),
        ("cover drive & more", (None, "cover drive & more")),
        ("7) hook", (7, "hook")),
        ("2 - sweep", (2, "sweep")),
        ("12 straight drive", (12, "straight drive")),
        ("3D shot", (None, "3D shot")),  # digits glued to a word are part of the name
        ("  5.late cut  ", (5, "late cut")),
        ("42", (None, "42")),  # a bare number is a name, not a prefix of nothing
    ],
)
def test_parse_class_folder_name(folder, expected):
    assert parse_class_folder_name(folder) == expected


def test_class_order_is_stable_and_by_prefix(tmp_path):
    # Created in a scrambled order; prefix 10 must come after 3 (numeric, not string order).
    for name in ["cover drive & more", "10_sweep", "Alpha", "03_pull", "0. Cut Shot"]:
        (tmp_path / name).mkdir()
    assert discover_classes(tmp_path) == [
        ("0. Cut Shot", "Cut Shot"),
        ("03_pull", "pull"),
        ("10_sweep", "sweep"),
        ("Alpha", "Alpha"),
        ("cover drive & more", "cover drive & more"),
    ]


def test_duplicate_human_names_are_an_error(tmp_path):
    (tmp_path / "0. cut").mkdir()
    (tmp_path / "1_Cut").mkdir()
    with pytest.raises(ConversionError, match="class name 'Cut' is also given by folder '0. cut'"):
        discover_classes(tmp_path)


def test_records_grayscale_and_rgb(tmp_path):
    _save(tmp_path / "0. Cut Shot" / "12_cut_main.jpg", size=(20, 10), mode="RGB")
    _save(tmp_path / "0. Cut Shot" / "12_cut_30.png", size=(7, 5), mode="L")
    _save(tmp_path / "1_pull" / "3_pull.bmp", size=(4, 9), mode="L")
    (tmp_path / "1_pull" / "readme.txt").write_text("not an image")
    report = ConversionReport("cricket")
    classes, records = load_cricket_records(tmp_path, report=report)
    assert classes == ["Cut Shot", "pull"]
    got = [(r["relative_path"], r["width"], r["height"], r["image_id"], r["label"], r["class_name"],
            r["group"]) for r in records]
    assert got == [
        ("0. Cut Shot/12_cut_30.png", 7, 5, 0, 0, "Cut Shot", "12"),
        ("0. Cut Shot/12_cut_main.jpg", 20, 10, 1, 0, "Cut Shot", "12"),
        ("1_pull/3_pull.bmp", 4, 9, 2, 1, "pull", "3"),
    ]
    assert all(r["file_name"] == str((tmp_path / r["relative_path"]).resolve()) for r in records)
    assert report.num_images == 3
    assert [(s["file"].endswith("readme.txt"), s["reason"]) for s in report.skipped] == [
        (True, "not an image file: extension '.txt'")
    ]
    assert report.notes["images_per_class"] == {"Cut Shot": 2, "pull": 1}


def test_group_key_default_regex_and_callable():
    default = make_group_key_fn()
    assert default("12_cut_main.jpg") == "12"
    assert default("12_cut_30.jpg") == "12"
    assert default("120_cut.jpg") == "120"
    assert default("img_7.jpg") == "img_7"  # no leading id: the file is its own group
    by_photo = make_group_key_fn(r"^(.*)_(?:main|\d+)\.")
    assert by_photo("a_cut_main.jpg") == by_photo("a_cut_30.jpg") == "a_cut"
    whole_match = make_group_key_fn(r"[a-z]+")
    assert whole_match("12_cut_main.jpg") == "cut"
    assert make_group_key_fn(lambda f: f.split("-")[0])("x9-left.png") == "x9"
    with pytest.raises(ValueError, match="not a valid regular expression"):
        make_group_key_fn("([0-9]+")


def test_split_is_group_aware_stratified_and_deterministic_over_many_seeds(tmp_path):
    _make_tree(tmp_path, groups_per_class=12)
    classes, records = load_cricket_records(tmp_path)
    per_class = Counter(r["label"] for r in records)
    assert per_class == {0: 24, 1: 24, 2: 24}
    signatures = set()
    for seed in range(40):
        splits = group_stratified_split(records, seed=seed)
        ids = [r["image_id"] for s in splits.values() for r in s]
        assert sorted(ids) == list(range(len(records)))  # every image exactly once
        where = defaultdict(set)
        for name, recs in splits.items():
            for r in recs:
                where[(r["label"], r["group"])].add(name)
        assert all(len(v) == 1 for v in where.values()), f"seed {seed}: a photo is in two splits"
        for name, recs in splits.items():
            # every class in every split; about 70/15/15 of each class's 24 images
            counts = Counter(r["label"] for r in recs)
            assert set(counts) == {0, 1, 2}, (seed, name, counts)
        for label in range(3):
            n_train = sum(r["label"] == label for r in splits["train"])
            assert 14 <= n_train <= 20, (seed, label, n_train)
        again = group_stratified_split(list(reversed(records)), seed=seed)
        assert {k: [r["image_id"] for r in v] for k, v in again.items()} == \
               {k: [r["image_id"] for r in v] for k, v in splits.items()}
        signatures.add(tuple(r["image_id"] for r in splits["test"]))
    assert len(signatures) > 30  # the seed really changes the split


def test_small_class_gets_one_group_per_split():
    # 3 one-image photos, targets 2.1 / 0.45 / 0.45: the deficit rule alone fills train twice and
    # val once; the repair pass must hand test one photo so every split sees the class.
    records = [{"image_id": i, "label": 0, "group": g} for i, g in enumerate("abc")]
    for seed in range(10):
        splits = group_stratified_split(records, seed=seed)
        assert [len(s) for s in splits.values()] == [1, 1, 1]
    # Photos of 3, 1 and 1 images: the big one goes to train, one small one each to val/test.
    records = [{"image_id": i, "label": 0, "group": g} for i, g in enumerate(["a", "a", "a", "b", "c"])]
    for seed in range(10):
        splits = group_stratified_split(records, seed=seed)
        assert [r["group"] for r in splits["train"]] == ["a", "a", "a"]
        assert sorted(r["group"] for r in splits["val"] + splits["test"]) == ["b", "c"]
    # Only 2 photos for 3 splits: too few to give every split one, so the ratios decide (both
    # photos go to train rather than leaving the class with a single training photo).
    records = [{"image_id": i, "label": 0, "group": g} for i, g in enumerate("ab")]
    assert [len(s) for s in group_stratified_split(records, seed=0).values()] == [2, 0, 0]


def test_split_ratios_validation_and_zero_ratio():
    records = [{"image_id": i, "label": 0, "group": str(i)} for i in range(10)]
    splits = group_stratified_split(records, ratios=(0.8, 0.0, 0.2), seed=3)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (8, 0, 2)
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        group_stratified_split(records, ratios=(0.5, 0.5))


def _person(x):
    return {"keypoints": [float(x), 2.0, 2] * 17, "score": 0.9, "bbox": [0, 0, 5, 5]}


def test_keypoints_attached_by_relative_path_basename_and_absolute(tmp_path):
    root = tmp_path / "data"
    _save(root / "0_cut" / "1_a.jpg")
    _save(root / "0_cut" / "2_a.jpg")
    _save(root / "1_pull" / "2_a.jpg")  # same base name as in 0_cut: basename alone is ambiguous
    _save(root / "1_pull" / "3_b.jpg")
    results = [
        dict(_person(1), file_name="0_cut/1_a.jpg", image_id=0, category_id=1),
        dict(_person(2), file_name="0_cut/1_a.jpg", image_id=0, category_id=1),
        dict(_person(3), file_name="3_b.jpg"),
        dict(_person(4), file_name=str(root / "1_pull" / "2_a.jpg")),
        dict(_person(5), file_name="2_a.jpg"),  # ambiguous -> reported, not guessed
        dict(_person(6), file_name="gone.jpg"),
    ]
    kp_file = tmp_path / "kps.json"
    kp_file.write_text(json.dumps(results))
    report = ConversionReport("cricket")
    out = convert_cricket(root, keypoints_file=kp_file, report=report)
    recs = {r["relative_path"]: r for s in out["splits"].values() for r in s}
    assert [p["keypoints"][0] for p in recs["0_cut/1_a.jpg"]["keypoints"]] == [1.0, 2.0]
    assert recs["0_cut/1_a.jpg"]["keypoints"][0]["score"] == 0.9
    assert len(recs["0_cut/1_a.jpg"]["keypoints"][0]["keypoints"]) == 51
    assert [p["keypoints"][0] for p in recs["1_pull/3_b.jpg"]["keypoints"]] == [3.0]
    assert [p["keypoints"][0] for p in recs["1_pull/2_a.jpg"]["keypoints"]] == [4.0]
    assert recs["0_cut/2_a.jpg"]["keypoints"] == []  # no person found: an empty list, not absent
    assert sorted(s["reason"].split(":")[0] for s in report.skipped) == [
        "keypoints for '2_a.jpg'", "keypoints for 'gone.jpg'"]


def test_keypoint_file_layouts(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "0_cut/1_a.jpg"}, {"id": 8, "file_name": "x.jpg"}],
            "annotations": [dict(_person(1), image_id=7)]}
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(coco))
    loaded = load_keypoint_results(p)
    assert list(loaded) == ["0_cut/1_a.jpg", "x.jpg"] and loaded["x.jpg"] == []
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"a.jpg": [_person(2)], "b.jpg": []}))
    loaded = load_keypoint_results(keyed)
    assert loaded["a.jpg"][0]["bbox"] == [0.0, 0.0, 5.0, 5.0] and loaded["b.jpg"] == []
    records = [{"file_name": "/r/0_cut/a.jpg", "relative_path": "0_cut/a.jpg"}]
    assert attach_keypoints(records, loaded) == 1  # b.jpg matches nothing
    assert records[0]["keypoints"][0]["keypoints"][:3] == [2.0, 2.0, 2.0]


def test_cli_writes_classes_and_splits(tmp_path, run_tool):
    root = _make_tree(tmp_path / "shots", groups_per_class=5, folders=("0. Cut Shot", "03_pull"))
    (root / "03_pull" / "Thumbs.db").write_bytes(b"\0\1")
    out, rep = tmp_path / "out" / "dicts.json", tmp_path / "report.json"
    proc = run_tool("convert.py", "cricket", "--root", root, "--out", out, "--report", rep, "--seed", "5")
    data = json.loads(out.read_text())
    assert data["classes"] == ["Cut Shot", "pull"]
    assert sorted(data["splits"]) == ["test", "train", "val"]
    all_recs = [r for s in data["splits"].values() for r in s]
    assert len(all_recs) == 2 * (1 + 2 + 3 + 1 + 2)
    assert {(r["label"], r["class_name"]) for r in all_recs} == {(0, "Cut Shot"), (1, "pull")}
    required = {"file_name", "height", "width", "image_id", "label", "class_name"}
    assert all(required <= set(r) for r in all_recs)
    direct = convert_cricket(root, seed=5)
    assert {k: [r["image_id"] for r in v] for k, v in data["splits"].items()} == \
           {k: [r["image_id"] for r in v] for k, v in direct["splits"].items()}
    report = json.loads(rep.read_text())
    assert report["num_images"] == len(all_recs)
    assert [s["file"].endswith("Thumbs.db") for s in report["skipped"]] == [True]
    assert proc.returncode == 0


def test_register_cricket(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = _make_tree(tmp_path / "shots", groups_per_class=4, folders=("1_pull", "0_cut"))
    names = register_cricket("cricket_test_reg", root, seed=2)
    assert names == ["cricket_test_reg_train", "cricket_test_reg_val", "cricket_test_reg_test"]
    meta = MetadataCatalog.get("cricket_test_reg_train")
    assert meta.thing_classes == ["cut", "pull"] and meta.classes == ["cut", "pull"]
    assert meta.evaluator_type == "classification"
    sizes = [len(DatasetCatalog.get(n)) for n in names]
    assert sum(sizes) == 2 * (1 + 2 + 3 + 1) and min(sizes) > 0
    first = DatasetCatalog.get(names[0])
    first[0]["label"] = 99  # callers get copies: mutating one does not leak into the next get
    assert DatasetCatalog.get(names[0])[0]["label"] != 99
    register_cricket("cricket_test_reg", root, seed=2)  # same arguments: harmless
    with pytest.raises(ValueError, match="cricket_test_reg_train"):
        register_cricket("cricket_test_reg", root, seed=3)
