"""YOLO v1/v2/v3: target assignment, box coding, anchor clustering, training behaviour."""
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, Instances

from d2ext.data.synthetic import generate_shapes
from d2ext.modeling.backbone.darknet import Darknet19, Darknet53, YOLOv1Net
from d2ext.modeling.meta_arch.yolo import (
    YOLOV1, YOLOV2, YOLOV3, YOLOV1Head, YOLOV2Head, YOLOV3Head,
)
from d2ext.modeling.meta_arch.yolo_utils import (
    YoloBoxTransform,
    YoloV1BoxTransform,
    assign_anchor_targets,
    assign_grid_cells,
    kmeans_anchors,
    wh_iou,
)

torch.set_num_threads(1)

# One level, stride 32 on a 128x128 input (4x4 grid), three anchors.
ANCHORS_1L = [torch.tensor([[16.0, 16.0], [32.0, 32.0], [64.0, 64.0]])]


def _assign(boxes, anchors=ANCHORS_1L, strides=(32,), grids=((4, 4),)):
    return assign_anchor_targets(torch.tensor(boxes, dtype=torch.float32), anchors, strides, grids)


# ----- assignment ------------------------------------------------------------------------------
def test_box_centre_on_cell_boundary_goes_to_the_next_cell():
    a = _assign([[16, 16, 48, 48]])  # centre (32, 32): the corner shared by cells 0 and 1
    assert a.cell.tolist() == [[1, 1]]
    assert a.anchor.tolist() == [1]  # 32x32 box, 32x32 anchor
    assert a.slot.tolist() == [(1 * 4 + 1) * 3 + 1]
    d = YoloBoxTransform.get_deltas(torch.tensor([[16.0, 16, 48, 48]]), a.cell.float(),
                                    torch.tensor([32.0]), ANCHORS_1L[0][a.anchor])
    assert d.tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_box_centre_on_far_border_is_clamped_into_the_grid():
    a = _assign([[127.5, 96, 128.5, 160]])  # centre x = 128 = image width, y = 128
    assert a.cell.tolist() == [[3, 3]]
    d = YoloBoxTransform.get_deltas(torch.tensor([[127.5, 96, 128.5, 160]]), a.cell.float(),
                                    torch.tensor([32.0]), ANCHORS_1L[0][a.anchor])
    assert d[0, :2].tolist() == [1.0, 1.0]


def test_two_boxes_in_one_cell_with_different_shapes_get_their_best_anchors():
    a = _assign([[0, 0, 14, 14], [0, 0, 30, 30]])  # both centred in cell (0, 0)
    assert a.gt_index.tolist() == [0, 1]
    assert a.anchor.tolist() == [0, 1]
    assert a.cell.tolist() == [[0, 0], [0, 0]]
    assert a.num_unplaced == 0


def test_two_boxes_competing_for_one_anchor_the_worse_takes_its_next_best():
    # Both prefer the 32x32 anchor of cell (0, 0); the 30x30 box matches it better (IoU 0.879
    # vs 0.820), so the 30x28 box takes its second choice, 16x16 (IoU 0.305 > 0.205 for 64x64).
    a = _assign([[2, 2, 32, 30], [0, 0, 30, 30]])
    got = dict(zip(a.gt_index.tolist(), a.anchor.tolist()))
    assert got == {1: 1, 0: 0}
    assert a.num_unplaced == 0


def test_more_boxes_in_a_cell_than_anchors_are_counted_not_hidden():
    a = _assign([[0, 0, 30, 30]] * 4)
    assert len(a) == 3 and a.num_unplaced == 1
    assert sorted(a.slot.tolist()) == [0, 1, 2]


def test_box_smaller_than_every_anchor_takes_the_smallest():
    a = _assign([[50, 50, 54, 54]])
    assert a.anchor.tolist() == [0] and a.cell.tolist() == [[1, 1]]
    d = YoloBoxTransform.get_deltas(torch.tensor([[50.0, 50, 54, 54]]), a.cell.float(),
                                    torch.tensor([32.0]), torch.tensor([[16.0, 16.0]]))
    torch.testing.assert_close(d, torch.tensor([[0.625, 0.625, math.log(0.25), math.log(0.25)]]))


