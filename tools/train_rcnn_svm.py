#!/usr/bin/env python
"""R-CNN's third stage: linear SVMs (hard-negative mining) and box regressors on the features of
the fine-tuned network, stored in the model's checkpoint.

    tools/train_net.py --config-file configs/bccd_wbc1/rcnn_R18.yaml OUTPUT_DIR out/rcnn
    tools/train_rcnn_svm.py --config-file configs/bccd_wbc1/rcnn_R18.yaml \
        MODEL.WEIGHTS out/rcnn/model_final.pth OUTPUT_DIR out/rcnn          # -> out/rcnn/model_svm.pth
    tools/train_net.py --config-file configs/bccd_wbc1/rcnn_R18.yaml --eval-only \
        MODEL.WEIGHTS out/rcnn/model_svm.pth

Per class (Girshick et al. 2014, Sec. 2.3 and App. B/C): positives are the ground-truth boxes,
negatives the proposals with IoU < ``MODEL.RCNN_CLASSIC.NEG_IOU`` (0.3) with every box of the
class; features are the input of the fine-tuned classifier's last layer, scaled to mean norm 20;
:func:`d2ext.modeling.meta_arch.rcnn_classic.train_svm_hard_negatives` fits the SVM. Box
regression: proposals with IoU >= ``BBOX_REG_IOU`` (0.6) with a box of the class, Detectron2's
``Box2BoxTransform`` deltas as targets, ridge penalty ``BBOX_REG_LAMBDA``. Images are the
``DATASETS.TRAIN`` sets with ``DATASETS.PROPOSAL_FILES_TRAIN``, at the test resolution, unflipped.
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402

logger = logging.getLogger("d2ext.rcnn_svm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", help="checkpoint to write (default: OUTPUT_DIR/model_svm.pth)")
    p.add_argument("--max-images", type=int, help="use only the first N training images (CPU time)")
    add_debug_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return p


def collect_features(cfg, model, max_images=None):
    """Per class k: (positive features, negative features, regression features, deltas) as
    numpy arrays, from the DATASETS.TRAIN images (the first ``max_images`` when given)."""
    import numpy as np
    import torch
    from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
    from detectron2.data import transforms as T
    from detectron2.structures import Boxes, pairwise_iou

    rc = cfg.MODEL.RCNN_CLASSIC
    dicts = get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN), filter_empty=False,
                                        proposal_files=list(cfg.DATASETS.PROPOSAL_FILES_TRAIN))
    dicts = dicts[:max_images] if max_images else dicts
    mapper = DatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)], image_format=cfg.INPUT.FORMAT,
        precomputed_proposal_topk=cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST)
    loader = build_detection_test_loader(dataset=dicts, mapper=mapper, num_workers=0)
    k_all = model.num_classes
    out = {k: {"pos": [], "neg": [], "reg_x": [], "reg_y": []} for k in range(k_all)}
    t0 = time.perf_counter()
    with torch.no_grad():
        for n, batch in enumerate(loader, 1):
            x = batch[0]
            images = model.preprocess_image(batch)
            props = model.candidate_boxes(x, images.image_sizes[0])
            gt = x["instances"].gt_boxes.tensor.to(props.device)
            gt_cls = x["instances"].gt_classes
            _, feats = model.crop_logits_and_features(images, [torch.cat([gt, props])])
            feats = feats.cpu().numpy()
            f_gt, f_prop = feats[: len(gt)], feats[len(gt):]
            for k in range(k_all):
                sel = (gt_cls == k).nonzero().flatten()
                out[k]["pos"].append(f_gt[sel.numpy()])
                if len(sel) == 0:
                    out[k]["neg"].append(f_prop)
                    continue
                iou = pairwise_iou(Boxes(gt[sel]), Boxes(props))  # (G_k, P)
                best, idx = iou.max(dim=0)
                out[k]["neg"].append(f_prop[(best < rc.NEG_IOU).numpy()])
                reg = (best >= rc.BBOX_REG_IOU)
                if reg.any():
                    deltas = model.box2box.get_deltas(props[reg], gt[sel][idx[reg]])
                    out[k]["reg_x"].append(f_prop[reg.numpy()])
                    out[k]["reg_y"].append(deltas.cpu().numpy())
            if n % 25 == 0:
                logger.info("features of %d/%d images, %.0f s", n, len(dicts), time.perf_counter() - t0)
    d = feats.shape[1]
    return {k: {name: (np.concatenate(v) if v else np.zeros((0, 4 if name == "reg_y" else d), np.float32))
                for name, v in parts.items()} for k, parts in out.items()}


def fit_svm_stage(cfg, model, max_images=None) -> dict:
    """Fit and install the SVMs and box regressors in ``model`` (an RCNNClassic); return counts."""
    import numpy as np

    from d2ext.modeling.meta_arch.rcnn_classic import FEATURE_NORM, fit_box_regressor, train_svm_hard_negatives

    rc = cfg.MODEL.RCNN_CLASSIC
    data = collect_features(cfg, model, max_images)
    all_feats = np.concatenate([np.concatenate([p["pos"], p["neg"]]) for p in data.values()])
    scale = FEATURE_NORM / max(float(np.linalg.norm(all_feats, axis=1).mean()), 1e-12)
    k_all, d = model.num_classes, all_feats.shape[1]
    svm_w, svm_b = np.zeros((k_all, d), np.float32), np.zeros(k_all, np.float32)
    reg_w, reg_b = np.zeros((k_all, 4, d), np.float32), np.zeros((k_all, 4), np.float32)
    counts = {}
    for k, p in data.items():
        svm_w[k], svm_b[k] = train_svm_hard_negatives(p["pos"] * scale, p["neg"] * scale, C=rc.SVM_C,
                                                      rounds=rc.HARD_NEGATIVE_ROUNDS)
        if len(p["reg_x"]):
            reg_w[k], reg_b[k] = fit_box_regressor(p["reg_x"] * scale, p["reg_y"], rc.BBOX_REG_LAMBDA)
        counts[k] = {"positives": len(p["pos"]), "negatives": len(p["neg"]), "regression": len(p["reg_x"])}
    model.load_svm_stage(svm_w, svm_b, reg_w, reg_b, scale)
    return counts


def main(args) -> int:
    import torch
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.checkpoint import SafeCheckpointer
    from d2ext.core import atomic_path, setup_logger
    from d2ext.engine import Trainer, setup_cfg
    from tools._common import register_real_datasets

    setup_logger("d2ext")
    register_real_datasets()
    cfg = setup_cfg(args.config_file, args.opts)
    if cfg.MODEL.META_ARCHITECTURE != "RCNNClassic":
        raise ValueError(f"{args.config_file}: META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}, "
                         f"the SVM stage needs RCNNClassic")
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("give the fine-tuned network: MODEL.WEIGHTS <stage-2 model_final.pth>")
    model = Trainer.build_model(cfg).eval()
    SafeCheckpointer(model, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL).load(cfg.MODEL.WEIGHTS)
    t0 = time.perf_counter()
    counts = fit_svm_stage(cfg, model, args.max_images)
    out = args.output or os.path.join(cfg.OUTPUT_DIR, "model_svm.pth")
    with atomic_path(out) as tmp:
        torch.save({"model": model.state_dict()}, tmp)
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s): {counts}")
    return 0


if __name__ == "__main__":
    parsed = build_parser().parse_args()
    sys.exit(run_tool(main, parsed, "train_rcnn_svm"))
