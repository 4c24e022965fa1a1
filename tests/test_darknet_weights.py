"""Darknet .cfg + .weights: reader/writer round trip, import into d2ext, and equivalence with
OpenCV's independent Darknet reader (``cv2.dnn.readNetFromDarknet``) on small cfgs with random
weights, for the YOLOv3, yolov3-tiny and YOLOv2 layouts."""
import struct

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from d2ext.engine import setup_cfg
from d2ext.modeling import darknet_weights as dw
from d2ext.modeling.backbone.darknet import reorg

cv2 = pytest.importorskip("cv2")
torch.set_num_threads(1)

H, W = 64, 96  # not square, so a swapped height/width shows


def _small_cfg(layout):
    opts = ["MODEL.DEVICE", "cpu", "MODEL.YOLO.NUM_CLASSES", 3, "MODEL.DARKNET.WIDTH_MULT", 0.125]
    if layout == "yolov3":  # two levels, a stage without residual blocks
        opts += ["MODEL.DARKNET.STAGE_BLOCKS", [1, 0, 1, 1, 1], "MODEL.DARKNET.OUT_FEATURES", ["dark4", "dark5"],
                 "MODEL.YOLO.IN_FEATURES", ["dark4", "dark5"],
                 "MODEL.YOLO.ANCHORS", [[[10, 13], [16, 30]], [[30, 61], [62, 45]]]]
    return setup_cfg(dw.layout_config(layout), opts)


def _write(model, cfg, tmp_path, name):
    cfg_path, weights_path = tmp_path / f"{name}.cfg", tmp_path / f"{name}.weights"
    cfg_path.write_text(dw.darknet_cfg_text_of_model(model, cfg, H, W))
    specs = dw.conv_specs(dw.parse_darknet_cfg(str(cfg_path)))
    dw.write_darknet_weights(str(weights_path), specs, dw.export_darknet_weights(model))
    return cfg_path, weights_path, specs


def _ours(model, img):
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        feats = model.backbone((x - model.pixel_mean) / model.pixel_std)
        return model.head([feats[f] for f in model.head_in_features])


def test_weights_round_trip_is_exact(tmp_path):
    cfg = _small_cfg("yolov3")
    model = dw.randomize_weights(build_model(cfg))
    _, weights_path, specs = _write(model, cfg, tmp_path, "m")
    header, tensors = dw.read_darknet_weights(str(weights_path), specs)
    assert header == (0, 2, 0, 0)
    for a, b in zip(dw.export_darknet_weights(model), tensors):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    # header (12 + 8 bytes) + every float of the cfg's convs, nothing else
    assert weights_path.stat().st_size == 20 + 4 * sum(s.num_floats() for s in specs)


def test_short_weights_file_is_refused_with_counts(tmp_path):
    cfg = _small_cfg("yolov3-tiny")
    model = dw.randomize_weights(build_model(cfg))
    cfg_path, weights_path, specs = _write(model, cfg, tmp_path, "m")
    weights_path.write_bytes(weights_path.read_bytes()[:-8])
    with pytest.raises(dw.DarknetFormatError, match=r"m\.weights: holds 140134 floats after the header, the cfg's 13 convolutions need 140136"):
        dw.read_darknet_weights(str(weights_path), specs)
    # an old-format header (version 0.1: int32 "seen") is read too
    old = struct.pack("<3ii", 0, 1, 0, 7) + b"\0" * 4 * sum(s.num_floats() for s in specs)
    weights_path.write_bytes(old)
    assert dw.read_darknet_weights(str(weights_path), specs)[0] == (0, 1, 0, 7)


def test_bad_cfg_line_is_named(tmp_path):
    p = tmp_path / "bad.cfg"
    p.write_text("[net]\nwidth=64\n[convolutional]\nfilters=8\nthis line is wrong\n")
    with pytest.raises(dw.DarknetFormatError, match=r"bad\.cfg:5: expected 'key=value'"):
        dw.parse_darknet_cfg(str(p))


def test_darknet_reorg_order():
    """Darknet's reorg on (4, 2, 2): reads the input as (1, 4, 4) and takes every other pixel."""
    x = torch.arange(16.0).view(1, 4, 2, 2)
    # as (1, 4, 4): row r = [4r .. 4r+3]; offset (dy, dx) picks rows 2j+dy, columns 2i+dx of it
    expected = torch.tensor([[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]], dtype=torch.float32)
    assert torch.equal(reorg(x, 2).flatten(), expected.flatten())
    assert tuple(reorg(x, 2).shape) == (1, 16, 1, 1)


