"""YOLO v1/v2/v3 losses pinned to the number on hand-made cases.

Every expected value is written out below from the papers' formulas (and the class docstrings of
``d2ext/modeling/meta_arch/yolo.py``), with plain ``math``; nothing is computed by the model code.
Layout of the anchor cases: a 64x64 input, one stride-32 level (2x2 grid), anchors 16x16 and
32x32, K = 2 classes; flat slot = (gy * 2 + gx) * 2 + anchor.
"""
import math

import pytest
import torch

from detectron2.structures import Boxes, ImageList, Instances

from d2ext.modeling.backbone.darknet import Darknet19, Darknet53
from d2ext.modeling.meta_arch.yolo import YOLOV1, YOLOV2, YOLOV3, YOLOV1Head

K = 2
ANCHORS = [[[16, 16], [32, 32]]]
IMAGES = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])


def sig(x):
    return 1 / (1 + math.exp(-x))


def bce(p, t):
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def softplus(x):  # BCE(sigmoid(x), 0)
    return math.log1p(math.exp(x))


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _anchor_model(version):
    if version == "v3":
        bb = Darknet53(("dark5",), stage_blocks=(1, 1, 1, 1, 1), width_mult=0.125)
        return YOLOV3(backbone=bb, head=torch.nn.Identity(), head_in_features=["dark5"], anchors=ANCHORS,
                      num_classes=K, ignore_thresh=0.5)
    bb = Darknet19(("dark4", "dark5"), width_mult=0.125)
    return YOLOV2(backbone=bb, head=torch.nn.Identity(), head_in_features=["dark4", "dark5"],
                  anchors=ANCHORS, num_classes=K, ignore_thresh=0.5)


def _instances(boxes, classes, size=(64, 64)):
    return Instances(size, gt_boxes=Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
                     gt_classes=torch.as_tensor(classes, dtype=torch.long))


def _anchor_predictions(slots):
    """(1, A*(5+K), 2, 2) raw outputs: every slot's objectness logit -2 unless ``slots`` (a dict
    flat slot -> 7 values tx, ty, tw, th, to, c0, c1) says otherwise."""
    per_slot = torch.zeros(2, 2, 2, 5 + K)  # (gy, gx, a, 5 + K)
    per_slot[..., 4] = -2.0
    for s, values in slots.items():
        gy, rest = divmod(s, 4)
        gx, a = divmod(rest, 2)
        per_slot[gy, gx, a] = torch.tensor(values)
    # (H, W, A, 5+K) -> (A*(5+K), H, W), the layout permute_to_N_HWA_K undoes
    return [per_slot.permute(2, 3, 0, 1).reshape(1, 2 * (5 + K), 2, 2)]


# Object A: [8, 8, 40, 40], class 1; centre (24, 24) -> cell (0, 0); 32x32 -> anchor 1 -> slot 1.
# Targets: offsets 24/32 = 0.75, log-scales 0; box weight 2 - 32*32/(64*64) = 1.75.
A_PRED = [0.3, -0.2, 0.1, -0.4, 0.7, 0.2, -0.5]
# Slot 3 (cell (1, 0), anchor 32): tx = -3, ty = log 3 decodes to centre (32 + 32 sig(-3), 24),
# size 32x32: IoU with A = 0.5415 > 0.5, so it is ignored (no no-object loss), not a negative.
IGNORED_PRED = [-3.0, math.log(3.0), 0.0, 0.0, 1.5, 0.0, 0.0]
# Object B: [36, 36, 52, 52], class 0; centre (44, 44) -> cell (1, 1); 16x16 -> anchor 0 -> slot 6.
# Targets: offsets 44/32 - 1 = 0.375, log-scales 0; weight 2 - 256/4096 = 1.9375.
B_PRED = [0.5, 1.0, -0.3, 0.2, -0.1, 0.8, 0.4]


def _class_loss(version, logits, cls):
    if version == "v3":  # independent sigmoids, BCE per class
        return sum(bce(sig(z), float(c == cls)) for c, z in enumerate(logits))
    return -math.log(math.exp(logits[cls]) / sum(math.exp(z) for z in logits))  # softmax CE


