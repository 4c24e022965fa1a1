"""Keypoint backends: the BlazePose -> COCO map, the MediaPipe backend on a drawn figure (skipped
without `make setup-pose`), and extracted files through converters.cricket and the pose mappers."""
import json

import numpy as np
import pytest
import torch

from converters.coco_keypoints import COCO_PERSON_KEYPOINT_NAMES
from d2ext.modeling.pose.backends import (BLAZEPOSE_LANDMARK_NAMES, BLAZEPOSE_TO_COCO, blazepose_to_coco,
                                          mediapipe_available)

needs_mediapipe = pytest.mark.skipif(not mediapipe_available(),
                                     reason="mediapipe==0.10.14 not installed (make setup-pose)")
IDX = {n: i for i, n in enumerate(COCO_PERSON_KEYPOINT_NAMES)}


def test_blazepose_to_coco_index_map_landmark_by_landmark():
    # BlazePose's landmark numbers of the 17 COCO keypoints, read off MediaPipe's pose landmark chart
    expected = {"nose": 0, "left_eye": 2, "right_eye": 5, "left_ear": 7, "right_ear": 8, "left_shoulder": 11,
                "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14, "left_wrist": 15, "right_wrist": 16,
                "left_hip": 23, "right_hip": 24, "left_knee": 25, "right_knee": 26, "left_ankle": 27,
                "right_ankle": 28}
    assert len(BLAZEPOSE_LANDMARK_NAMES) == 33 and len(BLAZEPOSE_TO_COCO) == 17
    for k, name in enumerate(COCO_PERSON_KEYPOINT_NAMES):
        b = BLAZEPOSE_TO_COCO[k]
        assert b == expected[name], name
        assert BLAZEPOSE_LANDMARK_NAMES[b] == name
        side = name.split("_")[0]
        if side in ("left", "right"):  # the same side, and the partner maps to the partner
            other = ("right" if side == "left" else "left") + name[len(side):]
            assert BLAZEPOSE_LANDMARK_NAMES[b].startswith(side + "_")
            assert BLAZEPOSE_LANDMARK_NAMES[BLAZEPOSE_TO_COCO[IDX[other]]] == other
    # COCO's eyes are the eye centres, not the inner / outer corners
    assert BLAZEPOSE_LANDMARK_NAMES[BLAZEPOSE_TO_COCO[IDX["left_eye"]] - 1] == "left_eye_inner"


@needs_mediapipe
def test_blazepose_names_match_mediapipe():
    from mediapipe.python.solutions.pose import PoseLandmark

    assert tuple(lm.name.lower() for lm in sorted(PoseLandmark, key=int)) == BLAZEPOSE_LANDMARK_NAMES


def test_blazepose_to_coco_values():
    lm = np.zeros((33, 4))
    lm[:, 0] = np.linspace(0.1, 0.9, 33)  # x, normalised
    lm[:, 1] = 0.5
    lm[:, 3] = 0.8
    lm[15] = [0.25, 0.75, 0.0, 0.3]  # left wrist
    lm[32] = [1.2, 0.5, 0.0, 0.1]  # right foot index, outside the image: widens the box to the edge
    out = blazepose_to_coco(lm, height=200, width=400)
    kps = np.array(out["keypoints"]).reshape(17, 3)
    assert kps[IDX["left_wrist"]].tolist() == [99.5, 149.5, 0.3]  # x * W - 0.5: COCO pixel indices
    assert kps[IDX["nose"]].tolist() == [39.5, 99.5, 0.8]
    assert kps[IDX["right_ankle"], 0] == pytest.approx(400 * lm[28, 0] - 0.5, abs=1e-3)
    assert out["score"] == pytest.approx((16 * 0.8 + 0.3) / 17, abs=1e-5)
    assert out["bbox"] == [39.5, 99.5, 399 - 39.5, 149.5 - 99.5]
    assert out["category_id"] == 1
    with pytest.raises(ValueError, match="33, 4"):
        blazepose_to_coco(lm[:17], 200, 400)


