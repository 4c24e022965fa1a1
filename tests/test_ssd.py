"""SSD300 / SSD512: equivalence with torchvision's ssd300_vgg16, default boxes, matching, loss.

Tolerances: with the same weights and the same normalised input tensor, our SSD and torchvision's
run the same float32 operations in the same order, so boxes, scores and labels agree to 1e-5
(they are bitwise equal on the machines we tried). Detectron2's ``detector_postprocess`` drops
zero-area boxes (clipped to the image border) that torchvision keeps, so torchvision's output is
compared after dropping those. Pixel normalisation differs only in arithmetic order
(``(x/255 - m) * 255`` vs ``x - 255 m``), checked separately to 1e-4 px.
"""
import logging
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.engine import setup_cfg
from d2ext.modeling.backbone.ssd_vgg import SSDVGG
from d2ext.modeling.meta_arch.ssd import (
    SSD, SSDDefaultBoxGenerator, SSDHead, convert_torchvision_ssd300_vgg16,
)
from d2ext.modeling.weight_import import get_weight_converter
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances

from torchvision.models.detection import _utils as tv_det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

REPO = Path(__file__).resolve().parents[1]
SSD300_ARGS = dict(
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
    steps=[8, 16, 32, 64, 100, 300],
)
SSD300_GRIDS = [38, 19, 10, 5, 3, 1]


def tiny_ssd(image_size=64, num_classes=3, maps=("conv4_3", "fc7", "conv8_2", "conv9_2"), width=1 / 8,
             norm="BN", aspect_ratios=None, scales=None, steps=None, **kw):
    """A small SSD built without a config: same code, 1/8 of the VGG channels, few maps."""
    backbone = SSDVGG(out_features=maps, width_mult=width, norm=norm)
    shapes = backbone.output_shape()
    aspect_ratios = aspect_ratios or [[2], [2, 3], [2], [2]][: len(maps)]
    gen = SSDDefaultBoxGenerator(aspect_ratios, scales or [0.1, 0.2, 0.4, 0.6, 0.8][: len(maps) + 1], steps)
    head = SSDHead(in_channels=[shapes[m].channels for m in maps], num_anchors=gen.num_anchors,
                   num_classes=num_classes)
    return SSD(
        backbone=backbone, head=head, head_in_features=list(maps), anchor_generator=gen,
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        anchor_matcher=Matcher([0.5], [0, 1]), num_classes=num_classes, image_size=image_size,
        pixel_mean=[128.0, 128.0, 128.0], pixel_std=[64.0, 64.0, 64.0], **kw,
    )


def make_input(image, boxes, classes):
    inst = Instances(tuple(image.shape[-2:]))
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
    return {"image": image, "instances": inst}


# ----------------------------------------------------------------------------- default boxes
def test_default_boxes_equal_torchvision_ssd300():
    ours = SSDDefaultBoxGenerator(**SSD300_ARGS)
    theirs = DefaultBoxGenerator(SSD300_ARGS["aspect_ratios"], scales=SSD300_ARGS["scales"],
                                 steps=SSD300_ARGS["steps"])
    feats = [torch.zeros(1, 1, g, g) for g in SSD300_GRIDS]
    tv_boxes = theirs(TVImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), feats)[0]
    our_boxes = Boxes.cat(ours((300, 300), feats)).tensor
    assert our_boxes.shape == (8732, 4)  # the paper's 8732 default boxes
    assert torch.equal(our_boxes, tv_boxes)
    assert ours.num_anchors == theirs.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    # first box of the 38x38 map: centre (4, 4), side 0.07 * 300 = 21 px
    assert_close(our_boxes[0], torch.tensor([4 - 10.5, 4 - 10.5, 4 + 10.5, 4 + 10.5]))


def test_default_boxes_without_steps_and_unclipped_equal_torchvision():
    args = dict(aspect_ratios=[[2], [3]], scales=[0.3, 0.7, 1.2])
    ours = SSDDefaultBoxGenerator(**args, clip=False)
    theirs = DefaultBoxGenerator(args["aspect_ratios"], scales=args["scales"], clip=False)
    feats = [torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 2, 3)]
    tv_boxes = theirs(TVImageList(torch.zeros(1, 3, 40, 60), [(40, 60)]), feats)[0]
    assert torch.equal(Boxes.cat(ours((40, 60), feats)).tensor, tv_boxes)