def _expected_positive(version, pred, offsets, weight, cls):
    tx, ty, tw, th, to, *logits = pred
    return {
        "loss_box_xy": weight * (bce(sig(tx), offsets[0]) + bce(sig(ty), offsets[1])),
        "loss_box_wh": weight * 0.5 * (tw**2 + th**2),  # log-scale targets are 0
        "loss_obj": bce(sig(to), 1.0),
        "loss_cls": _class_loss(version, logits, cls),
    }


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_anchor_yolo_one_object_every_term(version):
    model = _anchor_model(version)
    preds = _anchor_predictions({1: A_PRED, 3: IGNORED_PRED})
    # the ignored box really overlaps A by more than the threshold
    cx = 32 + 32 * sig(-3.0)
    assert iou([cx - 16, 8, cx + 16, 40], [8, 8, 40, 40]) == pytest.approx(0.5415, abs=1e-4)
    losses = model.forward_training(IMAGES, None, preds, [_instances([[8, 8, 40, 40]], [1])])
    expected = _expected_positive(version, A_PRED, (0.75, 0.75), 1.75, 1)
    # negatives: the 6 slots other than 1 (positive) and 3 (ignored), all with logit -2
    expected["loss_noobj"] = 6 * softplus(-2.0)
    assert set(losses) == set(expected)
    for k, v in expected.items():
        assert float(losses[k]) == pytest.approx(v, rel=1e-5), k


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_anchor_yolo_two_objects_every_term(version):
    model = _anchor_model(version)
    preds = _anchor_predictions({1: A_PRED, 3: IGNORED_PRED, 6: B_PRED})
    gt = _instances([[8, 8, 40, 40], [36, 36, 52, 52]], [1, 0])
    losses = model.forward_training(IMAGES, None, preds, [gt])
    ea = _expected_positive(version, A_PRED, (0.75, 0.75), 1.75, 1)
    eb = _expected_positive(version, B_PRED, (0.375, 0.375), 2 - 256 / 4096, 0)
    expected = {k: ea[k] + eb[k] for k in ea}
    # Slot 7 (cell (1, 1), anchor 32, box [32, 32, 64, 64]) overlaps B by 256/1024 = 0.25: still
    # a negative. Negatives: 8 slots - 2 positives - 1 ignored.
    assert iou([32, 32, 64, 64], [36, 36, 52, 52]) == 0.25
    expected["loss_noobj"] = 5 * softplus(-2.0)
    for k, v in expected.items():
        assert float(losses[k]) == pytest.approx(v, rel=1e-5), k


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_anchor_yolo_batch_of_two_is_the_mean(version):
    """Sums over the batch divided by the batch size: an empty second image halves the positive
    terms and adds its 8 negatives."""
    model = _anchor_model(version)
    one = _anchor_predictions({1: A_PRED, 3: IGNORED_PRED})[0]
    empty = _anchor_predictions({})[0]
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64)] * 2)
    losses = model.forward_training(images, None, [torch.cat([one, empty])],
                                    [_instances([[8, 8, 40, 40]], [1]), _instances([], [])])
    expected = _expected_positive(version, A_PRED, (0.75, 0.75), 1.75, 1)
    expected = {k: v / 2 for k, v in expected.items()}
    expected["loss_noobj"] = (6 + 8) * softplus(-2.0) / 2
    for k, v in expected.items():
        assert float(losses[k]) == pytest.approx(v, rel=1e-5), k


def test_anchor_assignment_slots_through_label_anchors():
    """Cell boundary, two objects in one cell, an object smaller than every anchor: exact slots."""
    model = _anchor_model("v3")
    preds = _anchor_predictions({})
    pred, cells, strides, anchors, sizes = model._flatten(preds)
    boxes = model._decode(pred, cells, strides, anchors)
    gt = _instances([
        [16, 16, 48, 48],  # centre (32, 32) on the corner of 4 cells -> cell (1, 1); anchor 32 -> slot 7
        [2, 2, 14, 14],    # centre (8, 8) -> cell (0, 0), 12x12 -> anchor 16 -> slot 0
        [0, 0, 30, 30],    # centre (15, 15) -> cell (0, 0) too, 30x30 -> anchor 32 -> slot 1
        [60, 4, 62, 6],    # 2x2, smaller than every anchor: centre (61, 5) -> cell (1, 0), anchor 16 -> slot 2
    ], [0, 1, 0, 1])
    t = model.label_anchors(boxes, cells, strides, anchors, sizes, [gt], (64, 64))
    assert t.slot.tolist() == [7, 0, 1, 2]
    assert t.classes.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(t.deltas[3], torch.tensor([61 / 32 - 1, 5 / 32, math.log(2 / 16), math.log(2 / 16)]))
    torch.testing.assert_close(t.deltas[0], torch.tensor([0.0, 0.0, 0.0, 0.0]))


