"""COCO person keypoints: same records as Detectron2's load_coco_json, reported problems, full
keypoint metadata, and a COCO export round trip."""
import json
from collections import Counter

import pytest

from converters.coco_keypoints import (COCO_PERSON_KEYPOINT_NAMES, keypoint_metadata,
                                       load_coco_records)
from converters.common import ConversionError, ConversionReport, export_coco_json


def _tiny(tmp_path):
    d = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12}],
         "categories": [{"id": 1, "name": "person", "keypoints": ["left_eye", "right_eye", "nose"],
                         "skeleton": [[1, 2], [1, 3]]}],
         "annotations": [
             {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0,
              "keypoints": [2, 3, 2, 4, 3, 1, 0, 0, 0], "segmentation": [[1, 1, 6, 1, 6, 6]]},
             {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1,
              "segmentation": {"counts": [0, 12, 108], "size": [10, 12]}, "keypoints": [0] * 9},
             {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "keypoints": [1, 1, 3] + [0] * 6},
             {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "keypoints": [1, 1, 2]},
             {"id": 5, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},
             {"id": 6, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]},
             {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 2]},
         ]}
    p = tmp_path / "kp.json"
    p.write_text(json.dumps(d))
    return p


def test_tiny_keypoints_crowd_and_reported_problems(tmp_path):
    report = ConversionReport("coco_keypoints")
    (rec,) = load_coco_records(_tiny(tmp_path), "imgs", report=report)
    assert rec["file_name"] == "imgs/a.jpg" and (rec["height"], rec["width"]) == (10, 12)
    a, crowd = rec["annotations"]
    assert a["keypoints"] == [2.5, 3.5, 2, 4.5, 3.5, 1, 0.5, 0.5, 0]  # v kept, +0.5 as Detectron2
    assert a["category_id"] == 0 and a["segmentation"] == [[1, 1, 6, 1, 6, 6]]
    assert crowd["iscrowd"] == 1 and isinstance(crowd["segmentation"]["counts"], bytes)
    from pycocotools import mask as mask_util
    assert mask_util.decode(crowd["segmentation"]).sum() == 12
    reasons = [s["reason"] for s in report.skipped]
    assert reasons == ["annotation 5: unknown image_id 99", "annotation 6: unknown category_id 7",
                       "annotation 3: keypoint visibility [3] not in {0, 1, 2}",
                       "annotation 4: 3 keypoint values, expected 3 x 3",
                       "annotation 7: zero or negative size box [1, 1, 0, 2]"]
    assert report.notes["keypoint_names"] == ["left_eye", "right_eye", "nose"]


def test_keypoint_metadata():
    meta = keypoint_metadata()
    assert len(meta["keypoint_names"]) == 17 and meta["keypoint_names"][0] == "nose"
    assert meta["keypoint_flip_map"][0] == ("left_eye", "right_eye") and len(meta["keypoint_flip_map"]) == 8
    assert len(meta["keypoint_connection_rules"]) == 19
    assert meta["keypoint_connection_rules"][0] == ("left_ankle", "left_knee", (0, 128, 255))


def test_bad_json_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [\n{"id": 1,\n}]}')
    with pytest.raises(ConversionError, match=r"bad.json:3: not valid JSON"):
        load_coco_records(p)


@pytest.mark.parametrize("split,n_img,n_ann,n_kp", [("train", 80, 172, 86), ("val", 79, 118, 68)])
def test_real_matches_detectron2_and_round_trips(shared_data, tmp_path, split, n_img, n_ann, n_kp):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    base = shared_data / "coco_kp"
    js, imgs = base / "annotations" / f"person_keypoints_{split}2017.json", base / f"{split}2017"
    report = ConversionReport("coco_keypoints")
    ours = load_coco_records(js, imgs, report=report, read_sizes=True)
    assert (len(ours), report.num_annotations, report.notes["num_with_keypoints"]) == (n_img, n_ann, n_kp)
    assert report.skipped == [] and report.repaired == []
    assert report.notes["keypoint_names"] == list(COCO_PERSON_KEYPOINT_NAMES)
    vis = Counter(v for r in ours for a in r["annotations"] for v in a["keypoints"][2::3])
    assert set(vis) == {0, 1, 2} and vis[1] > 0
    assert report.notes["num_crowd"] > 0
    name = f"test_kp_ref_{split}"
    try:
        ref = load_coco_json(str(js), str(imgs), name)
        assert sorted(ours, key=lambda r: r["image_id"]) == sorted(ref, key=lambda r: r["image_id"])
        # export and read back through Detectron2: the same records again
        out = tmp_path / "kp.json"
        export_coco_json(ours, ["person"], out, image_root=imgs, keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
                         skeleton=report.notes["skeleton"])
        back = load_coco_json(str(out), str(imgs), name + "_back")
        # compressed RLE counts come back as the JSON string instead of bytes: same mask
        assert _rle_as_str(back) == _rle_as_str(ref)
    finally:
        for n in (name, name + "_back"):
            MetadataCatalog.remove(n)


def _rle_as_str(records):
    out = []
    for r in sorted(records, key=lambda r: r["image_id"]):
        anns = []
        for a in r["annotations"]:
            segm = a.get("segmentation")
            if isinstance(segm, dict) and isinstance(segm["counts"], bytes):
                a = {**a, "segmentation": {**segm, "counts": segm["counts"].decode("ascii")}}
            anns.append(a)
        out.append({**r, "annotations": anns})
    return out


def test_real_registered_with_metadata(shared_data):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from converters.builtin import register_builtin_datasets

    names = register_builtin_datasets(shared_data)
    assert {"coco_kp_train", "coco_kp_val"} <= set(names)
    meta = MetadataCatalog.get("coco_kp_val")
    assert meta.keypoint_names == list(COCO_PERSON_KEYPOINT_NAMES)
    assert meta.evaluator_type == "coco" and meta.json_file.endswith("person_keypoints_val2017.json")
    assert len(meta.keypoint_flip_map) == 8 and len(meta.keypoint_connection_rules) == 19
    assert len(DatasetCatalog.get("coco_kp_val")) == 79


def test_cli_check_and_register(shared_data, tmp_path, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from converters import common
    from tools.convert import main

    base = shared_data / "coco_kp"
    name = "test_kp_cli_val"
    try:
        rc = main(["coco-keypoints", "--json", str(base / "annotations" / "person_keypoints_val2017.json"),
                   "--images", str(base / "val2017"), "--register", name, "--report",
                   str(tmp_path / "r.json"), "--no-progress"])
        assert rc == 0
        assert f"registered {name}: 79 records, 118 objects" in capsys.readouterr().out
        assert MetadataCatalog.get(name).keypoint_names == list(COCO_PERSON_KEYPOINT_NAMES)
        rep = json.loads((tmp_path / "r.json").read_text())
        assert (rep["num_images"], rep["num_annotations"], rep["num_with_keypoints"]) == (79, 118, 68)
    finally:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        common._REGISTERED.pop(name, None)
