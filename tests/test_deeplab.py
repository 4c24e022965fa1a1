"""DeepLabv3 / v3+ head and the dilated ResNet backbone."""
import math

import numpy as np
import pytest
import torch

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.data.synthetic_seg import make_seg_sample
from d2ext.engine import setup_cfg
from d2ext.modeling.backbone.dilated_resnet import DilatedBasicBlock
from d2ext.modeling.heads.deeplab import DeepLabV3Head
from d2ext.modeling.heads.unet import soft_dice_loss
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model


def _resnet_cfg(depth=18, d4=1, d5=1, out=("res2", "res5"), name="build_dilated_resnet_backbone"):
    return setup_cfg("", [
        "MODEL.BACKBONE.NAME", name, "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.DEPTH", depth,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth in (18, 34) else 256, "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.OUT_FEATURES", list(out), "MODEL.RESNETS.RES4_DILATION", d4,
        "MODEL.RESNETS.RES5_DILATION", d5,
    ])


def _deeplab_opts(d4=1, d5=2, low="", k=2, dilations=(6, 12, 18)):
    return [
        "MODEL.META_ARCHITECTURE", "SemanticSegmentor",
        "MODEL.BACKBONE.NAME", "build_dilated_resnet_backbone", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 64,
        "MODEL.RESNETS.OUT_FEATURES", ["res2", "res5"],
        "MODEL.RESNETS.RES4_DILATION", d4, "MODEL.RESNETS.RES5_DILATION", d5,
        "MODEL.SEM_SEG_HEAD.NAME", "DeepLabV3Head", "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res5"],
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", k, "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.DEEPLAB.ASPP_CHANNELS", 32, "MODEL.DEEPLAB.ASPP_DILATIONS", list(dilations),
        "MODEL.DEEPLAB.LOW_LEVEL_FEATURE", low, "MODEL.DEEPLAB.LOW_LEVEL_CHANNELS", 8,
        "MODEL.DEEPLAB.DECODER_CHANNELS", 32,
        "MODEL.PIXEL_MEAN", [120.0, 120.0, 120.0], "MODEL.PIXEL_STD", [50.0, 50.0, 50.0],
        "MODEL.DEVICE", "cpu",
    ]


@pytest.mark.parametrize("d4,d5,res5_stride", [(1, 1, 32), (1, 2, 16), (2, 4, 8)])
def test_dilated_resnet_output_strides(d4, d5, res5_stride):
    torch.manual_seed(0)
    bb = build_backbone(_resnet_cfg(18, d4, d5, out=("res2", "res3", "res4", "res5"))).eval()
    shapes = bb.output_shape()
    assert shapes["res5"].stride == res5_stride and shapes["res4"].stride == min(16, res5_stride)
    assert [shapes[f"res{i}"].channels for i in range(2, 6)] == [64, 128, 256, 512]
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 65, 47))
    for name, spec in shapes.items():  # every strided layer rounds up
        assert tuple(feats[name].shape[-2:]) == (math.ceil(65 / spec.stride), math.ceil(47 / spec.stride)), name
    # the first block of a dilated stage keeps the previous stage's dilation (torchvision's rule)
    res5 = bb.res5
    assert res5[0].conv1.dilation == ((d4, d4) if d5 > 1 else (1, 1))
    assert all(b.conv2.dilation == (d5, d5) for b in res5)


def test_undilated_r34_equals_detectron2_resnet():
    """Same parameter names and, with the same weights, the same outputs as Detectron2's ResNet-34."""
    torch.manual_seed(0)
    ref = build_backbone(_resnet_cfg(34, out=("res2", "res3", "res4", "res5"), name="build_resnet_backbone"))
    ours = build_backbone(_resnet_cfg(34, out=("res2", "res3", "res4", "res5")))
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), ours.eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_bottleneck_resnet_dilates_res4_and_res5():
    bb = build_backbone(_resnet_cfg(50, 2, 4, out=("res5",)))
    assert bb.output_shape()["res5"].stride == 8
    assert [b.conv2.dilation[0] for b in bb.res4] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in bb.res5] == [2, 4, 4]


def test_bad_dilations_are_refused():
    with pytest.raises(ValueError, match="RES4_DILATION / RES5_DILATION = 2 / 2"):
        build_backbone(_resnet_cfg(18, 2, 2))


