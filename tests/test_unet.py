"""U-Net head + classic encoder through Detectron2's SemanticSegmentor, on synthetic data."""
import numpy as np
import pytest
import torch

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.data import register_synthetic_seg
from d2ext.data.synthetic_seg import generate_synthetic_seg
from d2ext.engine import Trainer, setup_cfg
from d2ext.engine.trainer import cpu_has_bfloat16
from d2ext.evaluation.classical import evaluate_classical
from d2ext.modeling.backbone.unet_encoder import UNetEncoder
from d2ext.modeling.heads.unet import UNetHead, soft_dice_loss
from detectron2.modeling import build_model

SMALL_UNET = [
    "MODEL.META_ARCHITECTURE", "SemanticSegmentor",
    "MODEL.BACKBONE.NAME", "build_unet_encoder_backbone",
    "MODEL.SEM_SEG_HEAD.NAME", "UNetHead",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["enc1", "enc2", "enc3"],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 2,
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.UNET.ENCODER_CHANNELS", [8, 16, 32],
    "MODEL.UNET.DECODER_CHANNELS", [16, 8],
    "MODEL.PIXEL_MEAN", [120.0, 120.0, 120.0],
    "MODEL.PIXEL_STD", [50.0, 50.0, 50.0],
]
R34_UNET = [
    "MODEL.META_ARCHITECTURE", "SemanticSegmentor",
    "MODEL.BACKBONE.NAME", "build_resnet_backbone",
    "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RESNETS.DEPTH", 34,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.NAME", "UNetHead",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3,
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.UNET.DECODER_CHANNELS", [64, 32, 16, 16, 8],
]


def test_classic_unet_has_about_31m_parameters():
    # Ronneberger et al. 2015: 64 -> 1024 channels; about 31M weights for 2 classes.
    enc = UNetEncoder(3, (64, 128, 256, 512, 1024), norm="")
    head = UNetHead(enc.output_shape(), num_classes=2, decoder_channels=[512, 256, 128, 64], norm="")
    n = sum(p.numel() for m in (enc, head) for p in m.parameters())
    assert 31.0e6 < n < 31.1e6
    assert {k: (v.channels, v.stride) for k, v in enc.output_shape().items()} == {
        "enc1": (64, 1), "enc2": (128, 2), "enc3": (256, 4), "enc4": (512, 8), "enc5": (1024, 16)}


@pytest.mark.parametrize("opts", [SMALL_UNET, SMALL_UNET + ["MODEL.UNET.UPSAMPLE", "bilinear"], R34_UNET],
                         ids=["classic-small", "bilinear", "R34"])
def test_odd_sizes_give_logits_at_input_size(opts):
    torch.manual_seed(0)
    model = build_model(setup_cfg("", opts + ["MODEL.DEVICE", "cpu"]))
    k = model.sem_seg_head.num_classes
    images = [torch.randint(0, 255, (3, 301, 257)).float(), torch.randint(0, 255, (3, 45, 67)).float()]
    model.eval()
    with torch.no_grad():
        out = model([{"image": im} for im in images])
    assert [tuple(o["sem_seg"].shape) for o in out] == [(k, 301, 257), (k, 45, 67)]
    model.train()
    targets = [torch.randint(0, k, im.shape[1:]) for im in images]
    targets[1][:10] = 255
    losses = model([{"image": im, "sem_seg": t} for im, t in zip(images, targets)])
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()


@pytest.mark.parametrize("name", ["unet_classic_binary", "unet_classic_3class", "unet_R34_binary",
                                  "unet_R34_3class", "unet_VGG16_binary"])