def test_multi_level_assignment_picks_level_and_flat_slot():
    anchors = [torch.tensor([[8.0, 8.0]]), torch.tensor([[16.0, 16.0]]), torch.tensor([[32.0, 32.0]])]
    a = assign_anchor_targets(torch.tensor([[20.0, 4, 28, 12], [0, 0, 30, 34]]), anchors,
                              (8, 16, 32), ((8, 8), (4, 4), (2, 2)))
    assert a.level.tolist() == [0, 2]
    # level 0: cell (3, 1) -> 1*8+3 = 11; level 2 offset = 64 + 16, cell (0, 0) -> 80
    assert a.slot.tolist() == [11, 80]


def test_v1_grid_cells():
    cells = assign_grid_cells(torch.tensor([[0.0, 0, 10, 10], [60, 60, 68, 68], [440, 440, 448, 448]]),
                              (7, 7), (448, 448))
    assert cells.tolist() == [[0, 0], [1, 1], [6, 6]]  # centre 64 = 1 * 64 starts cell 1


# ----- box coding ------------------------------------------------------------------------------
def test_decode_encode_round_trip_v2v3_and_v1():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    wh = torch.rand(50, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    anchors = [torch.tensor([[10.0, 13], [16, 30], [33, 23]]), torch.tensor([[62.0, 45], [59, 119]])]
    a = assign_anchor_targets(boxes, anchors, (8, 16), ((20, 20), (10, 10)))
    assert len(a) == 50
    strides = torch.tensor([8.0, 16.0])[a.level]
    anc = torch.stack([anchors[lv][ai] for lv, ai in zip(a.level.tolist(), a.anchor.tolist())])
    d = YoloBoxTransform.get_deltas(boxes[a.gt_index], a.cell.float(), strides, anc)
    assert ((d[:, :2] >= 0) & (d[:, :2] <= 1)).all()
    torch.testing.assert_close(YoloBoxTransform.apply_deltas(d, a.cell.float(), strides, anc),
                               boxes[a.gt_index])

    cells = assign_grid_cells(boxes, (7, 7), (160, 224))
    d1 = YoloV1BoxTransform.get_deltas(boxes, cells.float(), (224 / 7, 160 / 7), (160, 224))
    torch.testing.assert_close(
        YoloV1BoxTransform.apply_deltas(d1, cells.float(), (224 / 7, 160 / 7), (160, 224)), boxes)


# ----- anchors ---------------------------------------------------------------------------------
def test_wh_iou_exact():
    torch.testing.assert_close(wh_iou(torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 4.0], [2.0, 2.0]])),
                               torch.tensor([[2.0 / 6.0, 1.0]]))


def test_kmeans_recovers_two_exact_clusters_and_is_seeded():
    wh = torch.tensor([[10.0, 10.0]] * 30 + [[40.0, 80.0]] * 20)
    anchors, mean_iou = kmeans_anchors(wh, k=2, seed=3)
    assert anchors.tolist() == [[10.0, 10.0], [40.0, 80.0]] and mean_iou == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    rnd = torch.rand(200, 2, generator=g) * 100 + 1
    a1, m1 = kmeans_anchors(rnd, 5, seed=7)
    a2, m2 = kmeans_anchors(rnd, 5, seed=7)
    assert torch.equal(a1, a2) and m1 == m2
    areas = (a1[:, 0] * a1[:, 1]).tolist()
    assert areas == sorted(areas) and 0.5 < m1 < 1.0