# ----------------------------------------------------------------------------- backbone
@pytest.mark.parametrize(
    "extra,size,expected",
    [("ssd300", 300, [38, 19, 10, 5, 3, 1]), ("ssd512", 512, [64, 32, 16, 8, 4, 2, 1])],
)
def test_backbone_map_sizes(extra, size, expected):
    names = ["conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2", "conv12_2"][: len(expected)]
    net = SSDVGG(out_features=names, extra_layers=extra, width_mult=1 / 16).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, size, size))
    assert list(out) == names
    assert [o.shape[-1] for o in out.values()] == expected
    shapes = net.output_shape()
    assert [shapes[n].stride for n in names] == [8, 16, 32, 64, 128, 256, 512][: len(names)]
    assert [o.shape[1] for o in out.values()] == [shapes[n].channels for n in names]
    # conv4_3 is L2-normalised and scaled by 20 at every location with a non-zero activation
    norms = out["conv4_3"].norm(dim=1)
    assert_close(norms[norms > 0], torch.full_like(norms[norms > 0], 20.0))


def test_backbone_stops_after_last_requested_map():
    net = SSDVGG(out_features=["conv4_3"], width_mult=1 / 16)
    assert "pool4" not in dict(net.vgg.named_children()) and len(net.extras) == 0
    with pytest.raises(ValueError, match="subset"):
        SSDVGG(out_features=["conv12_2"], extra_layers="ssd300")


# ----------------------------------------------------------------------------- torchvision equivalence
@pytest.fixture(scope="module")
def tv_and_ours():
    """torchvision ssd300_vgg16 (random init, 4 classes incl. background) and our SSD holding the
    same weights; both normalise with mean 0 / std 1 so that they see the identical tensor."""
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=4)
    tv.transform.image_mean, tv.transform.image_std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    cfg = setup_cfg(str(REPO / "configs/coco/ssd300_vgg16_torchvision.yaml"),
                    ["MODEL.SSD.NUM_CLASSES", 3, "MODEL.PIXEL_MEAN", [0.0, 0.0, 0.0],
                     "MODEL.PIXEL_STD", [1.0, 1.0, 1.0]])
    ours = build_model(cfg)
    ours.load_state_dict(get_weight_converter("ssd300_vgg16")(tv.state_dict()), strict=True)
    return tv, ours


def test_same_detections_as_torchvision(tv_and_ours):
    tv, ours = tv_and_ours
    tv.eval(), ours.eval()
    torch.manual_seed(1)
    images = [torch.rand(3, 300, 300), torch.rand(3, 240, 320)]  # the second is warped in-model
    with torch.no_grad():
        theirs = tv(images)
        mine = ours([{"image": im} for im in images])
    for t, m in zip(theirs, mine):
        inst = m["instances"]
        nonempty = (t["boxes"][:, 2] > t["boxes"][:, 0]) & (t["boxes"][:, 3] > t["boxes"][:, 1])
        assert len(inst) == int(nonempty.sum()) > 50
        assert_close(inst.pred_boxes.tensor, t["boxes"][nonempty], rtol=1e-5, atol=1e-4)
        assert_close(inst.scores, t["scores"][nonempty], rtol=1e-5, atol=1e-6)
        assert torch.equal(inst.pred_classes + 1, t["labels"][nonempty])  # torchvision: 0 = background
    assert mine[1]["instances"].image_size == (240, 320)