def test_dilated_basic_block_keeps_size():
    block = DilatedBasicBlock(8, 16, stride=1, dilation=4, first_dilation=2, norm="")
    assert block(torch.randn(2, 8, 9, 7)).shape == (2, 16, 9, 7)
    assert block.conv1.padding == (2, 2) and block.conv2.padding == (4, 4)


def test_aspp_branch_shapes():
    torch.manual_seed(0)
    head = DeepLabV3Head({"res5": ShapeSpec(channels=24, stride=16)}, in_feature="res5", num_classes=3,
                         aspp_channels=16, norm="BN").eval()
    x = torch.randn(2, 24, 5, 7)
    branches = head.aspp.convs
    assert len(branches) == 5  # 1x1, three atrous 3x3, image pooling
    assert branches[0].kernel_size == (1, 1)
    assert [(b.kernel_size, b.dilation, b.padding) for b in branches[1:4]] == [
        ((3, 3), (r, r), (r, r)) for r in (6, 12, 18)]
    with torch.no_grad():
        outs = [b(x) for b in branches]
        assert [tuple(o.shape) for o in outs] == [(2, 16, 5, 7)] * 4 + [(2, 16, 1, 1)]
        assert head.aspp.project.in_channels == 5 * 16
        assert head.aspp(x).shape == (2, 16, 5, 7)
        logits, losses = head({"res5": x})
    assert logits.shape == (2, 3, 80, 112) and losses == {}  # x16, before any crop


@pytest.mark.parametrize("d4,d5,low,dil", [(1, 2, "", (6, 12, 18)), (2, 4, "", (12, 24, 36)), (1, 2, "res2", (6, 12, 18))],
                         ids=["v3-os16", "v3-os8", "v3plus-os16"])
def test_odd_sizes_give_logits_at_input_size(d4, d5, low, dil):
    torch.manual_seed(0)
    model = build_model(setup_cfg("", _deeplab_opts(d4, d5, low, k=3, dilations=dil)))
    assert model.sem_seg_head.output_stride == (4 if low else 16 // d4)
    images = [torch.randint(0, 255, (3, 65, 47)).float(), torch.randint(0, 255, (3, 33, 81)).float()]
    model.eval()
    with torch.no_grad():
        out = model([{"image": im} for im in images])
    assert [tuple(o["sem_seg"].shape) for o in out] == [(3, 65, 47), (3, 33, 81)]
    model.train()
    targets = [torch.randint(0, 3, im.shape[1:]) for im in images]
    losses = model([{"image": im, "sem_seg": t} for im, t in zip(images, targets)])
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])


def test_head_fits_logits_to_odd_targets():
    head = DeepLabV3Head({"res5": ShapeSpec(channels=8, stride=16)}, in_feature="res5", num_classes=2,
                         aspp_channels=8, norm="").train()
    logits, losses = head({"res5": torch.randn(1, 8, 3, 2)}, torch.zeros(1, 37, 29, dtype=torch.long))
    assert logits.shape == (1, 2, 37, 29) and set(losses) == {"loss_sem_seg"}


def test_losses_ignore_255_and_reuse_unet_dice():
    head = DeepLabV3Head({"res5": ShapeSpec(channels=8, stride=16)}, in_feature="res5", num_classes=3,
                         aspp_channels=8, norm="", loss_type="ce+dice")
    targets = torch.tensor([[[0, 1, 255], [2, 255, 255]]])
    # uniform logits: CE is exactly log(3) over the 3 valid pixels, whatever the ignored ones hold
    losses = head.losses(torch.zeros(1, 3, 2, 3), targets)
    assert losses["loss_sem_seg"].item() == pytest.approx(math.log(3))
    logits = torch.zeros(1, 3, 2, 3)
    logits[0, 1, 0, 1] = 5.0  # confident and right on the class-1 pixel
    logits[0, :, 1, 1] = torch.tensor([0.0, 0.0, 50.0])  # an ignored pixel, wildly wrong: no effect
    p = torch.softmax(torch.tensor([0.0, 5.0, 0.0]), 0)[1]
    expected = (2 * math.log(3) - math.log(p)) / 3
    out = head.losses(logits, targets)
    assert out["loss_sem_seg"].item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(out["loss_dice"], soft_dice_loss(logits, targets, 255, 1.0))
    everything_ignored = head.losses(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255))
    assert everything_ignored["loss_sem_seg"].item() == 0.0


