"""Classic backbones: parameter counts, output shapes/strides, freezing, torchvision weight import."""
import copy

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.engine import setup_cfg
from d2ext.modeling.backbone.alexnet import AlexNet
from d2ext.modeling.backbone.densenet import DenseNet
from d2ext.modeling.backbone.googlenet import GoogLeNet
from d2ext.modeling.backbone.lenet import LeNet5
from d2ext.modeling.backbone.vgg import VGG
from d2ext.modeling.meta_arch.classifier import ImageClassifier
from d2ext.modeling.weight_import import get_weight_converter

CFG = "configs/classification/{}.yaml"


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def _build_on_meta(config, *opts):
    cfg = setup_cfg(CFG.format(config), ["MODEL.DEVICE", "cpu", *opts])
    with torch.device("meta"):  # counts without allocating 138M floats
        return ImageClassifier(cfg)


# Totals from torchvision (the figures) and the LeNet-5 paper's layer sizes.
@pytest.mark.parametrize("config,opts,expected", [
    ("lenet5_digits", (), 61_706),
    ("alexnet", (), 61_100_840),
    ("vgg16", (), 138_357_544),
    ("vgg16_bn", (), 138_365_992),
    ("googlenet", (), 13_004_888),
    ("googlenet", ("MODEL.CLASSIFIER.AUX_IN_FEATURES", "[]", "MODEL.CLASSIFIER.AUX_LOSS_WEIGHTS", "[]"), 6_624_904),
    ("resnet34", (), 21_797_672),
    ("resnet18", (), 11_689_512),
    ("densenet121", (), 7_978_856),
    ("densenet169", (), 14_149_480),
    ("densenet201", (), 20_013_928),
])
def test_parameter_counts_match_torchvision(config, opts, expected):
    assert _num_params(_build_on_meta(config, *opts)) == expected


@pytest.mark.parametrize("tv_name,config", [("vgg11_bn", "vgg16_bn"), ("densenet161", "densenet121")])
def test_config_variants_match_torchvision_counts(tv_name, config):
    with torch.device("meta"):
        tv = getattr(torchvision.models, tv_name)()
    opts = {"vgg11_bn": ("MODEL.VGG.DEPTH", "11"),
            "densenet161": ("MODEL.DENSENET.DEPTH", "161", "MODEL.DENSENET.GROWTH_RATE", "48",
                            "MODEL.DENSENET.NUM_INIT_FEATURES", "96")}[tv_name]
    assert _num_params(_build_on_meta(config, *opts)) == _num_params(tv)


# (backbone, input side, {feature: (channels, stride, expected side)})
SHAPE_CASES = {
    "lenet": (lambda: LeNet5(1, out_features=("s2", "s4")), 1, 32, {"s2": (6, 2, 14), "s4": (16, 4, 5)}),
    "alexnet": (lambda: AlexNet(out_features=("conv1", "conv2", "conv5", "pool5")), 3, 64,
                {"conv1": (64, 4, 15), "conv2": (192, 8, 7), "conv5": (256, 16, 3), "pool5": (256, 32, 1)}),
    "vgg16": (lambda: VGG(16, out_features=("vgg1", "vgg2", "vgg3", "vgg4", "vgg5", "pool5")), 3, 64,
              {"vgg1": (64, 1, 64), "vgg2": (128, 2, 32), "vgg3": (256, 4, 16), "vgg4": (512, 8, 8),
               "vgg5": (512, 16, 4), "pool5": (512, 32, 2)}),
    "googlenet": (lambda: GoogLeNet(out_features=(
        "conv1", "conv3", "inception3b", "inception4a", "inception4d", "inception4e", "inception5b")), 3, 64,
        {"conv1": (64, 2, 32), "conv3": (192, 4, 16), "inception3b": (480, 8, 8), "inception4a": (512, 16, 4),
         "inception4d": (528, 16, 4), "inception4e": (832, 16, 4), "inception5b": (1024, 32, 2)}),
    "densenet121": (lambda: DenseNet(out_features=("stem", "dense1", "dense2", "dense3", "dense4")), 3, 64,
                    {"stem": (64, 2, 32), "dense1": (256, 4, 16), "dense2": (512, 8, 8),
                     "dense3": (1024, 16, 4), "dense4": (1024, 32, 2)}),
}


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_output_shapes_and_strides(name):
    build, channels, side, expected = SHAPE_CASES[name]
    backbone = build().eval()
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {k: v[:2] for k, v in expected.items()}
    with torch.no_grad():
        out = backbone(torch.randn(2, channels, side, side))
    assert set(out) == set(expected)
    for k, (c, _, s) in expected.items():
        assert tuple(out[k].shape) == (2, c, s, s), k


def test_resnet34_through_detectron2_resnet():
    cfg = setup_cfg(CFG.format("resnet34"), ["MODEL.RESNETS.OUT_FEATURES", '["res2","res3","res4","res5"]'])
    backbone = BACKBONE_REGISTRY.get("build_torchvision_resnet_backbone")(cfg, ShapeSpec(channels=3))
    from detectron2.modeling.backbone.resnet import BasicBlock, ResNet

    assert type(backbone) is ResNet and isinstance(backbone.res3[0], BasicBlock)
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)}


def test_size_divisibility():
    assert VGG(16, out_features=("vgg4",)).size_divisibility == 8
    assert VGG(16).size_divisibility == 32
    assert GoogLeNet().size_divisibility == 32 and DenseNet().size_divisibility == 32
    assert AlexNet().size_divisibility == 0 and LeNet5().size_divisibility == 0