# ----- YOLOv1 ----------------------------------------------------------------------------------
# 64x64 input, S = 2 (cells of 32 px), B = 2, K = 2. Per cell: (x, y, sqrt w, sqrt h, C) x 2, then
# the 2 class outputs; flat predictor = (gy * 2 + gx) * 2 + b.
V1_BOX0 = [0.5, 0.5, 0.5, 0.5, 0.3]  # decodes to centre (16, 16), 16x16: [8, 8, 24, 24]
V1_BOX1 = [0.7, 0.8, 0.4, 0.4, 0.9]  # centre (22.4, 25.6), 10.24x10.24
V1_CLS = [0.2, 0.6]
OTHER_CONF = 0.1  # confidence of the 6 predictors of the other three cells


def _v1_model():
    head = YOLOV1Head(in_channels=8, grid_size=2, boxes_per_cell=2, num_classes=K, fc_dim=4, dropout=0.0)
    bb = Darknet19(("dark5",), width_mult=0.125)
    return YOLOV1(backbone=bb, head=head, head_in_features=["dark5"], num_classes=K)


def _v1_predictions():
    p = torch.zeros(1, 2, 2, 5 * 2 + K)
    p[..., 4] = OTHER_CONF
    p[..., 9] = OTHER_CONF
    p[0, 0, 0] = torch.tensor(V1_BOX0 + V1_BOX1 + V1_CLS)
    return p


def _box1():
    cx, cy, w = 22.4, 25.6, 0.4**2 * 64
    return [cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2]


def test_yolov1_one_object_every_term():
    model = _v1_model()
    gt = [8.0, 8.0, 40.0, 40.0]  # class 1, centre (24, 24) -> cell (0, 0)
    iou0, iou1 = iou([8, 8, 24, 24], gt), iou(_box1(), gt)
    assert (iou0, round(iou1, 4)) == (0.25, 0.1024)  # predictor 0 is responsible
    losses = model.forward_training(IMAGES, None, _v1_predictions(), [_instances([gt], [1])])
    lc, ln = 5.0, 0.5
    expected = {
        "loss_box_xy": lc * ((0.5 - 0.75) ** 2 + (0.5 - 0.75) ** 2),
        "loss_box_wh": lc * 2 * (0.5 - math.sqrt(32 / 64)) ** 2,
        "loss_conf": (0.3 - iou0) ** 2,
        "loss_noobj": ln * (0.9**2 + 6 * OTHER_CONF**2),
        "loss_cls": (0.2 - 0) ** 2 + (0.6 - 1) ** 2,
    }
    assert set(losses) == set(expected)
    for k, v in expected.items():
        assert float(losses[k]) == pytest.approx(v, rel=1e-5), k


def test_yolov1_two_objects_in_one_cell_every_term():
    model = _v1_model()
    a, b = [8.0, 8.0, 40.0, 40.0], [18.0, 20.0, 28.0, 30.0]  # classes 1, 0; both centres in cell (0, 0)
    # a prefers predictor 0 (0.25 > 0.1024); b prefers predictor 1 (0.793 > 0.072)
    assert iou(_box1(), b) > 0.79 and iou([8, 8, 24, 24], b) < 0.08
    losses = model.forward_training(IMAGES, None, _v1_predictions(), [_instances([a, b], [1, 0])])
    lc, ln = 5.0, 0.5
    tb = (23 / 32, 25 / 32, math.sqrt(10 / 64), math.sqrt(10 / 64))
    expected = {
        "loss_box_xy": lc * (2 * 0.25**2 + (0.7 - tb[0]) ** 2 + (0.8 - tb[1]) ** 2),
        "loss_box_wh": lc * (2 * (0.5 - math.sqrt(0.5)) ** 2 + (0.4 - tb[2]) ** 2 + (0.4 - tb[3]) ** 2),
        "loss_conf": (0.3 - iou([8, 8, 24, 24], a)) ** 2 + (0.9 - iou(_box1(), b)) ** 2,
        "loss_noobj": ln * 6 * OTHER_CONF**2,
        # class target of the cell: the mean one-hot of its two objects, (0.5, 0.5)
        "loss_cls": (0.2 - 0.5) ** 2 + (0.6 - 0.5) ** 2,
    }
    for k, v in expected.items():
        assert float(losses[k]) == pytest.approx(v, rel=1e-5), k