def test_same_training_loss_as_torchvision(tv_and_ours):
    tv, ours = tv_and_ours
    tv.train(), ours.train()
    torch.manual_seed(2)
    images = [torch.rand(3, 300, 300), torch.rand(3, 240, 320)]
    boxes = [[[10.0, 20, 100, 120], [150, 30, 170, 45], [5, 5, 9, 8]], [[0.0, 0, 320, 240], [40, 60, 44, 64]]]
    labels = [[1, 3, 2], [2, 1]]  # torchvision labels (1..3); ours are 0-based
    with torch.no_grad():  # same losses => same gradients (same autograd graph); keep the test fast
        targets = [{"boxes": torch.tensor(b), "labels": torch.tensor(lab)} for b, lab in zip(boxes, labels)]
        theirs = tv(images, targets)
        mine = ours([make_input(im, b, [c - 1 for c in lab]) for im, b, lab in zip(images, boxes, labels)])
    assert_close(mine["loss_cls"], theirs["classification"], rtol=1e-5, atol=1e-6)
    assert_close(mine["loss_box_reg"], theirs["bbox_regression"], rtol=1e-5, atol=1e-6)
    tv.eval(), ours.eval()


def test_pixel_normalisation_of_torchvision_config_matches_torchvision():
    """configs/coco/ssd300_vgg16_torchvision.yaml: RGB 0-255 input, mean 255 * torchvision's mean,
    std 1, gives torchvision's normalised tensor for the same image in 0-1."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    cfg = setup_cfg(str(REPO / "configs/coco/ssd300_vgg16_torchvision.yaml"))
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.SSD.NUM_CLASSES == 90
    tvt = GeneralizedRCNNTransform(300, 300, [0.48235, 0.45882, 0.40784], [1 / 255.0] * 3,
                                   size_divisible=1, fixed_size=(300, 300))
    rgb = torch.randint(0, 256, (3, 240, 320)).float()
    tv_tensor = tvt([rgb / 255.0])[0].tensors[0]
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    ours = torch.nn.functional.interpolate(((rgb - mean) / std)[None], size=(300, 300), mode="bilinear",
                                           align_corners=False)[0]
    assert_close(ours, tv_tensor, rtol=0, atol=1e-4)


def test_converter_maps_every_key_and_rejects_unknown_ones(tv_and_ours):
    tv_sd = tv_and_ours[0].state_dict()
    out = convert_torchvision_ssd300_vgg16(tv_sd)
    assert len(out) == len(tv_sd)
    assert torch.equal(out["backbone.conv4_3_norm.weight"], tv_sd["backbone.scale_weight"])
    assert torch.equal(out["backbone.vgg.fc6.weight"], tv_sd["backbone.extra.0.7.1.weight"])
    assert torch.equal(out["backbone.extras.conv11_2.bias"], tv_sd["backbone.extra.4.2.bias"])
    with pytest.raises(KeyError, match="unexpected"):
        convert_torchvision_ssd300_vgg16({**tv_sd, "backbone.extra.5.0.weight": torch.zeros(1)})


# ----------------------------------------------------------------------------- matching / coding
def _label(model, anchors, boxes, classes):
    inst = Instances((20, 20))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    labels, matched = model.label_anchors([Boxes(torch.tensor(anchors, dtype=torch.float32))], [inst])
    return labels[0].tolist(), matched[0]


ANCHORS = [[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20], [0, 0, 20, 20]]


def test_matching_box_across_cell_boundary():
    model = tiny_ssd()
    # IoU 60/140 with cell 0 and 40/160 with cell 1, both < 0.5: the best default box is forced
    labels, matched = _label(model, ANCHORS, [[4, 0, 14, 10]], [2])
    assert labels == [3, 0, 0, 0, 0]
    assert matched[0].tolist() == [4, 0, 14, 10]


def test_matching_two_boxes_in_one_cell_get_their_own_default_boxes():
    model = tiny_ssd()
    # both centres lie in cell 0; the small box owns cell 0 (IoU 1), the big one the 20x20 box (0.81)
    labels, matched = _label(model, ANCHORS, [[0, 0, 10, 10], [0, 0, 18, 18]], [0, 1])
    assert labels == [1, 0, 0, 0, 2]
    assert matched[4].tolist() == [0, 0, 18, 18]


def test_matching_box_smaller_than_every_default_box_is_still_positive():
    model = tiny_ssd()
    labels, _ = _label(model, ANCHORS, [[12, 12, 14, 14]], [1])  # IoU 0.04 at best
    assert labels == [0, 0, 0, 2, 0]


def test_matching_agrees_with_torchvision_ssd_matcher():
    model = tiny_ssd()
    feats = [torch.zeros(1, 1, g, g) for g in SSD300_GRIDS]
    anchors = Boxes.cat(SSDDefaultBoxGenerator(**SSD300_ARGS)((300, 300), feats))
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(30, 2, generator=g) * 250
    gt = torch.cat([xy, xy + 5 + torch.rand(30, 2, generator=g) * 120], dim=1)
    inst = Instances((300, 300))
    inst.gt_boxes, inst.gt_classes = Boxes(gt), torch.zeros(30, dtype=torch.int64)
    labels, matched = model.label_anchors([anchors], [inst])
    from torchvision.ops import box_iou

    tv_matches = tv_det_utils.SSDMatcher(0.5)(box_iou(gt, anchors.tensor))
    assert torch.equal(labels[0] > 0, tv_matches >= 0)
    fg = tv_matches >= 0
    assert torch.equal(matched[0][fg], gt[tv_matches[fg]])


def test_box_coding_round_trip_and_torchvision_encoding():
    b2b = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    coder = tv_det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors = torch.tensor([[0.0, 0, 21, 21], [100, 50, 130, 65], [-5, -5, 305, 305]])
    boxes = torch.tensor([[2.0, 3, 15, 30], [90, 40, 140, 80], [1, 2, 299, 250]])
    deltas = b2b.get_deltas(anchors, boxes)
    assert_close(deltas, coder.encode_single(boxes, anchors))
    # SSD's variances: dx = (cx_gt - cx_a) / w_a / 0.1
    assert_close(deltas[0, 0], torch.tensor(((2 + 15) / 2 - 10.5) / 21 / 0.1))
    assert_close(deltas[0, 3], torch.tensor(math.log(27 / 21) / 0.2))
    assert_close(b2b.apply_deltas(deltas, anchors), boxes, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- training behaviour
def test_degenerate_boxes_are_dropped_with_a_warning_never_nan(caplog):
    torch.manual_seed(4)
    model = tiny_ssd().train()
    img = torch.rand(3, 64, 64) * 255
    inputs = [
        make_input(img, [[5, 5, 5, 20], [30, 30, 20, 50], [10, 10, 40, 40], [1, 1, float("nan"), 9]],
                   [0, 1, 2, 0]),
        make_input(img, [[3, 3, 3, 3]], [1]),  # only a degenerate box: trains as background
    ]
    with caplog.at_level(logging.WARNING, logger="d2ext.modeling.meta_arch.ssd"):
        losses = model(inputs)
    assert sum("degenerate" in r.getMessage() for r in caplog.records) == 2
    assert "3 degenerate" in caplog.records[0].getMessage()
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["loss_box_reg"] > 0
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_image_with_700_boxes_trains_without_dropping_any():
    """700 overlapping 21 px boxes, each equal to its own conv4_3 default box of SSD300 (so each has
    a distinct best default box): every one of them is matched (nothing is truncated) and a
    training step stays finite."""
    torch.manual_seed(5)
    model = tiny_ssd(image_size=300, maps=("conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"),
                     width=1 / 16, norm="", **SSD300_ARGS).train()
    cells = torch.arange(700)
    cx = (cells % 37 + 0.5) * 8  # conv4_3 default boxes are 8 px apart (STEPS[0])
    cy = (cells // 37 + 0.5) * 8
    boxes = torch.stack([cx - 10.5, cy - 10.5, cx + 10.5, cy + 10.5], dim=1)  # 0.07 * 300 = 21 px
    inp = make_input(torch.rand(3, 300, 300) * 255, boxes, cells % 3)
    images = model.preprocess_image([inp])
    feats = model.backbone(images.tensor)
    anchors = model.anchor_generator((300, 300), [feats[f] for f in model.head_in_features])
    labels, matched = model.label_anchors(anchors, [inp["instances"]])
    pos = labels[0] > 0
    assert int(pos.sum()) >= 700
    assert torch.unique(matched[0][pos], dim=0).shape[0] == 700
    losses = model([inp])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_loss_decreases_over_30_iterations_on_tiny_shapes():
    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as utils

    torch.manual_seed(6)
    dicts = DatasetCatalog.get("shapes_tiny_train")[:8]
    inputs = []
    for d in dicts:
        img = torch.as_tensor(utils.read_image(d["file_name"], "BGR").transpose(2, 0, 1).copy()).float()
        inst = utils.annotations_to_instances(d["annotations"], img.shape[-2:])
        inputs.append({"image": img, "instances": inst})
    model = tiny_ssd(image_size=64).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        loss = sum(model(inputs).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-5:]) / 5 < 0.6 * history[0], history


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("config,num_classes,num_boxes", [
    ("bccd/ssd300.yaml", 3, 8732),  # the paper's SSD300 count
    ("bccd/ssd512.yaml", 3, 24564),  # the paper's SSD512 count
    ("widerface/ssd300.yaml", 1, 2 * (38 ** 2 + 19 ** 2 + 10 ** 2 + 5 ** 2 + 3 ** 2 + 1)),  # 2 per location
])
def test_ssd_configs_build_and_predict_in_input_pixels(config, num_classes, num_boxes):
    cfg = setup_cfg(str(REPO / "configs" / config), ["MODEL.SSD.VGG.WIDTH_MULT", 0.0625])
    assert cfg.MODEL.META_ARCHITECTURE == "SSD" and cfg.MODEL.SSD.NUM_CLASSES == num_classes
    model = build_model(cfg).eval()
    size = cfg.MODEL.SSD.IMAGE_SIZE
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, size, size))
        anchors = model.anchor_generator((size, size), [feats[f] for f in model.head_in_features])
        assert sum(len(a) for a in anchors) == num_boxes
        out = model([{"image": torch.rand(3, 480, 640) * 255, "height": 480, "width": 640}])[0]["instances"]
    assert out.image_size == (480, 640) and len(out) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert (out.pred_boxes.tensor[:, 2] <= 640).all() and (out.pred_boxes.tensor[:, 3] <= 480).all()


@pytest.mark.slow
def test_ssd300_trains_and_evaluates_on_bccd_through_train_net(shared_data, run_tool, tmp_path):
    """A few iterations of configs/bccd/ssd300.yaml through tools/train_net.py, then COCO
    evaluation on bccd_test (the full budget run is the benchmark row bccd/ssd300)."""
    if not (shared_data / "bccd" / "BCCD").is_dir():
        pytest.skip("BCCD not in the shared data")
    proc = run_tool(
        "train_net.py", "--config-file", REPO / "configs/bccd/ssd300.yaml",
        "SOLVER.MAX_ITER", 6, "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", "(4,5)", "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", tmp_path,
        env={"D2EXT_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1"},
    )
    log = proc.stdout + proc.stderr
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert (tmp_path / "inference" / "bccd_test" / "coco_instances_results.json").is_file()
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
def test_convert_weights_cli_to_model_weights(tv_and_ours, tmp_path, run_tool):
    """The user path: torchvision file -> tools/convert_weights.py --arch ssd300_vgg16 ->
    MODEL.WEIGHTS of configs/coco/ssd300_vgg16_torchvision.yaml: every tensor arrives intact."""
    from detectron2.checkpoint import DetectionCheckpointer

    tv = tv_and_ours[0]
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    run_tool("convert_weights.py", "--arch", "ssd300_vgg16", "--input", tmp_path / "tv.pth",
             "--output", tmp_path / "d2.pth")
    cfg = setup_cfg(str(REPO / "configs/coco/ssd300_vgg16_torchvision.yaml"),
                    ["MODEL.SSD.NUM_CLASSES", 3, "MODEL.WEIGHTS", str(tmp_path / "d2.pth")])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    expected = convert_torchvision_ssd300_vgg16(tv.state_dict())
    ours = model.state_dict()
    assert set(expected) <= set(ours)
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