def test_loss_decreases_on_synthetic_blobs():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    samples = [make_seg_sample(rng, 32, 32, num_classes=2, contrast=80) for _ in range(4)]
    batch = [{"image": torch.from_numpy(img).permute(2, 0, 1).float(), "sem_seg": torch.from_numpy(lab).long()}
             for img, lab in samples]
    model = build_model(setup_cfg("", _deeplab_opts(1, 2, "res2", k=2))).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(20):
        loss = model(batch)["loss_sem_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:3]), history


@pytest.mark.parametrize("mode,k", [("binary", 2), ("3class", 3)])
def test_wbc_deeplabv3plus_configs_are_the_v3_configs_plus_the_decoder(repo_root, mode, k):
    """configs/wbc_seg/deeplabv3plus_R34_*: the DeepLabv3 config (backbone, ASPP, recipe, test-time
    scales) with a GroupNorm decoder on res2: logits at stride 4, image-sized outputs."""
    v3 = setup_cfg(str(repo_root / "configs" / "wbc_seg" / f"deeplabv3_R34_{mode}.yaml"))
    plus = setup_cfg(str(repo_root / "configs" / "wbc_seg" / f"deeplabv3plus_R34_{mode}.yaml"))
    differ = {k2 for k2 in ("LOW_LEVEL_FEATURE", "LOW_LEVEL_CHANNELS", "DECODER_CHANNELS")
              if v3.MODEL.DEEPLAB[k2] != plus.MODEL.DEEPLAB[k2]}
    assert differ == {"LOW_LEVEL_FEATURE", "LOW_LEVEL_CHANNELS", "DECODER_CHANNELS"}
    assert plus.INPUT.AUG.TRAIN == v3.INPUT.AUG.TRAIN and plus.TEST.AUG.SCALE_FACTORS == v3.TEST.AUG.SCALE_FACTORS
    assert plus.MODEL.RESNETS.DEPTH == v3.MODEL.RESNETS.DEPTH == 34 and plus.OUTPUT_DIR != v3.OUTPUT_DIR
    torch.manual_seed(0)
    model = build_model(plus).eval()
    head = model.sem_seg_head
    assert head.output_stride == 4 and head.low_level_proj is not None
    assert all(isinstance(m.norm, torch.nn.GroupNorm) for m in [head.low_level_proj, *head.decoder])
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 61, 75)).float()}])
    assert out[0]["sem_seg"].shape == (k, 61, 75)


@pytest.mark.parametrize("mode,k", [("binary", 2), ("3class", 3)])
def test_wbc_deeplabv3_r18_configs_are_the_r34_configs_on_a_lighter_backbone_and_aspp(repo_root, mode, k):
    """configs/wbc_seg/deeplabv3_R18_* (the shift benchmark's DeepLabv3): the R34 config's recipe,
    output stride and test-time scales, with ResNet-18 and a 128-channel ASPP; image-sized outputs."""
    r34 = setup_cfg(str(repo_root / "configs" / "wbc_seg" / f"deeplabv3_R34_{mode}.yaml"))
    r18 = setup_cfg(str(repo_root / "configs" / "wbc_seg" / f"deeplabv3_R18_{mode}.yaml"))
    assert (r18.MODEL.RESNETS.DEPTH, r18.MODEL.DEEPLAB.ASPP_CHANNELS) == (18, 128)
    assert (r34.MODEL.RESNETS.DEPTH, r34.MODEL.DEEPLAB.ASPP_CHANNELS) == (34, 256)
    for key in ("RES4_DILATION", "RES5_DILATION", "NORM"):
        assert r18.MODEL.RESNETS[key] == r34.MODEL.RESNETS[key]
    assert r18.INPUT.AUG == r34.INPUT.AUG and r18.TEST.AUG == r34.TEST.AUG and r18.SOLVER == r34.SOLVER
    assert r18.MODEL.DEEPLAB.LOW_LEVEL_FEATURE == "" and r18.OUTPUT_DIR != r34.OUTPUT_DIR
    torch.manual_seed(0)
    model = build_model(r18).eval()
    assert model.sem_seg_head.output_stride == 16
    assert len(model.backbone.res4) == 2 and len(model.backbone.res5) == 2  # ResNet-18: 2 blocks a stage
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 61, 75)).float()}])
    assert out[0]["sem_seg"].shape == (k, 61, 75)
