#!/usr/bin/env python
"""Turn a torchvision ``state_dict`` file into a Detectron2 checkpoint for a d2ext config.

    tools/convert_weights.py --arch resnet34 --input resnet34-b627a593.pth --output R34.pth
    tools/train_net.py --config-file configs/classification/resnet34.yaml --eval-only \
        MODEL.WEIGHTS R34.pth

``--arch`` is any converter registered in ``d2ext.modeling.weight_import`` (``--list`` shows
them: alexnet, vgg16, vgg16_bn, googlenet, resnet34, densenet121, ...). Nothing is downloaded: the
input is a file the user already has (a bare ``state_dict``, or a dict holding one under
``"state_dict"`` or ``"model"``). The output is ``{"model": state_dict, "__author__": "d2ext"}``,
written atomically, and loads through ``MODEL.WEIGHTS``.

Darknet (YOLOv3, yolov3-tiny and YOLOv2 layouts, e.g. yolov3.cfg, yolov3-tiny.cfg, yolov2-voc.cfg)::

    tools/convert_weights.py --arch darknet --cfg yolov3.cfg --input yolov3.weights --output yolov3.pth
    # also writes yolov3.yaml: the matching d2ext config (configs/darknet/*.yaml + what the cfg says)
    tools/convert_weights.py --to-darknet --config-file configs/bccd/yolov3.yaml \
        --input output/bccd_yolov3/model_final.pth --output bccd_yolov3.weights   # + bccd_yolov3.cfg

The cfg is checked layer by layer against the one d2ext writes for the inferred model; a layer
d2ext does not build is refused with its cfg line.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# torch, Detectron2 and d2ext are imported after the arguments are parsed, so --help is instant.
logger = logging.getLogger("d2ext.convert_weights")


def load_state_dict(path: str):
    """The tensors of a torchvision checkpoint file (bare or wrapped state_dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    import torch

    from d2ext.checkpoint import load_torch_weights

    obj = load_torch_weights(path)  # weights_only=True: refuses files that would run code
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    # Checkpoints saved from DataParallel prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def save_checkpoint(state_dict, path: str) -> None:
    from d2ext.core import atomic_path

    with atomic_path(path) as tmp:
        __import__("torch").save({"model": state_dict, "__author__": "d2ext"}, tmp)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="registered converter name (see --list), or 'darknet'")
    parser.add_argument("--input", help="torchvision state_dict file (.pth); Darknet .weights with --arch "
                        "darknet; a d2ext checkpoint with --to-darknet")
    parser.add_argument("--output", help="Detectron2 checkpoint to write (.pth); Darknet .weights with --to-darknet")
    parser.add_argument("--cfg", help="darknet: the Darknet .cfg of --input (import), or the .cfg to "
                        "write beside --output (--to-darknet; default: OUTPUT with .cfg)")
    parser.add_argument("--config-file", help="--to-darknet: the d2ext YAML the checkpoint was trained with; "
                        "import: where to write the matching d2ext YAML (default: OUTPUT with .yaml)")
    parser.add_argument("--to-darknet", action="store_true",
                        help="export a d2ext YOLOv3 / yolov3-tiny / YOLOv2 checkpoint to Darknet .cfg + .weights")
    parser.add_argument("--list", action="store_true", help="list the registered architectures and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.to_darknet or args.arch == "darknet":
        if not (args.input and args.output):
            parser.error("--input and --output are required")
        if args.to_darknet and not args.config_file:
            parser.error("--to-darknet needs --config-file (the d2ext YAML of the checkpoint)")
        if not args.to_darknet and not args.cfg:
            parser.error("--arch darknet needs --cfg (the Darknet .cfg of --input)")
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return _darknet(args)
        except Exception as e:  # noqa: BLE001  (one line for the user, the traceback with --debug)
            from d2ext.modeling.darknet_weights import DarknetFormatError

            if args.debug or not isinstance(e, (DarknetFormatError, OSError, ValueError, KeyError)):
                raise
            raise SystemExit(f"convert_weights: error: {e}")
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.modeling.weight_import import get_weight_converter, list_weight_converters

    names = list_weight_converters()
    if args.list:
        print("\n".join(names + ["darknet (--cfg X.cfg --input X.weights)"]))
        return 0
    if not (args.arch and args.input and args.output):
        parser.error("--arch, --input and --output are required")
    if args.arch not in names:
        parser.error(f"unknown --arch {args.arch!r}; registered: {', '.join(names)}, darknet")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        state_dict = load_state_dict(args.input)
    except (ValueError, FileNotFoundError) as e:  # refused / unreadable input: one line
        raise SystemExit(f"convert_weights: error: {e}")
    try:
        converted = get_weight_converter(args.arch)(state_dict)
    except KeyError as e:
        raise SystemExit(f"{args.input}: {e.args[0] if e.args else e}")
    save_checkpoint(converted, args.output)
    num = sum(v.numel() for k, v in converted.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    logger.info(f"{args.arch}: {len(converted)} tensors ({num:,} parameters) -> {args.output}")
    return 0


def _darknet(args) -> int:
    """Darknet .cfg + .weights -> d2ext checkpoint + YAML, or the reverse (--to-darknet)."""
    from detectron2.modeling import build_model

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.core import atomic_write_text, check_outputs
    from d2ext.engine import setup_cfg
    from d2ext.modeling import darknet_weights as dw

    if args.to_darknet:
        cfg = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu"])
        model = build_model(cfg).eval()
        from d2ext.checkpoint import load_torch_weights

        state = load_torch_weights(args.input)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"{args.input}: does not fit {args.config_file} (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
        size = int(cfg.INPUT.MIN_SIZE_TEST)
        text = dw.darknet_cfg_text_of_model(model, cfg, size, size)
        cfg_out = args.cfg or os.path.splitext(args.output)[0] + ".cfg"
        check_outputs([args.input, args.config_file], [args.output, cfg_out], "convert_weights")
        specs = dw.conv_specs(dw.parse_darknet_cfg_text(text, cfg_out), cfg_out)
        dw.write_darknet_weights(args.output, specs, dw.export_darknet_weights(model))
        atomic_write_text(cfg_out, text)
        logger.info(f"{args.input}: {len(specs)} convolutions -> {args.output} + {cfg_out}")
        return 0

    yaml_out = args.config_file or os.path.splitext(args.output)[0] + ".yaml"
    check_outputs([args.input, args.cfg], [args.output, yaml_out], "convert_weights")
    sections = dw.parse_darknet_cfg(args.cfg)
    layout, opts = dw.d2ext_opts_from_darknet(sections, args.cfg)
    cfg = setup_cfg(dw.layout_config(layout), ["MODEL.DEVICE", "cpu"] + opts)
    model = build_model(cfg).eval()
    net = sections[0]
    expected = dw.parse_darknet_cfg_text(
        dw.darknet_cfg_text_of_model(model, cfg, int(net.get("height", 416)), int(net.get("width", 416))))
    dw.check_same_structure(sections, expected, args.cfg)
    specs = dw.conv_specs(sections, args.cfg)
    header, tensors = dw.read_darknet_weights(args.input, specs)
    dw.load_darknet_weights(model, specs, tensors, args.input)
    save_checkpoint({k: v for k, v in model.state_dict().items() if not k.startswith("anchors_")}, args.output)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = os.path.abspath(args.output)
    atomic_write_text(yaml_out, cfg.dump())
    n = sum(p.numel() for p in model.parameters())
    logger.info(f"darknet {layout} (weights v{header[0]}.{header[1]}, seen {header[3]}): {len(specs)} "
                f"convolutions, {n:,} parameters -> {args.output}; d2ext config -> {yaml_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