# ----- architectures ---------------------------------------------------------------------------
def _tiny_v3(num_classes=3, anchors=None):
    feats = ["dark3", "dark4", "dark5"]
    bb = Darknet53(feats, stage_blocks=(1, 1, 1, 1, 1), width_mult=0.25)
    shapes = bb.output_shape()
    anchors = anchors or [[[6, 6], [10, 12], [14, 10]], [[20, 20], [28, 22], [22, 30]],
                          [[40, 40], [56, 48], [70, 70]]]
    head = YOLOV3Head(in_channels=[shapes[f].channels for f in feats], num_anchors=[len(a) for a in anchors],
                      num_classes=num_classes)
    return YOLOV3(backbone=bb, head=head, head_in_features=feats, anchors=anchors,
                  num_classes=num_classes)


def _tiny_v2(num_classes=3):
    feats = ["dark4", "dark5"]
    bb = Darknet19(feats, width_mult=0.125)
    shapes = bb.output_shape()
    anchors = [[[8, 8], [16, 20], [24, 16], [36, 36], [56, 56]]]
    head = YOLOV2Head(in_channels=[shapes[f].channels for f in feats], num_anchors=5, num_classes=num_classes)
    return YOLOV2(backbone=bb, head=head, head_in_features=feats, anchors=anchors,
                  num_classes=num_classes, ignore_thresh=0.6)


def _tiny_v1(num_classes=3, grid=2):
    bb = YOLOv1Net(("dark6",), variant="fast", width_mult=0.125)
    head = YOLOV1Head(in_channels=bb.output_shape()["dark6"].channels, grid_size=grid, boxes_per_cell=2,
                      num_classes=num_classes, fc_dim=64, dropout=0.0)
    return YOLOV1(backbone=bb, head=head, head_in_features=["dark6"], num_classes=num_classes)


def test_yolov3_80_class_parameter_count():
    # Darknet's yolov3.cfg has 61,949,149 parameters (Redmon & Farhadi 2018: "about 62M").
    feats = ["dark3", "dark4", "dark5"]
    bb = Darknet53(feats)
    shapes = bb.output_shape()
    assert [shapes[f].stride for f in feats] == [8, 16, 32]
    assert [shapes[f].channels for f in feats] == [256, 512, 1024]
    head = YOLOV3Head(in_channels=[shapes[f].channels for f in feats], num_anchors=[3, 3, 3], num_classes=80)
    n = sum(p.numel() for p in bb.parameters()) + sum(p.numel() for p in head.parameters())
    assert n == 61_949_149


def test_output_shapes_v3_v2_v1():
    m3 = _tiny_v3(num_classes=20).eval()
    feats = m3.backbone(torch.zeros(1, 3, 416, 416))
    outs = m3.head([feats[f] for f in m3.head_in_features])
    assert [tuple(o.shape) for o in outs] == [(1, 75, 52, 52), (1, 75, 26, 26), (1, 75, 13, 13)]

    m2 = _tiny_v2(num_classes=20).eval()
    feats = m2.backbone(torch.zeros(1, 3, 416, 416))
    (out,) = m2.head([feats[f] for f in m2.head_in_features])
    assert tuple(out.shape) == (1, 5 * 25, 13, 13)  # passthrough 26x26 -> 13x13

    bb = YOLOv1Net(("dark6",), variant="fast", width_mult=0.125)
    head = YOLOV1Head(in_channels=bb.output_shape()["dark6"].channels, grid_size=7, boxes_per_cell=2,
                      num_classes=20, fc_dim=32)
    f = bb(torch.zeros(1, 3, 448, 448))["dark6"]
    assert tuple(f.shape[-2:]) == (7, 7)
    assert tuple(head([f]).shape) == (1, 7, 7, 30)  # the paper's 7x7x30
    assert YOLOv1Net(variant="full").num_convs == 24 and bb.num_convs == 9


def test_freeze_at():
    bb = Darknet53(("dark3",), stage_blocks=(1, 1, 1, 1, 1), width_mult=0.25).freeze(2)
    assert not any(p.requires_grad for p in bb.stages["stem"].parameters())
    assert not any(p.requires_grad for p in bb.stages["dark1"].parameters())
    assert all(p.requires_grad for p in bb.stages["dark2"].parameters())