@pytest.mark.parametrize("layout", ["yolov3", "yolov3-tiny", "yolov2"])
def test_opencv_gives_the_same_head_outputs_and_boxes(layout, tmp_path):
    cfg = _small_cfg(layout)
    model = dw.randomize_weights(build_model(cfg))
    cfg_path, weights_path, specs = _write(model, cfg, tmp_path, layout)
    img = (np.random.RandomState(0).rand(H, W, 3) * 255).astype(np.uint8)

    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    blob = cv2.dnn.blobFromImage(img, 1 / 255.0, (W, H), swapRB=False, crop=False)
    net.setInput(blob)
    pred_layers = [f"conv_{s.index}" for s in specs if s.activation == "linear"]
    cv_raw = net.forward(pred_layers)

    # import path: the cfg alone decides the d2ext config; the weights file fills it
    sections = dw.parse_darknet_cfg(str(cfg_path))
    got_layout, opts = dw.d2ext_opts_from_darknet(sections, str(cfg_path))
    assert got_layout == layout
    imported = build_model(setup_cfg(dw.layout_config(layout), ["MODEL.DEVICE", "cpu"] + opts)).eval()
    _, tensors = dw.read_darknet_weights(str(weights_path), specs)
    dw.load_darknet_weights(imported, specs, tensors)
    for a, b in zip(imported.anchors, model.anchors):  # v2 cfgs give anchors in 32-px cells
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)

    outs = _ours(imported, img)
    for ours, theirs in zip(outs[::-1], cv_raw):  # the cfg lists the deepest level first
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-4, rtol=0)
        assert np.abs(theirs).max() > 0.5  # not trivially small
    for a, b in zip(outs, _ours(model, img)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    # decoded boxes: OpenCV's [yolo]/[region] rows are (cx, cy, w, h) / image size, objectness,
    # then class scores (objectness x probability, zeroed below 0.2 for [yolo])
    net.setInput(blob)
    dets = net.forward(net.getUnconnectedOutLayersNames())
    with torch.no_grad():
        pred, cells, strides, anchors, sizes = imported._flatten(list(outs))
        boxes = imported._decode(pred, cells, strides, anchors)[0]
        obj = pred[0, :, 4].sigmoid()
        scores = obj[:, None] * imported._class_scores(pred[0, :, 5:])
    rows = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2 / W, (boxes[:, 1] + boxes[:, 3]) / 2 / H,
                        (boxes[:, 2] - boxes[:, 0]) / W, (boxes[:, 3] - boxes[:, 1]) / H, obj], 1).numpy()
    offsets = np.cumsum([0] + [h * w * len(a) for (h, w), a in zip(sizes, imported.anchors)])
    levels = list(range(len(sizes)))[::-1]
    assert len(dets) == len(levels)
    for d, lvl in zip(dets, levels):
        sl = slice(offsets[lvl], offsets[lvl + 1])
        np.testing.assert_allclose(rows[sl], d[:, :5], atol=1e-4, rtol=0)
        if layout != "yolov2":
            theirs, ours = d[:, 5:], scores[sl].numpy()
            kept = theirs > 0
            np.testing.assert_allclose(ours[kept], theirs[kept], atol=1e-4, rtol=0)
            assert (ours[~kept] < 0.2 + 1e-4).all()


def test_real_layout_cfg_is_refused_when_it_differs(tmp_path):
    cfg = _small_cfg("yolov3-tiny")
    model = build_model(cfg)
    text = dw.darknet_cfg_text_of_model(model, cfg, H, W)
    # make the 3rd conv 5x5: d2ext has no such layer
    bad = text.replace("size=3", "size=5", 3).replace("size=5", "size=3", 2)
    p = tmp_path / "odd.cfg"
    p.write_text(bad)
    sections = dw.parse_darknet_cfg(str(p))
    _, opts = dw.d2ext_opts_from_darknet(sections, str(p))
    expected = dw.parse_darknet_cfg_text(dw.darknet_cfg_text_of_model(
        build_model(setup_cfg(dw.layout_config("yolov3-tiny"), ["MODEL.DEVICE", "cpu"] + opts)),
        cfg, H, W))
    with pytest.raises(dw.DarknetFormatError, match=r"odd\.cfg:\d+: layer 4 is \[convolutional\]"):
        dw.check_same_structure(sections, expected, str(p))


def test_convert_weights_tool_export_then_import(tmp_path):
    """--to-darknet writes .cfg + .weights of a d2ext checkpoint; --arch darknet reads them back
    into the same tensors and writes the matching d2ext YAML."""
    from tools.convert_weights import main

    cfg = _small_cfg("yolov2")
    yaml_in = tmp_path / "small.yaml"
    yaml_in.write_text(cfg.dump())
    model = dw.randomize_weights(build_model(cfg))
    torch.save({"model": model.state_dict()}, tmp_path / "trained.pth")
    assert main(["--to-darknet", "--config-file", str(yaml_in), "--input", str(tmp_path / "trained.pth"),
                 "--output", str(tmp_path / "exported.weights")]) == 0
    assert (tmp_path / "exported.cfg").exists()
    assert main(["--arch", "darknet", "--cfg", str(tmp_path / "exported.cfg"), "--input",
                 str(tmp_path / "exported.weights"), "--output", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ours) <= set(back)
    for k, v in ours.items():
        assert torch.equal(back[k], v), k
    again = build_model(setup_cfg(str(tmp_path / "back.yaml"), ["MODEL.DEVICE", "cpu"]))
    assert type(again).__name__ == "YOLOV2" and again.num_classes == 3
    # never over an input
    with pytest.raises(SystemExit, match="is the input"):
        main(["--arch", "darknet", "--cfg", str(tmp_path / "exported.cfg"), "--input",
              str(tmp_path / "exported.weights"), "--output", str(tmp_path / "exported.weights")])
