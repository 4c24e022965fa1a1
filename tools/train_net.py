#!/usr/bin/env python
"""Train or evaluate any d2ext / Detectron2 model with Detectron2's DefaultTrainer.

    tools/train_net.py --config-file configs/shapes/retinanet_R18_FPN.yaml [--resume] \
        [--eval-only] [--num-gpus N] [KEY VALUE ...]

Works on CPU: ``--num-gpus 2`` without a GPU starts 2 CPU processes over gloo.
Datasets: the synthetic ones register on ``import d2ext``; real ones are registered from
``$D2EXT_DATA`` / ``../shared/data`` by ``converters.builtin`` (lazily: files are read on use).
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.engine import Trainer, setup_cfg  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from tools._common import register_real_datasets  # noqa: E402


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    register_real_datasets()
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    logging.getLogger("detectron2").info("Command Line Args: %s", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