# ----- training --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_batch(tmp_path_factory):
    """8 synthetic 64x64 images with 1-3 shapes each, as model inputs (RGB, CHW float)."""
    records = generate_shapes(8, image_size=64, seed=5, max_objects=3,
                              root=str(tmp_path_factory.mktemp("shapes")))
    batch = []
    for r in records:
        img = utils.read_image(r["file_name"], format="RGB")
        inst = utils.annotations_to_instances(r["annotations"], img.shape[:2])
        batch.append({"image": torch.as_tensor(img.transpose(2, 0, 1).copy()).float(), "instances": inst})
    return batch


def _train(model, batch, iters=30, lr=1e-3):
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    totals = []
    for _ in range(iters):
        losses = model(batch)
        total = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    return totals


@pytest.mark.parametrize("build", [_tiny_v3, _tiny_v2, _tiny_v1], ids=["v3", "v2", "v1"])
def test_loss_finite_and_decreasing(build, tiny_batch):
    torch.manual_seed(0)
    model = build()
    batch = tiny_batch
    if build is _tiny_v1:  # stride 64: 128 px gives a 2x2 map and grid
        batch = [dict(b, image=torch.nn.functional.interpolate(b["image"][None], scale_factor=2)[0],
                      instances=Instances((128, 128), gt_boxes=Boxes(b["instances"].gt_boxes.tensor * 2),
                                          gt_classes=b["instances"].gt_classes)) for b in batch]
    totals = _train(model, batch)
    assert np.mean(totals[-5:]) < 0.6 * np.mean(totals[:5]), totals
    model.eval()
    model.score_thresh = 0.0  # 30 steps are too few for confident scores; exercise NMS anyway
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 32, "width": 32}])
    inst = out[0]["instances"]
    assert inst.image_size == (32, 32) and 0 < len(inst) <= 100  # rescaled to the requested size
    assert (inst.pred_boxes.tensor >= 0).all() and (inst.pred_boxes.tensor <= 32).all()
    assert torch.isfinite(inst.pred_boxes.tensor).all()


def test_700_box_image_trains_without_dropping_any(tmp_path):
    # A 256x256 image with 700 8x8 boxes on a 9-px lattice (28 x 25): every centre in its own
    # stride-8 cell. Goes through Detectron2's DatasetMapper like real data.
    path = tmp_path / "crowd.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(path)
    annos = [{"bbox": [9 * i, 9 * j, 9 * i + 8, 9 * j + 8], "bbox_mode": 0, "category_id": (i + j) % 3,
              "iscrowd": 0} for j in range(25) for i in range(28)]
    assert len(annos) == 700
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    inp = mapper({"file_name": str(path), "height": 256, "width": 256, "image_id": 0, "annotations": annos})
    assert len(inp["instances"]) == 700
    model = _tiny_v3(anchors=[[[8, 8], [12, 12], [16, 16]], [[24, 24], [32, 32], [40, 40]],
                              [[64, 64], [96, 96], [128, 128]]])
    a = assign_anchor_targets(inp["instances"].gt_boxes.tensor, model.anchors, model.strides,
                              [(32, 32), (16, 16), (8, 8)])
    assert len(a) == 700 and a.num_unplaced == 0 and len(set(a.slot.tolist())) == 700
    totals = _train(model, [inp], iters=3)
    assert model.num_unplaced_objects == 0 and all(math.isfinite(t) for t in totals)


