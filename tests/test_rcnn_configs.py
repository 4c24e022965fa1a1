"""Faster / Mask / Keypoint R-CNN, RetinaNet and DeepLabv3 configs: each builds, trains 10
iterations on a tiny synthetic set through tools/train_net.py and is evaluated; plus the
instance-mask -> label-map scoring used to rank Mask R-CNN beside U-Net."""
import json

import numpy as np
import pytest
import torch

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.engine import setup_cfg
from d2ext.evaluation import build_evaluator
from d2ext.evaluation.mask_sem_seg import MaskToSemSegEvaluator, instances_to_label_map
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.structures import Instances

TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "SOLVER.MAX_ITER", "10", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(8,)", "DATALOADER.NUM_WORKERS", "0",
        "TEST.NUM_VIS_IMAGES", "0", "SEED", "0"]
SHAPES = ["DATASETS.TRAIN", '("shapes_tiny_train",)', "DATASETS.TEST", '("shapes_tiny_val",)']

CASES = {
    "faster_rcnn": ("configs/bccd/faster_rcnn_R34_FPN.yaml", SHAPES, ["bbox"]),
    "retinanet": ("configs/bccd/retinanet_R34_FPN.yaml", SHAPES, ["bbox"]),
    "mask_rcnn": ("configs/wbc_seg/mask_rcnn_R34_FPN.yaml",
                  SHAPES + ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "TEST.MASK_SEM_SEG_DATASETS", "[]",
                           # keep the barely trained model's low scores, so that masks are evaluated
                           "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
                  ["bbox", "segm"]),
    "keypoint_rcnn": ("configs/coco_keypoints/keypoint_rcnn_R34_FPN.yaml",
                      ["DATASETS.TRAIN", '("kp_tiny_train",)', "DATASETS.TEST", '("kp_tiny_val",)'],
                      ["bbox", "keypoints"]),
    "deeplabv3_binary": ("configs/wbc_seg/deeplabv3_R18_binary.yaml",
                         ["DATASETS.TRAIN", '("seg_tiny_train",)', "DATASETS.TEST", '("seg_tiny_val",)'],
                         ["sem_seg"]),
    "deeplabv3_3class": ("configs/wbc_seg/deeplabv3_R34_3class.yaml",
                         ["DATASETS.TRAIN", '("seg3_tiny_train",)', "DATASETS.TEST", '("seg3_tiny_val",)'],
                         ["sem_seg"]),
}


def _last_metrics(out_dir):
    """Every record of Detectron2's metrics.json (one per logged iteration)."""
    lines = (out_dir / "metrics.json").read_text().strip().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_trains_10_iterations_and_evaluates(case, run_tool, tmp_path):
    config, data, tasks = CASES[case]
    out = tmp_path / case
    proc = run_tool("train_net.py", "--config-file", config, *data, *TINY, "OUTPUT_DIR", str(out))
    assert (out / "model_final.pth").is_file()
    records = _last_metrics(out)
    iters = [r["iteration"] for r in records if "total_loss" in r]
    assert iters and iters[-1] == 9
    assert all(np.isfinite(r["total_loss"]) for r in records if "total_loss" in r)
    log = proc.stdout + proc.stderr
    for task in tasks:  # Detectron2 prints "copypaste: Task: <task>" per evaluated task
        assert f"copypaste: Task: {task}" in log, f"{case}: no {task} evaluation in the log"


def test_configs_set_paper_values():
    cfg = setup_cfg("configs/bccd/retinanet_R34_FPN.yaml")
    assert (cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA) == (0.25, 2.0)
    cfg = setup_cfg("configs/wbc_seg/deeplabv3_R34_binary.yaml")
    assert list(cfg.MODEL.DEEPLAB.ASPP_DILATIONS) == [6, 12, 18]
    assert (cfg.MODEL.RESNETS.RES4_DILATION, cfg.MODEL.RESNETS.RES5_DILATION) == (1, 2)  # stride 16
    cfg = setup_cfg("configs/coco_keypoints/keypoint_rcnn_R34_FPN.yaml")
    assert len(cfg.TEST.KEYPOINT_OKS_SIGMAS) == cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == 17
    for path in ("configs/bccd/faster_rcnn_R34_FPN.yaml", "configs/wbc_seg/mask_rcnn_R34_FPN.yaml"):
        cfg = setup_cfg(path)
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0