def test_forward_stops_at_deepest_requested_stage():
    vgg = VGG(11, out_features=("vgg2",))
    calls = []
    vgg.vgg3.register_forward_hook(lambda *a: calls.append(1))
    out = vgg(torch.randn(1, 3, 32, 32))
    assert list(out) == ["vgg2"] and calls == []


def test_freeze_at():
    vgg = VGG(11, norm="BN", out_features=("vgg3",), freeze_at=2)
    assert not any(p.requires_grad for p in vgg.vgg1.parameters())
    assert not any(p.requires_grad for p in vgg.vgg2.parameters())
    assert all(p.requires_grad for p in vgg.vgg3.parameters())
    assert isinstance(vgg.vgg2.bn2_1, FrozenBatchNorm2d) and isinstance(vgg.vgg3.bn3_1, torch.nn.BatchNorm2d)
    dense = DenseNet(block_config=(1, 1, 1, 1), freeze_at=1)
    assert isinstance(dense.stem.norm0, FrozenBatchNorm2d)
    assert not dense.stem.conv0.weight.requires_grad and dense.dense1.denseblock1.denselayer1.conv1.weight.requires_grad
    with pytest.raises(ValueError, match="freeze_at"):
        LeNet5(freeze_at=3)


def test_unknown_out_feature_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown out_features.*conv4_3"):
        VGG(16, out_features=("conv4_3",))


# ------------------------------------------------------------------ torchvision weight import
def _randomise_bn_statistics(model, seed=0):
    """Non-trivial running statistics, so a swapped mean/var would be caught."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _compare(ours, tv, side, seed=0):
    """Same 0-255 RGB images: ours normalises with its PIXEL_MEAN/STD, torchvision gets
    ImageNet-normalised [0, 1] tensors. Returns our probabilities and torchvision's."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, side, side), generator=g).float()
    with torch.no_grad():
        probs = torch.stack([o["scores"] for o in ours([{"image": im} for im in images])])
        tv_logits = tv((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
    return probs, torch.softmax(tv_logits, 1), images


@pytest.mark.parametrize("arch,config,side,tv_kwargs", [
    ("alexnet", "alexnet", 64, {}),
    ("vgg16", "vgg16", 32, {}),
    ("googlenet", "googlenet", 64, {"aux_logits": True, "init_weights": True}),
    ("densenet121", "densenet121", 32, {}),
])
def test_torchvision_weights_give_torchvision_outputs(arch, config, side, tv_kwargs):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=1000, **tv_kwargs).eval()
    _randomise_bn_statistics(tv)
    converted = get_weight_converter(arch)(copy.deepcopy(tv.state_dict()))
    opts = ["MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]"]
    ours = ImageClassifier(setup_cfg(CFG.format(config), opts)).eval()
    ours.load_state_dict(converted, strict=True)  # every key mapped, none left over
    probs, tv_probs, images = _compare(ours, tv, side)
    torch.testing.assert_close(probs, tv_probs, rtol=1e-4, atol=1e-6)
    if arch == "googlenet":
        # Auxiliary heads: same outputs on the same feature maps (captured from torchvision).
        feats = {}
        tv.inception4a.register_forward_hook(lambda m, i, o: feats.__setitem__("inception4a", o))
        tv.inception4d.register_forward_hook(lambda m, i, o: feats.__setitem__("inception4d", o))
        with torch.no_grad():
            tv((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
            torch.testing.assert_close(ours.aux_heads["aux1"](feats["inception4a"]), tv.aux1(feats["inception4a"]))
            torch.testing.assert_close(ours.aux_heads["aux2"](feats["inception4d"]), tv.aux2(feats["inception4d"]))
        # Pretrained googlenet runs with transform_input=True: googlenet.yaml's 127.5 mean/std.
        tv.transform_input = True
        ours_pretrained_cfg = ImageClassifier(setup_cfg(CFG.format(config))).eval()
        ours_pretrained_cfg.load_state_dict(converted)
        probs, tv_probs, _ = _compare(ours_pretrained_cfg, tv, side)
        torch.testing.assert_close(probs, tv_probs, rtol=1e-4, atol=1e-6)


def test_resnet34_file_conversion_and_checkpointer(tmp_path, run_tool):
    """The full user path: torchvision file -> tools/convert_weights.py -> MODEL.WEIGHTS."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet34().eval()
    _randomise_bn_statistics(tv)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    run_tool("convert_weights.py", "--arch", "resnet34", "--input", tmp_path / "tv.pth", "--output", tmp_path / "d2.pth")
    ckpt = torch.load(tmp_path / "d2.pth", weights_only=True)
    assert ckpt["__author__"] == "d2ext" and "backbone.res2.0.conv1.norm.running_var" in ckpt["model"]
    cfg = setup_cfg(CFG.format("resnet34"), ["MODEL.WEIGHTS", str(tmp_path / "d2.pth")])
    ours = ImageClassifier(cfg).eval()
    DetectionCheckpointer(ours).load(cfg.MODEL.WEIGHTS)
    for key, value in ours.state_dict().items():
        if key.startswith(("backbone.", "head.")):
            assert key in ckpt["model"], key
    probs, tv_probs, _ = _compare(ours, tv, 64)
    torch.testing.assert_close(probs, tv_probs, rtol=1e-4, atol=1e-6)


def test_converter_rejects_another_architecture():
    tv_sd = {"features.0.weight": torch.zeros(1), "fc.weight": torch.zeros(1), "foo.bar": torch.zeros(1)}
    with pytest.raises(KeyError, match="foo.bar"):
        get_weight_converter("densenet121")(tv_sd)


def test_unknown_converter_lists_the_known_ones():
    with pytest.raises(KeyError, match="no weight converter for 'nope'.*resnet34"):
        get_weight_converter("nope")