def draw_figure(width=22):
    """A frontal stick figure with a face, 360 x 480 RGB, and its drawn joints (COCO names)."""
    from PIL import Image, ImageDraw

    joints = {"left_shoulder": (215, 135), "right_shoulder": (145, 135), "left_elbow": (235, 200),
              "right_elbow": (125, 200), "left_wrist": (245, 260), "right_wrist": (115, 260),
              "left_hip": (200, 260), "right_hip": (160, 260), "left_knee": (205, 350), "right_knee": (155, 350),
              "left_ankle": (208, 440), "right_ankle": (152, 440)}
    im = Image.new("RGB", (360, 480), (70, 120, 60))
    d = ImageDraw.Draw(im)
    shirt, skin = (230, 230, 235), (220, 180, 150)
    d.polygon([joints[n] for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")], fill=shirt)
    for side in ("left", "right"):
        j = {k[len(side) + 1:]: v for k, v in joints.items() if k.startswith(side)}
        for a, b, colour in (("shoulder", "elbow", shirt), ("elbow", "wrist", skin), ("hip", "knee", shirt),
                             ("knee", "ankle", shirt)):
            d.line([j[a], j[b]], fill=colour, width=width)
    d.ellipse([150, 45, 210, 115], fill=skin)  # head, eyes, mouth
    d.ellipse([163, 68, 171, 74], fill=(30, 30, 30))
    d.ellipse([189, 68, 197, 74], fill=(30, 30, 30))
    d.line([(172, 98), (188, 98)], fill=(150, 60, 60), width=3)
    return im, joints


@needs_mediapipe
def test_mediapipe_backend_on_a_drawn_figure(tmp_path):
    from d2ext.modeling.pose.backends import build_keypoint_backend

    im, joints = draw_figure()
    im.save(tmp_path / "figure.png")
    backend = build_keypoint_backend("mediapipe")
    h, w, persons, attempt = backend(str(tmp_path / "figure.png"))
    assert (h, w) == (480, 360)
    assert len(persons) == 1 and attempt in ("original", "pad25", "pad50")
    kps = np.array(persons[0]["keypoints"]).reshape(17, 3)
    # the person's left is on the image's right in a frontal view, for every left/right pair
    for name in joints:
        if name.startswith("left_"):
            assert kps[IDX[name], 0] > kps[IDX["right_" + name[5:]], 0], name
    # every body joint within 12 % of the figure's height (395 px) of where it was drawn
    err = [np.hypot(*(kps[IDX[n], :2] - joints[n])) for n in joints]
    assert max(err) < 0.12 * 395, dict(zip(joints, np.round(err)))
    assert (kps[:, 2] >= 0).all() and (kps[:, 2] <= 1).all() and 0 < persons[0]["score"] <= 1
    x, y, bw, bh = persons[0]["bbox"]
    assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bh > 300
    blank = np.full((480, 360, 3), 90, np.uint8)  # nobody: every attempt tried, nothing found
    assert backend.detect_array(blank) == ([], None)


@needs_mediapipe
def test_mediapipe_extraction_round_trip(tmp_path, capsys, repo_root):
    """extract_keypoints --backend mediapipe -> converters.cricket -> PoseShot / FusedShot mappers."""
    from PIL import Image

    from converters.cricket import convert_cricket
    from d2ext.data.pose import FusedShotDatasetMapper, PoseShotDatasetMapper
    from d2ext.engine import setup_cfg
    from tools import extract_keypoints

    root = tmp_path / "shots"
    for folder in ("0. cut", "1. pull"):
        (root / folder).mkdir(parents=True)
    im, _ = draw_figure()
    im.save(root / "0. cut" / "1_cut_main.png")
    Image.new("RGB", (200, 150), (90, 90, 90)).save(root / "1. pull" / "2_pull_main.png")
    out = tmp_path / "kp.json"
    assert extract_keypoints.main(["--backend", "mediapipe", "--root", str(root), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    by_name = {i["file_name"]: i for i in data["images"]}
    assert set(by_name) == {"0. cut/1_cut_main.png", "1. pull/2_pull_main.png"}  # the empty image is listed
    assert by_name["1. pull/2_pull_main.png"]["attempt"] is None
    assert [a["image_id"] for a in data["annotations"]] == [by_name["0. cut/1_cut_main.png"]["id"]]
    assert data["info"]["backend"] == "mediapipe"
    assert data["categories"][0]["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES)
    # another backend's file is refused rather than mixed into
    capsys.readouterr()
    code = extract_keypoints.main(["--config-file", "x.yaml", "--weights", "w.pth", "--root", str(root),
                                   "--out", str(out)])
    assert code == 2 and "written by backend 'mediapipe'" in capsys.readouterr().err

    records = {r["relative_path"]: r for s in convert_cricket(root, keypoints_file=out)["splits"].values() for r in s}
    assert len(records["0. cut/1_cut_main.png"]["keypoints"]) == 1
    assert records["1. pull/2_pull_main.png"]["keypoints"] == []
    cfg = setup_cfg(str(repo_root / "configs/cricket/pose_shot_head.yaml"), ["MODEL.POSE_SHOT.NUM_CLASSES", "2"])
    figure = PoseShotDatasetMapper(cfg, False)(records["0. cut/1_cut_main.png"])
    assert figure["persons"].shape == (1, 17, 3)
    expected = np.array(data["annotations"][0]["keypoints"], dtype=np.float32).reshape(17, 3)
    assert torch.equal(figure["persons"][0], torch.from_numpy(expected))
    assert PoseShotDatasetMapper(cfg, False)(records["1. pull/2_pull_main.png"])["persons"].shape == (0, 17, 3)
    fcfg = setup_cfg(str(repo_root / "configs/cricket/fused_R34.yaml"), [
        "MODEL.POSE_SHOT.NUM_CLASSES", "2", "INPUT.MIN_SIZE_TEST", "64", "INPUT.CLASSIFICATION.CROP_SIZE", "64"])
    fused = FusedShotDatasetMapper(fcfg, False)(records["1. pull/2_pull_main.png"])
    assert fused["image"].shape == (3, 64, 64) and fused["persons"].shape == (0, 17, 3)