def test_yolov1_object_on_cell_boundary_goes_to_the_next_cell():
    model = _v1_model()
    gt = [16.0, 16.0, 48.0, 48.0]  # centre (32, 32): the corner of all four cells -> cell (1, 1)
    t = model.label_grid(model._split(_v1_predictions(), (64, 64))[2], [_instances([gt], [0])], (64, 64))
    assert t.slot.tolist() == [6] and t.occupied.tolist() == [[False, False, False, True]]
    torch.testing.assert_close(t.deltas[0], torch.tensor([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)]))


# ----- config keys -----------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["bccd/yolov3", "bccd/yolov2", "bccd/yolov1", "darknet/yolov3-tiny"])
def test_config_keys_are_read_only_by_their_owner(config, repo_root):
    """Heads read MODEL.YOLO only; backbones read MODEL.DARKNET / MODEL.BACKBONE only: each still
    builds when the other's node is removed from the config."""
    from detectron2.modeling import build_backbone

    from d2ext.engine import setup_cfg
    from d2ext.modeling.meta_arch.yolo import YOLO_HEAD_REGISTRY

    cfg = setup_cfg(str(repo_root / "configs" / f"{config}.yaml"), ["MODEL.DEVICE", "cpu"])
    shapes = build_backbone(cfg).output_shape()
    no_darknet = cfg.clone()
    no_darknet.defrost()
    del no_darknet.MODEL["DARKNET"]
    default = {"YOLOV3": "YOLOV3Head", "YOLOV2": "YOLOV2Head", "YOLOV1": "YOLOV1Head"}[cfg.MODEL.META_ARCHITECTURE]
    head_cls = YOLO_HEAD_REGISTRY.get(cfg.MODEL.YOLO.HEAD_NAME or default)
    head = head_cls(no_darknet, [shapes[f] for f in cfg.MODEL.YOLO.IN_FEATURES])
    assert isinstance(head, head_cls)
    no_yolo = cfg.clone()
    no_yolo.defrost()
    del no_yolo.MODEL["YOLO"]
    assert build_backbone(no_yolo).output_shape() == shapes


def test_yolo_sources_name_no_other_modules_keys(repo_root):
    """Static check of the same rule over the whole files (covers code paths not built above)."""
    import re

    yolo = (repo_root / "d2ext/modeling/meta_arch/yolo.py").read_text()
    darknet = (repo_root / "d2ext/modeling/backbone/darknet.py").read_text()
    assert not re.search(r"MODEL\.DARKNET", yolo)
    assert not re.search(r"MODEL\.YOLO", darknet)


def test_yolov1_conv_head_layout_matches_the_fc_head():
    """Both heads give (N, S, S, 5B + K); the conv head's cell (gy, gx) sits at [.., gy, gx, :]."""
    from d2ext.modeling.meta_arch.yolo import YOLOV1ConvHead

    torch.manual_seed(0)
    kw = dict(in_channels=4, grid_size=3, boxes_per_cell=2, num_classes=K, fc_dim=8, dropout=0.0)
    conv, fc = YOLOV1ConvHead(**kw).eval(), YOLOV1Head(**kw).eval()
    x = torch.randn(2, 4, 3, 3)
    assert conv([x]).shape == fc([x]).shape == (2, 3, 3, 12)
    # a change in the top-left input pixel reaches only cells within the 3x3 conv's reach
    y = x.clone()
    y[:, :, 0, 0] += 10
    changed = (conv([y]) - conv([x])).abs().sum(-1) > 0
    assert changed[0].tolist() == [[True, True, False], [True, True, False], [False, False, False]]
