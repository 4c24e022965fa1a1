"""VGG-16 as a dilated (atrous) backbone and DeepLabv3 on it."""
import torch

from d2ext.engine import setup_cfg
from d2ext.modeling.backbone.vgg import VGG
from detectron2.modeling import build_model

CONFIG = "configs/wbc_seg/deeplabv3_VGG16_binary.yaml"


def test_vgg5_dilation_halves_the_stride_with_the_same_weights():
    plain = VGG(depth=16, norm="BN", out_features=["vgg4", "vgg5", "pool5"]).eval()
    atrous = VGG(depth=16, norm="BN", out_features=["vgg4", "vgg5", "pool5"], vgg5_dilation=2).eval()
    shapes = atrous.output_shape()
    assert (shapes["vgg4"].stride, shapes["vgg5"].stride, shapes["pool5"].stride) == (8, 8, 16)
    assert plain.output_shape()["vgg5"].stride == 16
    assert atrous.size_divisibility == 16
    # the same parameter names and shapes: torchvision / undilated weights load unchanged
    atrous.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, p = atrous(x), plain(x)
    assert a["vgg5"].shape[-2:] == (8, 12) and p["vgg5"].shape[-2:] == (4, 6)
    torch.testing.assert_close(a["vgg4"], p["vgg4"])  # stages before pool4 are untouched
    conv = atrous.vgg5.conv5_1
    assert conv.dilation == (2, 2) and conv.padding == (2, 2)


def test_deeplab_vgg16_keeps_input_size_at_output_stride_16_and_8():
    for opts in ([], ["MODEL.VGG.VGG5_DILATION", "2", "MODEL.DEEPLAB.ASPP_DILATIONS", "[12, 24, 36]"]):
        cfg = setup_cfg(CONFIG, opts + ["MODEL.VGG.NORM", "", "MODEL.SEM_SEG_HEAD.NORM", ""])
        model = build_model(cfg).eval()
        stride = model.backbone.output_shape()["vgg5"].stride
        assert stride == (8 if opts else 16)
        image = torch.randint(0, 255, (3, 45, 67), dtype=torch.uint8)
        with torch.no_grad():
            out = model([{"image": image, "height": 45, "width": 67}])[0]["sem_seg"]
        assert out.shape == (2, 45, 67)


def test_deeplab_vgg16_trains_through_train_net(run_tool, tmp_path):
    run_tool("train_net.py", "--config-file", CONFIG, "DATASETS.TRAIN", "('seg_tiny_train',)",
             "DATASETS.TEST", "('seg_tiny_val',)", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
             "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
             "SOLVER.MAX_ITER", "6", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEEPLAB.ASPP_CHANNELS", "32",
             "OUTPUT_DIR", tmp_path)
    assert (tmp_path / "model_final.pth").exists()
    metrics = [l for l in (tmp_path / "metrics.json").read_text().splitlines() if "total_loss" in l]
    assert len(metrics) >= 1
