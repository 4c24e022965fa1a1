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
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.core import atomic_path  # noqa: E402
from d2ext.modeling.weight_import import WEIGHT_CONVERTERS, get_weight_converter  # noqa: E402

logger = logging.getLogger("d2ext.convert_weights")


def load_state_dict(path: str):
    """The tensors of a torchvision checkpoint file (bare or wrapped state_dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
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
    with atomic_path(path) as tmp:
        torch.save({"model": state_dict, "__author__": "d2ext"}, tmp)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="registered converter name (see --list)")
    parser.add_argument("--input", help="torchvision state_dict file (.pth)")
    parser.add_argument("--output", help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument("--list", action="store_true", help="list the registered architectures and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(sorted(WEIGHT_CONVERTERS)))
        return 0
    if not (args.arch and args.input and args.output):
        parser.error("--arch, --input and --output are required")
    if args.arch not in WEIGHT_CONVERTERS:
        parser.error(f"unknown --arch {args.arch!r}; registered: {', '.join(sorted(WEIGHT_CONVERTERS))}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    state_dict = load_state_dict(args.input)
    try:
        converted = get_weight_converter(args.arch)(state_dict)
    except KeyError as e:
        raise SystemExit(f"{args.input}: {e.args[0] if e.args else e}")
    save_checkpoint(converted, args.output)
    num = sum(v.numel() for k, v in converted.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    logger.info(f"{args.arch}: {len(converted)} tensors ({num:,} parameters) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