def test_degenerate_boxes_are_filtered_with_a_warning_never_nan(tiny_batch, caplog):
    for build in (_tiny_v3, _tiny_v2, _tiny_v1):
        torch.manual_seed(0)
        model = build().train()
        img = tiny_batch[0]["image"]
        if build is _tiny_v1:
            img = torch.nn.functional.interpolate(img[None], size=(128, 128))[0]
        good = torch.tensor([[10.0, 12.0, 40.0, 44.0]])
        bad = torch.tensor([[20.0, 20.0, 20.0, 30.0], [5.0, 5.0, 3.0, 9.0], [float("nan"), 1.0, 4.0, 4.0]])
        clean = Instances(img.shape[-2:], gt_boxes=Boxes(good), gt_classes=torch.tensor([1]))
        dirty = Instances(img.shape[-2:], gt_boxes=Boxes(torch.cat([good, bad])),
                          gt_classes=torch.tensor([1, 0, 2, 0]))
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            loss_dirty = model([{"image": img, "instances": dirty}])
        assert "ignored 3 degenerate" in caplog.text
        loss_clean = model([{"image": img, "instances": clean}])
        for k in loss_clean:
            assert torch.isfinite(loss_dirty[k])
            torch.testing.assert_close(loss_dirty[k], loss_clean[k])


# ----- configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["bccd/yolov3", "bccd/yolov2", "bccd/yolov1", "widerface/yolov3"])
def test_configs_build(config, repo_root):
    from detectron2.modeling import build_model

    from d2ext.engine import setup_cfg

    cfg = setup_cfg(str(repo_root / "configs" / f"{config}.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    arch = {"yolov3": YOLOV3, "yolov2": YOLOV2, "yolov1": YOLOV1}[config.split("/")[1]]
    assert type(model) is arch and model.num_classes == cfg.MODEL.YOLO.NUM_CLASSES
    if arch is not YOLOV1:
        assert [a.tolist() for a in model.anchors] == [
            [list(map(float, wh)) for wh in level] for level in cfg.MODEL.YOLO.ANCHORS]


@pytest.mark.slow
def test_train_net_runs_yolov3_config_on_tiny_shapes(run_tool, repo_root, tmp_path):
    """tools/train_net.py trains and evaluates the BCCD YOLOv3 config (on synthetic data)."""
    proc = run_tool(
        "train_net.py", "--config-file", "configs/bccd/yolov3.yaml",
        "DATASETS.TRAIN", "('shapes_tiny_train',)", "DATASETS.TEST", "('shapes_tiny_val',)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(3,)",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
    )
    assert (tmp_path / "out" / "inference" / "shapes_tiny_val" / "coco_instances_results.json").exists()
    assert "copypaste: AP,AP50" in proc.stdout + proc.stderr  # COCOEvaluator ran to the end


# ----- tools/anchors.py ------------------------------------------------------------------------
def test_anchors_tool_on_synthetic_dataset(run_tool):
    proc = run_tool("anchors.py", "--dataset", "shapes_tiny_train", "--input-size", "64",
                    "--k", "4", "--levels", "2", "--seed", "1")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("ANCHORS:")]
    assert len(lines) == 1
    anchors = __import__("yaml").safe_load(lines[0])["ANCHORS"]
    assert len(anchors) == 2 and all(len(level) == 2 for level in anchors)
    areas = [w * h for level in anchors for w, h in level]
    assert areas == sorted(areas) and all(0 < w <= 64 and 0 < h <= 64 for lv in anchors for w, h in lv)
    assert "mean IoU of boxes with their best anchor" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", ["bccd/yolov3", "bccd/yolov2"])
def test_config_anchors_are_what_the_tool_computes(config, shared_data, run_tool, repo_root):
    """The YAML says its anchors come from tools/anchors.py: rerun the command it quotes."""
    import shlex

    import yaml

    text = (repo_root / "configs" / f"{config}.yaml").read_text()
    cmd = next(l.split("tools/anchors.py", 1)[1] for l in text.splitlines() if "tools/anchors.py" in l)
    proc = run_tool("anchors.py", *shlex.split(cmd), env={"D2EXT_SHARED_DATA": str(shared_data)})
    line = next(l for l in proc.stdout.splitlines() if l.startswith("ANCHORS:"))
    assert yaml.safe_load(line)["ANCHORS"] == yaml.safe_load(text)["MODEL"]["YOLO"]["ANCHORS"]
