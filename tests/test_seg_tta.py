"""Test-time augmentation of sem-seg models (SemSegTTA) and the AdamW option of the Trainer."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import d2ext.engine  # noqa: F401  (registers every d2ext component)
from d2ext.engine import Trainer, setup_cfg
from d2ext.modeling.test_time_augmentation import SemSegTTA, with_test_time_augmentation
from detectron2.modeling import build_model

from test_unet import SMALL_UNET


class _Echo(nn.Module):
    """Scores = (image channel 0, its negative), resized to the requested size: flip- and
    scale-equivariant up to interpolation."""

    def forward(self, inputs):
        out = []
        for d in inputs:
            x = d["image"].float()[:1]
            s = torch.cat([x, -x]) / 50.0
            s = F.interpolate(s[None], size=(d["height"], d["width"]), mode="bilinear", align_corners=False)[0]
            out.append({"sem_seg": s})
        return out


class _Ramp(nn.Module):
    """Scores that ignore the image: class 0 grows from left to right (a position bias)."""

    def forward(self, inputs):
        out = []
        for d in inputs:
            w = d["width"]
            ramp = torch.linspace(-3, 3, w).expand(d["height"], w)
            out.append({"sem_seg": torch.stack([ramp, -ramp])})
        return out


def _input(h=24, w=31, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": h, "width": w}


def test_flips_of_an_equivariant_model_change_nothing():
    inp = _input()
    plain = _Echo().eval()([inp])[0]["sem_seg"].softmax(0)
    flips = [(False, False), (True, False), (False, True), (True, True)]
    tta = SemSegTTA(_Echo().eval(), flips=flips)
    assert not tta.training
    out = tta([inp])[0]["sem_seg"]
    assert out.shape == plain.shape
    assert torch.allclose(out, plain, atol=1e-6)


def test_flips_are_undone_before_averaging():
    inp = _input()
    out = SemSegTTA(_Ramp().eval(), flips=[(False, False), (True, False)])([inp])[0]["sem_seg"]
    # left-right bias averaged with its mirror image: symmetric, 0.5 in the middle column
    assert torch.allclose(out, out.flip(-1), atol=1e-6)
    assert torch.allclose(out.sum(0), torch.ones(24, 31))
    assert abs(out[0, 0, 15].item() - 0.5) < 1e-6
    # vertical flip alone leaves a left-right bias as it is
    vout = SemSegTTA(_Ramp().eval(), flips=[(False, False), (False, True)])([inp])[0]["sem_seg"]
    assert torch.allclose(vout, _Ramp()([inp])[0]["sem_seg"].softmax(0), atol=1e-6)


def test_scale_factors_are_resized_back_to_the_image_size():
    inp = _input(40, 50)
    seen = []

    class Spy(_Echo):
        def forward(self, inputs):
            seen.append(tuple(inputs[0]["image"].shape[-2:]))
            return super().forward(inputs)

    out = SemSegTTA(Spy().eval(), scale_factors=(0.5, 1.0, 2.0))([inp])[0]["sem_seg"]
    assert seen == [(20, 25), (40, 50), (80, 100)]
    assert out.shape == (2, 40, 50)
    plain = _Echo()([inp])[0]["sem_seg"].softmax(0)
    # a smooth model: the average over scales stays close to the single-scale answer in argmax
    agree = (out.argmax(0) == plain.argmax(0)).float().mean().item()
    assert agree > 0.8


def test_config_switches_and_bad_arguments():
    cfg = setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    assert with_test_time_augmentation(cfg, model) is model  # TEST.AUG.ENABLED off
    cfg = setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu", "TEST.AUG.ENABLED", True, "TEST.AUG.VFLIP", True,
                                      "TEST.AUG.SCALE_FACTORS", (0.75, 1.5)])
    tta = with_test_time_augmentation(cfg, model)
    assert isinstance(tta, SemSegTTA)
    assert tta.flips == [(False, False), (True, False), (False, True), (True, True)]
    assert tta.scale_factors == [0.75, 1.5]
    cfg = setup_cfg("", ["MODEL.DEVICE", "cpu", "TEST.AUG.ENABLED", True])  # an R-CNN: left alone
    assert with_test_time_augmentation(cfg, model) is model
    with pytest.raises(ValueError, match="positive"):
        SemSegTTA(model, scale_factors=(0.0,))
    with pytest.raises(RuntimeError, match="inference"):
        SemSegTTA(model.train())([_input()])


def test_real_unet_through_tta_gives_probabilities_at_image_size():
    torch.manual_seed(0)
    cfg = setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu", "TEST.AUG.ENABLED", True,
                                      "TEST.AUG.SCALE_FACTORS", (0.5, 1.0, 1.5)])
    tta = with_test_time_augmentation(cfg, build_model(cfg).eval())
    inp = _input(37, 45)
    with torch.no_grad():
        out = tta([inp])[0]["sem_seg"]
        # labels a test mapper attaches (at the unscaled size) must not reach the scaled variants
        # (the U-Net head fits its logits to them): same answer with and without them
        with_labels = tta([dict(inp, sem_seg=torch.zeros(37, 45, dtype=torch.long))])[0]["sem_seg"]
    assert out.shape == (2, 37, 45)
    assert torch.allclose(out.sum(0), torch.ones(37, 45), atol=1e-5)
    assert torch.allclose(with_labels, out)


def test_adamw_option_builds_adamw_with_detectron2_groups():
    cfg = setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu", "SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", 0.002,
                                      "SOLVER.WEIGHT_DECAY", 0.01, "SOLVER.WEIGHT_DECAY_NORM", 0.0])
    model = build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["lr"] for g in opt.param_groups} == {0.002}
    # norm layers get WEIGHT_DECAY_NORM, the rest WEIGHT_DECAY (Detectron2's parameter groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01}
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    sgd = Trainer.build_optimizer(setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu"]), model)
    assert isinstance(sgd, torch.optim.SGD)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        Trainer.build_optimizer(setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu", "SOLVER.OPTIMIZER", "Lion"]),
                                model)