def _instances(masks, scores, classes, size):
    inst = Instances(size)
    inst.pred_masks = torch.as_tensor(np.array(masks), dtype=torch.bool)
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def test_instances_to_label_map_paints_by_score():
    a = np.zeros((3, 4), bool)
    a[:2, :2] = True
    b = np.zeros((3, 4), bool)
    b[1:, 1:3] = True
    c = np.ones((3, 4), bool)
    # b (0.9, class 1) wins over a (0.6, class 0) where they overlap; c is below the threshold.
    labels = instances_to_label_map(_instances([a, b, c], [0.6, 0.9, 0.3], [0, 1, 2], (3, 4)), 0.5)
    np.testing.assert_array_equal(labels, [[1, 1, 0, 0], [1, 2, 2, 0], [0, 2, 2, 0]])
    assert instances_to_label_map(_instances(np.zeros((0, 3, 4)), [], [], (3, 4))).sum() == 0


def test_mask_sem_seg_evaluator_scores_against_sem_seg_labels():
    from PIL import Image

    records = DatasetCatalog.get("seg_tiny_val")
    ev = MaskToSemSegEvaluator("seg_tiny_val", distributed=False)
    ev.reset()
    for i, rec in enumerate(records):
        gt = np.asarray(Image.open(rec["sem_seg_file_name"])) == 1
        if i == 0:  # miss the object in the first image entirely
            masks, scores = np.zeros((0,) + gt.shape), []
        else:
            masks, scores = gt[None], [0.99]
        ev.process([{"file_name": rec["file_name"]}], [{"instances": _instances(masks, scores, [0] * len(scores), gt.shape)}])
    res = ev.evaluate()["mask_sem_seg"]
    n_fg = [int((np.asarray(Image.open(r["sem_seg_file_name"])) == 1).sum()) for r in records]
    tp, fn = sum(n_fg[1:]), n_fg[0]
    assert res["Dice-circle"] == pytest.approx(100 * 2 * tp / (2 * tp + fn))
    assert res["IoU-circle"] == pytest.approx(100 * tp / (tp + fn))


def test_build_evaluator_adds_mask_sem_seg_from_config(tmp_path):
    opts = ["TEST.MASK_SEM_SEG_DATASETS", '["seg_tiny_val"]', "TEST.NUM_VIS_IMAGES", "0"]
    cfg = setup_cfg("configs/wbc_seg/mask_rcnn_R34_FPN.yaml", ["DATASETS.TEST", '("kp_tiny_val",)'] + opts)
    ev = build_evaluator(cfg, "kp_tiny_val", str(tmp_path))
    assert isinstance(ev, DatasetEvaluators)
    assert [type(e).__name__ for e in ev._evaluators] == ["COCOEvaluator", "MaskToSemSegEvaluator"]
    # shapes has 3 thing classes, seg_tiny_val background + 1: the pairing is refused clearly
    cfg = setup_cfg("configs/wbc_seg/mask_rcnn_R34_FPN.yaml", ["DATASETS.TEST", '("shapes_tiny_val",)'] + opts)
    with pytest.raises(ValueError, match="thing classes"):
        build_evaluator(cfg, "shapes_tiny_val", str(tmp_path))


def test_tiny_keypoint_set_has_coco_person_layout():
    from detectron2.data import MetadataCatalog

    records = DatasetCatalog.get("kp_tiny_val")
    meta = MetadataCatalog.get("kp_tiny_val")
    assert len(records) == 8 and len(meta.keypoint_names) == 17 and meta.evaluator_type == "coco"
    assert ("left_wrist", "right_wrist") in [tuple(p) for p in meta.keypoint_flip_map]
    for rec in records:
        for ann in rec["annotations"]:
            kp = np.array(ann["keypoints"]).reshape(17, 3)
            x0, y0, x1, y1 = ann["bbox"]
            assert (kp[:, 2] == 2).all()
            assert (kp[:, 0] >= x0).all() and (kp[:, 0] <= x1).all() and (kp[:, 1] >= y0).all() and (kp[:, 1] <= y1).all()
