#!/usr/bin/env python
"""Train or evaluate any d2ext / Detectron2 model with Detectron2's DefaultTrainer.

    tools/train_net.py --config-file configs/shapes/retinanet_R18_FPN.yaml [--resume] \
        [--eval-only] [--num-gpus N] [KEY VALUE ...]

Works on CPU: ``--num-gpus 2`` without a GPU starts 2 CPU processes over gloo.
Datasets: d2ext's synthetic ones are always registered; the real ones (BCCD, WIDER Face, WBC, COCO
keypoints) are registered from ``$D2EXT_SHARED_DATA`` (default ``../shared/data`` beside the
checkout) by ``converters.builtin``, lazily: files are read on use. An entry of ``DATASETS.TRAIN`` /
``DATASETS.TEST`` may also be the path of a COCO JSON file (see README, "Train on your own data").
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, default_argument_parser, run_tool  # noqa: E402


def setup(args):
    from d2ext.engine import setup_cfg
    from detectron2.engine import default_setup

    cfg = setup_cfg(args.config_file, args.opts, image_root=args.image_root)
    default_setup(cfg, args)
    return cfg


def main(args):
    from d2ext.engine import Trainer
    from d2ext.checkpoint import SafeCheckpointer
    from detectron2.evaluation import verify_results
    from detectron2.utils import comm
    from tools._common import register_real_datasets

    register_real_datasets()
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _launch(args):
    import logging

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from detectron2.engine import launch

    logging.getLogger("detectron2").info("Command Line Args: %s", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


def cli(argv=None):
    parser = default_argument_parser(__doc__)
    add_debug_flag(parser)
    parser.add_argument("--image-root", default=None,
                        help="image folder of DATASETS entries that are COCO JSON paths (default: the "
                             "folder the converter recorded in the file, else the file's own folder)")
    args = parser.parse_args(argv)
    sys.exit(run_tool(_launch, args, "train_net"))


if __name__ == "__main__":
    cli()