def test_wbc_configs_build_and_keep_odd_sizes(repo_root, name):
    cfg = setup_cfg(str(repo_root / "configs" / "wbc_seg" / f"{name}.yaml"))
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 37, 53) * 255}])
    assert out[0]["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 37, 53)


def test_head_crops_to_targets_and_checks_config():
    enc = UNetEncoder(3, (4, 8), norm="")
    head = UNetHead(enc.output_shape(), num_classes=3, decoder_channels=[4], loss_type="ce+dice")
    feats = enc(torch.randn(2, 3, 9, 11))  # ceil pooling: enc2 is 5x6, decoded to 10x12
    assert feats["enc2"].shape[-2:] == (5, 6)
    head.eval()
    logits, losses = head(feats)
    assert logits.shape == (2, 3, 9, 11) and losses == {}
    head.train()
    logits, losses = head(feats, torch.zeros(2, 9, 11, dtype=torch.long))
    assert logits.shape == (2, 3, 9, 11) and set(losses) == {"loss_sem_seg", "loss_dice"}
    with pytest.raises(ValueError, match="need 1 decoder blocks"):
        UNetHead(enc.output_shape(), num_classes=3, decoder_channels=[4, 4])
    with pytest.raises(ValueError, match="loss_type"):
        UNetHead(enc.output_shape(), num_classes=3, decoder_channels=[4], loss_type="focal")


def test_soft_dice_loss_values_and_ignore():
    t = torch.tensor([[[0, 1], [1, 255]]])
    perfect = 50.0 * torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 2).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, t, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # Uniform probabilities: class 0 has 1 pixel, class 1 two; 3 valid pixels with p = 0.5.
    uniform = torch.zeros(1, 2, 2, 2)
    expected = 1 - ((2 * 0.5) / (1.5 + 1) + (2 * 1.0) / (1.5 + 2)) / 2
    assert soft_dice_loss(uniform, t, smooth=0.0).item() == pytest.approx(expected)
    changed = perfect.clone()
    changed[0, :, 1, 1] = torch.tensor([-9.0, 9.0])  # only the ignored pixel differs
    assert soft_dice_loss(changed, t).item() == pytest.approx(soft_dice_loss(perfect, t).item())
    head = UNetHead(UNetEncoder(3, (4,), norm="").output_shape(), num_classes=2, decoder_channels=[],
                    loss_type="ce+dice")
    losses = head.losses(uniform, torch.full((1, 2, 2), 255))
    assert all(torch.isfinite(v) for v in losses.values())


def test_synthetic_generator_is_deterministic(tmp_path):
    a = generate_synthetic_seg(str(tmp_path / "a"), 3, (20, 30), seed=5, num_classes=3)
    b = generate_synthetic_seg(str(tmp_path / "b"), 3, (20, 30), seed=5, num_classes=3)
    from PIL import Image

    for da, db in zip(a, b):
        la, lb = np.asarray(Image.open(da["sem_seg_file_name"])), np.asarray(Image.open(db["sem_seg_file_name"]))
        np.testing.assert_array_equal(la, lb)
        assert la.shape == (20, 30) and set(np.unique(la)) <= {0, 1, 2}
        assert (la > 0).any()


