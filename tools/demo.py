#!/usr/bin/env python
"""The d2ext demo: train a detector on built-in synthetic shapes on the CPU, evaluate, draw.

    make demo            # = tools/demo.py --output output/demo

No downloads and no external data: the seeded synthetic dataset (``shapes_train`` /
``shapes_val``: circles, squares and triangles on textured backgrounds) is generated on first
use. Writes the training run (checkpoints, metrics.json, log) and ``vis/*.png`` (predictions on
held-out images) under ``--output``; the last line printed is ``demo AP50: <number>``.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import setup_tool_logger  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "shapes", "retinanet_R18_FPN.yaml")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--num-vis", type=int, default=8, help="held-out images to draw")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    from d2ext.core import atomic_save_image
    from d2ext.engine import Predictor, Trainer, setup_cfg
    from d2ext.utils.visualization import draw_instances
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils

    logger = setup_tool_logger()

    cfg = setup_cfg(args.config_file, list(args.opts) + ["OUTPUT_DIR", args.output])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    train_s = time.perf_counter() - t0
    results = Trainer.test(cfg, trainer.model)
    bbox = results["bbox"] if "bbox" in results else next(iter(results.values()))["bbox"]

    # Draw predictions of the final weights on held-out images.
    vis_cfg = cfg.clone()
    vis_cfg.defrost()
    vis_cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    vis_cfg.freeze()
    predictor = Predictor(vis_cfg)
    test_name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(test_name)
    vis_dir = os.path.join(args.output, "vis")
    os.makedirs(vis_dir, exist_ok=True)
    for record in DatasetCatalog.get(test_name)[: args.num_vis]:
        outputs = predictor(record["file_name"])
        img = utils.read_image(record["file_name"], "RGB")
        name = os.path.splitext(os.path.basename(record["file_name"]))[0]
        atomic_save_image(os.path.join(vis_dir, f"{name}.png"),
                          draw_instances(img, outputs["instances"], metadata, 0.5, scale=2.0))
    logger.info("training took %.0f s", train_s)
    print(f"prediction images: {os.path.abspath(vis_dir)}/*.png")
    print(f"demo AP: {bbox['AP']:.1f}")
    print(f"demo AP50: {bbox['AP50']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
