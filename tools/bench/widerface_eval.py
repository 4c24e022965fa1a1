"""WIDER Face evaluation speed: d2ext's vectorised protocol vs the per-prediction loop form.

Row ``widerface_eval``: full val-size evaluation (the real val ground truth, 3,226 images, about
300 seeded synthetic predictions per image: jittered real faces, some missed, duplicates and
random false positives). It reports seconds and peak memory of
``d2ext.evaluation.widerface.evaluate_widerface`` and of :func:`reference_evaluation` below, a
plain per-prediction / per-threshold loop implementation of the official toolkit in the form its
widely used Python port takes (IoU matrix per image, then Python loops), and asserts that both
give identical APs. Each implementation runs in a forked child so its peak RSS is its own.
"""
import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from tools.bench.common import Result

SETTINGS = ("easy", "medium", "hard")


def add_arguments(parser):
    for args, kw in [
        (("--widerface-gt",), dict(default=None, help="folder of wider_*_val.mat (widerface_eval; "
                                   "default $D2EXT_SHARED_DATA/widerface/eval_tools/ground_truth)")),
        (("--widerface-images",), dict(type=int, default=0,
                                       help="widerface_eval: first N val images only (0 = all)")),
        (("--widerface-preds",), dict(type=int, default=300,
                                      help="widerface_eval: predictions per image")),
        (("--widerface-seed",), dict(type=int, default=0, help="widerface_eval: RNG seed")),
    ]:
        try:
            parser.add_argument(*args, **kw)
        except argparse.ArgumentError:
            pass


# ---------------------------------------------------------------------------------------------
# The per-prediction loop form of the protocol (kept here as the comparison baseline)
# ---------------------------------------------------------------------------------------------
def _ref_overlaps(pred_xyxy, gt_xyxy):
    """(P, G) pixel-inclusive IoU, one image (what the port's Cython ``bbox_overlaps`` does)."""
    iw = (np.minimum(pred_xyxy[:, None, 2], gt_xyxy[None, :, 2])
          - np.maximum(pred_xyxy[:, None, 0], gt_xyxy[None, :, 0]) + 1)
    ih = (np.minimum(pred_xyxy[:, None, 3], gt_xyxy[None, :, 3])
          - np.maximum(pred_xyxy[:, None, 1], gt_xyxy[None, :, 1]) + 1)
    pa = (pred_xyxy[:, 2] - pred_xyxy[:, 0] + 1) * (pred_xyxy[:, 3] - pred_xyxy[:, 1] + 1)
    ga = (gt_xyxy[:, 2] - gt_xyxy[:, 0] + 1) * (gt_xyxy[:, 3] - gt_xyxy[:, 1] + 1)
    out = np.zeros(iw.shape)
    ok = (iw > 0) & (ih > 0)
    inter = iw * ih
    ua = pa[:, None] + ga[None, :] - inter
    out[ok] = inter[ok] / ua[ok]
    return out


def _ref_image_eval(pred, gt, ignore, iou_thresh):
    _pred = pred.copy()
    _gt = gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = _ref_overlaps(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        pred_recall[h] = len(np.where(recall_list == 1)[0])
    return pred_recall, proposal_list


def _ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    pr_info = np.zeros((thresh_num, 2))
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[:r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def _ref_voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_evaluation(predictions, gt, iou_thresh=0.5, thresh_num=1000):
    """The protocol as the Python port of the toolkit computes it, on ``{name: (P, 5)}`` and a
    ``WiderFaceGT``. Returns {setting: {"ap", "precision", "recall"}}."""
    # read_pred: stable sort by descending score, as the MATLAB toolkit does when reading
    preds = {}
    for name, p in predictions.items():
        p = np.asarray(p, dtype=np.float64).reshape(-1, 5)
        preds[name] = p[np.argsort(-p[:, 4], kind="stable")].copy()
    # norm_score over the images of the ground truth
    max_score, min_score = 0.0, 1.0
    for name in gt.names:
        v = preds.get(name)
        if v is None or len(v) == 0:
            continue
        max_score = max(np.max(v[:, -1]), max_score)
        min_score = min(np.min(v[:, -1]), min_score)
    diff = max_score - min_score
    for name in gt.names:
        v = preds.get(name)
        if v is not None and len(v):
            v[:, -1] = (v[:, -1] - min_score) / diff
    out = {}
    for setting in gt.settings:
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2))
        for i, name in enumerate(gt.names):
            gt_boxes = gt.image_boxes(i)
            keep_index = np.flatnonzero(gt.keep[setting][gt.offsets[i]:gt.offsets[i + 1]]) + 1
            count_face += len(keep_index)
            pred_info = preds.get(name, np.zeros((0, 5)))
            if len(gt_boxes) == 0 or len(pred_info) == 0:
                continue
            ignore = np.zeros(gt_boxes.shape[0])
            if len(keep_index) != 0:
                ignore[keep_index - 1] = 1
            pred_recall, proposal_list = _ref_image_eval(pred_info, gt_boxes, ignore, iou_thresh)
            pr_curve += _ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr_curve[:, 1] / pr_curve[:, 0]
            recall = pr_curve[:, 1] / count_face
        out[setting] = {"ap": float(_ref_voc_ap(recall, precision)), "precision": precision,
                        "recall": recall}
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic predictions
# ---------------------------------------------------------------------------------------------
def synthetic_predictions(gt, preds_per_image=300, seed=0):
    """Seeded predictions per image: most real faces found (small ones less often) with jittered
    boxes, some found twice, random false positives up to ``preds_per_image``. Scores of hits
    grow with face size; false positives score low on average. Returns {name: (P, 5)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(gt.names):
        g = gt.image_boxes(i)
        g = g[(g[:, 2] > 0) & (g[:, 3] > 0)]
        size = np.sqrt(g[:, 2] * g[:, 3]) if len(g) else np.zeros(0)
        p_found = 1 / (1 + np.exp(-(np.log(np.maximum(size, 1)) - np.log(12)) * 2.5))
        found = g[rng.random(len(g)) < p_found]
        fsize = np.sqrt(found[:, 2] * found[:, 3])
        dup = found[rng.random(len(found)) < 0.1]
        hits = np.concatenate([found, dup])
        hsize = np.concatenate([fsize, np.sqrt(dup[:, 2] * dup[:, 3])])
        jit = rng.normal(0, 0.12, (len(hits), 4)) * np.repeat(hsize[:, None], 4, axis=1)
        hits = hits + jit
        hits[:, 2:] = np.maximum(hits[:, 2:], 1)
        hit_scores = 1 / (1 + np.exp(-(np.log(hsize) - np.log(10)) * 1.5 - rng.normal(0, 1, len(hits))))
        n_fp = max(preds_per_image - len(hits), 20)
        height = max(1024.0, float((g[:, 1] + g[:, 3]).max()) if len(g) else 0.0)
        wh = np.exp(rng.uniform(np.log(6), np.log(300), (n_fp, 1))) * rng.uniform(0.8, 1.25, (n_fp, 2))
        xy = rng.uniform(0, 1, (n_fp, 2)) * (np.array([1024.0, height]) - wh)
        fp_scores = rng.beta(1.2, 6, n_fp)
        boxes = np.concatenate([hits, np.concatenate([xy, wh], axis=1)])
        scores = np.concatenate([hit_scores, fp_scores])
        p = np.concatenate([np.round(boxes, 1), np.round(scores, 6)[:, None]], axis=1)
        out[name] = p[rng.permutation(len(p))]  # unsorted, as real files may be
    return out


# ---------------------------------------------------------------------------------------------
def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(fn, queue):
    start_rss = _rss_mb()
    t0 = time.perf_counter()
    res = fn()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    queue.put((secs, peak - start_rss, res))


def _run_forked(fn):
    """(seconds, peak RSS above the fork point in MiB, result) of ``fn()`` in a forked child."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark child exited with {proc.exitcode}")
    return out