def _train(tmp_path, name, iters, opts=(), **data_kw):
    register_synthetic_seg(f"{name}_train", str(tmp_path), 48, 32, seed=1, **data_kw)
    register_synthetic_seg(f"{name}_test", str(tmp_path), 8, 32, seed=2, **data_kw)
    cfg = setup_cfg("", SMALL_UNET + [
        "MODEL.DEVICE", "cpu", "MODEL.UNET.LOSS_TYPE", "ce+dice",
        "DATASETS.TRAIN", (f"{name}_train",), "DATASETS.TEST", (f"{name}_test",),
        "INPUT.MIN_SIZE_TRAIN", (0,), "INPUT.MIN_SIZE_TEST", 0, "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 8, "SOLVER.BASE_LR", 0.05, "SOLVER.MAX_ITER", iters,
        "SOLVER.WARMUP_ITERS", 10, "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR",
        "SOLVER.CHECKPOINT_PERIOD", 100000, "OUTPUT_DIR", str(tmp_path / "out"), "SEED", 0,
        "TEST.NUM_VIS_IMAGES", 2, *opts,
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, trainer


def test_loss_decreases_over_30_iterations(tmp_path):
    _, trainer = _train(tmp_path, "blobs30", 30, contrast=60.0, noise=10.0)
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no bfloat16 units")
def test_amp_on_cpu_trains_in_bfloat16_and_evaluates_in_float32(tmp_path):
    convs = []

    def record(module, inputs, output):
        convs.append((module.training, output.dtype))

    from d2ext.engine import AutocastTrainer

    _, trainer = _train(tmp_path, "amp_blobs", 30, opts=("SOLVER.AMP.ENABLED", True), contrast=60.0, noise=10.0)
    assert type(trainer._trainer) is AutocastTrainer
    model = trainer.model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(record)
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    model.train()
    with trainer._trainer.autocast:
        model(batch)
    model.eval()
    with torch.no_grad():
        model(batch[:1])
    assert convs == [(True, torch.bfloat16), (False, torch.float32)]


def test_amp_without_bfloat16_units_trains_in_float32_with_a_warning(tmp_path, monkeypatch, caplog):
    import contextlib

    from d2ext.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_bfloat16", lambda: False)
    cfg = setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", True])
    with caplog.at_level("WARNING", logger="detectron2"):
        ctx = trainer_module.training_autocast(cfg)
    assert isinstance(ctx, contextlib.nullcontext)
    assert "no bfloat16 units; training in float32" in caplog.text
    off = setup_cfg("", SMALL_UNET + ["MODEL.DEVICE", "cpu"])
    assert isinstance(trainer_module.training_autocast(off), contextlib.nullcontext)


def test_trained_unet_beats_otsu_where_thresholding_fails(tmp_path):
    # Circles differ from the background only in texture (same mean grey): Otsu cannot work.
    kw = dict(contrast=0.0, texture=40.0, noise=8.0)
    cfg, trainer = _train(tmp_path, "texture", 120, **kw)
    unet = Trainer.test(cfg, trainer.model)["sem_seg"]
    otsu = evaluate_classical("texture_test", "otsu")
    assert unet["fgDice"] > 85.0
    assert unet["fgDice"] > otsu["fgDice"] + 30.0
    assert len(list((tmp_path / "out" / "inference" / "texture_test" / "overlays").glob("*.png"))) == 2


def test_train_net_trains_and_evaluates_unet_on_wbc(shared_data, run_tool, tmp_path):
    # Smoke run of the real config on the real images: 2 iterations of a tiny-width U-Net at 64 px.
    out = tmp_path / "out"
    proc = run_tool(
        "train_net.py", "--config-file", "configs/wbc_seg/unet_classic_binary.yaml",
        "MODEL.UNET.ENCODER_CHANNELS", "[8, 16, 32, 64, 128]", "MODEL.UNET.DECODER_CHANNELS", "[64, 32, 16, 8]",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
        env={"D2EXT_SHARED_DATA": str(shared_data), "D2EXT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )
    assert "copypaste: mIoU,mDice,fgIoU,fgDice,pACC" in proc.stdout + proc.stderr
    assert len(list((out / "inference" / "wbc_seg_binary_test" / "overlays").glob("*.png"))) == 4


def test_narrow_group_and_instance_norms():
    from d2ext.modeling.norm import get_norm

    gn = get_norm("GN8", 16)
    assert isinstance(gn, torch.nn.GroupNorm) and (gn.num_groups, gn.num_channels) == (8, 16)
    inorm = get_norm("IN", 16)
    assert (inorm.num_groups, inorm.num_channels) == (16, 16)
    assert get_norm("", 16) is None
    assert type(get_norm("BN", 16)).__name__ == "BatchNorm2d"  # Detectron2's names still work
    with pytest.raises(ValueError, match="groups"):
        get_norm("GN8", 12)
    # a U-Net at 1/4 width (16 channels: Detectron2's 32-group "GN" cannot) with GN8 everywhere
    opts = SMALL_UNET + ["MODEL.DEVICE", "cpu", "MODEL.UNET.ENCODER_NORM", "GN8", "MODEL.SEM_SEG_HEAD.NORM", "GN8",
                         "MODEL.UNET.ENCODER_CHANNELS", [16, 32, 64]]
    model = build_model(setup_cfg("", opts)).eval()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.sem_seg_head.modules())
    # per-image statistics, in training as at test: an image's features do not depend on the
    # rest of the batch (BatchNorm's would)
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32) * 5 + 2
    for norm, independent in (("GN8", True), ("BN", False)):
        enc = UNetEncoder(3, (16, 32), norm=norm).train()
        with torch.no_grad():
            alone = enc(a)["enc2"]
            paired = enc(torch.cat([a, b]))["enc2"][:1]
        assert torch.allclose(alone, paired, atol=1e-5) == independent, norm


@pytest.mark.parametrize("backbone, key", [("build_vgg_backbone", "VGG"), ("build_dilated_resnet_backbone", "RESNETS")])
def test_backbones_take_d2ext_norm_names(backbone, key):
    from detectron2.modeling import build_backbone

    cfg = setup_cfg("configs/wbc_seg/deeplabv3_VGG16_binary.yaml" if key == "VGG" else
                    "configs/wbc_seg/deeplabv3_R34_binary.yaml", ["MODEL.DEVICE", "cpu", f"MODEL.{key}.NORM", "IN"])
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = backbone
    net = build_backbone(cfg)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels for m in norms)