def _default_gt_dir():
    root = os.environ.get("D2EXT_SHARED_DATA",
                          str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    return os.path.join(root, "widerface", "eval_tools", "ground_truth")


def bench_widerface_eval(args):
    """WIDER Face easy/medium/hard evaluation, val size: vectorised vs per-prediction loop."""
    from d2ext.evaluation.widerface import evaluate_widerface, load_widerface_gt

    gt_dir = getattr(args, "widerface_gt", None) or _default_gt_dir()
    if not os.path.isfile(os.path.join(gt_dir, "wider_face_val.mat")):
        print(f"widerface_eval: skipped, {gt_dir}/wider_face_val.mat not found", file=sys.stderr)
        return [Result("widerface_eval", float("nan"), "s", notes=f"skipped: no ground truth in {gt_dir}")]
    gt = load_widerface_gt(gt_dir)
    n_img = getattr(args, "widerface_images", 0) or 0
    if n_img:
        gt = gt.select(gt.names[:n_img])
    preds = synthetic_predictions(gt, getattr(args, "widerface_preds", 300),
                                  getattr(args, "widerface_seed", 0))
    n_pred = sum(len(p) for p in preds.values())

    def ours():
        r = evaluate_widerface(preds, gt)
        return {s: (r[s]["ap"], r[s]["precision"], r[s]["recall"]) for s in r}

    def loop():
        r = reference_evaluation(preds, gt)
        return {s: (r[s]["ap"], r[s]["precision"], r[s]["recall"]) for s in r}

    t_ours, mem_ours, res_ours = _run_forked(ours)
    t_loop, mem_loop, res_loop = _run_forked(loop)
    for s in SETTINGS:
        ap_o, prec_o, rec_o = res_ours[s]
        ap_l, prec_l, rec_l = res_loop[s]
        if ap_o != ap_l or not np.array_equal(rec_o, rec_l):
            raise AssertionError(f"widerface_eval: {s} AP differs: vectorised {ap_o!r}, loop {ap_l!r}")
        defined = ~np.isnan(prec_l)
        if not np.array_equal(prec_o[defined], prec_l[defined]):
            raise AssertionError(f"widerface_eval: {s} precision curves differ")
    aps = ", ".join(f"{s} {res_ours[s][0]:.4f}" for s in SETTINGS)
    size = f"{gt.num_images} images, {n_pred} predictions"
    peer = "per-prediction loop (Python-port form)"
    return [
        Result("widerface_eval", t_ours, "s", peer, t_loop, notes=f"{size}; identical AP: {aps}"),
        Result("widerface_eval_speedup", t_loop / t_ours, "x", notes="loop seconds / vectorised seconds"),
        Result("widerface_eval_peak_mem", mem_ours, "MiB", peer, mem_loop,
               notes="peak RSS above the process baseline"),
    ] + [Result(f"widerface_eval_ap_{s}", res_ours[s][0], "AP", notes="synthetic predictions")
         for s in SETTINGS]


ROWS = {"widerface_eval": bench_widerface_eval}
