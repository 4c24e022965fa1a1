"""WIDER Face evaluation speed: ``tools/eval_widerface.py`` vs the toolkit's Python port, whole processes.

Row ``widerface_eval``: the real val ground truth (3,226 images) and seeded synthetic predictions
(``--widerface-preds`` per image, default 60: jittered real faces, some missed, duplicates and
random false positives) written in the official ``<event>/<image>.txt`` layout. Timed as whole
processes, start-up and imports included, each on the same folder:

- ours: ``tools/eval_widerface.py --pred DIR --gt DIR --json F`` (best of ``--widerface-repeats``);
- the reference: :func:`reference_main` below (``python -m tools.bench.widerface_eval --reference``),
  the widely used Python port of the official toolkit in its own form: ``scipy.io.loadmat`` of the
  four .mat files, prediction files read line by line, a Python loop per prediction over a
  per-image IoU matrix (the port's Cython ``bbox_overlaps`` is stood in for by the same
  computation in NumPy, one call per image) and a loop over the 1,000 thresholds per image.

The row fails unless both give identical easy / medium / hard AP (exact float equality).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench.common import Result, run_measured

SETTINGS = ("easy", "medium", "hard")
REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser):
    parser.add_argument("--widerface-gt", default=None,
                        help="widerface_eval: folder of wider_*_val.mat "
                             "(default $D2EXT_SHARED_DATA/widerface/eval_tools/ground_truth)")
    parser.add_argument("--widerface-images", type=int, default=0,
                        help="widerface_eval: first N val images only (0 = all)")
    parser.add_argument("--widerface-preds", type=int, default=60,
                        help="widerface_eval: predictions per image")
    parser.add_argument("--widerface-seed", type=int, default=0, help="widerface_eval: RNG seed")
    parser.add_argument("--widerface-repeats", type=int, default=3,
                        help="widerface_eval: runs of our tool (the best is kept; the reference runs once)")


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
# The reference as a whole process (the port's reading code, then the loops above)
# ---------------------------------------------------------------------------------------------
def _port_gt(gt_dir):
    """``get_gt_boxes`` of the port (every variable of the four files through scipy), laid out as
    a ``WiderFaceGT`` so :func:`reference_evaluation` can walk it."""
    from scipy.io import loadmat

    from d2ext.evaluation.widerface_protocol import WiderFaceGT

    gt = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    subsets = {s: loadmat(os.path.join(gt_dir, f"wider_{s}_val.mat"))["gt_list"] for s in SETTINGS}
    events, names, boxes = [], [], []
    keep = {s: [] for s in SETTINGS}
    for i in range(len(gt["event_list"])):
        event = str(gt["event_list"][i][0][0])
        for j in range(len(gt["file_list"][i][0])):
            b = gt["face_bbx_list"][i][0][j][0].astype("float")
            events.append(event)
            names.append(str(gt["file_list"][i][0][j][0][0]))
            boxes.append(b.reshape(-1, 4))
            for s in SETTINGS:
                m = np.zeros(len(b), bool)
                idx = subsets[s][i][0][j][0]
                if len(idx):
                    m[idx.ravel().astype(int) - 1] = True
                keep[s].append(m)
    return WiderFaceGT(events=events, names=names, boxes=np.concatenate(boxes),
                       offsets=np.cumsum([0] + [len(b) for b in boxes]),
                       keep={s: np.concatenate(v) for s, v in keep.items()})


def _port_read_pred_file(filepath):
    with open(filepath, "r") as f:
        lines = f.readlines()
        img_file = lines[0].rstrip("\n\r")
        lines = lines[2:]
    boxes = np.array(list(map(lambda x: [float(a) for a in x.rstrip("\r\n").split(" ")], lines))).astype("float")
    return img_file.split("/")[-1], boxes


def _port_get_preds(pred_dir):
    boxes = {}
    for event in os.listdir(pred_dir):
        event_dir = os.path.join(pred_dir, event)
        for imgtxt in os.listdir(event_dir):
            name, b = _port_read_pred_file(os.path.join(event_dir, imgtxt))
            boxes[name[:-4] if name.endswith(".jpg") else name] = b
    return boxes


def reference_main(pred_dir, gt_dir, out_json):
    gt = _port_gt(gt_dir)
    preds = _port_get_preds(pred_dir)
    res = reference_evaluation(preds, gt)
    with open(out_json, "w") as f:
        json.dump({s: res[s]["ap"] for s in SETTINGS}, f)


# ---------------------------------------------------------------------------------------------
def _default_gt_dir():
    from d2ext.core import data_root

    return str(data_root() / "widerface" / "eval_tools" / "ground_truth")


def bench_widerface_eval(args):
    """WIDER Face easy/medium/hard evaluation of a val-size prediction folder: whole-process time
    of tools/eval_widerface.py vs the toolkit's Python port; identical AP required."""
    from d2ext.evaluation.widerface_protocol import load_widerface_gt, write_widerface_predictions

    gt_dir = getattr(args, "widerface_gt", None) or _default_gt_dir()
    if not os.path.isfile(os.path.join(gt_dir, "wider_face_val.mat")):
        print(f"widerface_eval: skipped, {gt_dir}/wider_face_val.mat not found", file=sys.stderr)
        return [Result("widerface_eval", float("nan"), "s", notes=f"skipped: no ground truth in {gt_dir}")]
    gt = load_widerface_gt(gt_dir)
    n_img = getattr(args, "widerface_images", 0) or 0
    subset = bool(n_img)
    with tempfile.TemporaryDirectory(prefix="d2ext_widerface_eval_") as tmp:
        if subset:  # the first N images only: a ground-truth folder the reference can read too
            gt = gt.select(gt.names[:n_img])
            gt_dir = _write_subset_gt(gt, os.path.join(tmp, "gt"), gt_dir)
        preds = synthetic_predictions(gt, args.widerface_preds, args.widerface_seed)
        pred_dir = os.path.join(tmp, "pred")
        write_widerface_predictions(pred_dir, preds, dict(zip(gt.names, gt.events)))
        n_pred = sum(len(p) for p in preds.values())

        ours_json = os.path.join(tmp, "ours.json")
        ours_cmd = [sys.executable, str(REPO / "tools" / "eval_widerface.py"), "--pred", pred_dir,
                    "--gt", gt_dir, "--json", ours_json]
        runs = []
        # a fresh cache folder: the first run parses the .mat files (cold), the next ones load
        # the parsed ground truth from the cache, as every later evaluation does
        cache_env = {"D2EXT_CACHE": os.path.join(tmp, "cache")}
        for _ in range(max(1, args.widerface_repeats)):
            code, secs, peak = run_measured(ours_cmd, os.path.join(tmp, "ours.log"), cwd=str(REPO), env=cache_env)
            if code != 0:
                raise RuntimeError(f"widerface_eval: eval_widerface.py exited {code}: "
                                   + Path(tmp, "ours.log").read_text()[-2000:])
            runs.append((secs, peak))
        t_cold = runs[0][0]
        t_ours, mem_ours = min(runs)
        ref_json = os.path.join(tmp, "ref.json")
        ref_cmd = [sys.executable, "-m", "tools.bench.widerface_eval", "--reference", pred_dir, gt_dir, ref_json]
        code, t_ref, mem_ref = run_measured(ref_cmd, os.path.join(tmp, "ref.log"), cwd=str(REPO))
        if code != 0:
            raise RuntimeError(f"widerface_eval: reference exited {code}: " + Path(tmp, "ref.log").read_text()[-2000:])
        ap_ours = json.loads(Path(ours_json).read_text())
        ap_ref = json.loads(Path(ref_json).read_text())
        for s in SETTINGS:
            if ap_ours[s] != ap_ref[s]:
                raise AssertionError(f"widerface_eval: {s} AP differs: ours {ap_ours[s]!r}, reference {ap_ref[s]!r}")
        t_help = min(_seconds([sys.executable, str(REPO / "tools" / "eval_widerface.py"), "--help"])
                     for _ in range(3))

    aps = ", ".join(f"{s} {ap_ours[s]:.4f}" for s in SETTINGS)
    size = f"{gt.num_images} images, {n_pred} predictions ({args.widerface_preds}/image)"
    peer = "toolkit's Python port (whole process)"
    return [
        Result("widerface_eval", t_ours, "s", peer, t_ref,
               notes=f"whole process, best of {len(runs)}; {size}; identical AP: {aps}"),
        Result("widerface_eval_speedup", t_ref / t_ours, "x", notes="reference seconds / ours; goal >= 30"),
        Result("widerface_eval_cold", t_cold, "s", peer, t_ref,
               notes="first run, .mat files parsed (no ground-truth cache yet)"),
        Result("widerface_eval_peak_mem", mem_ours, "MiB", peer, mem_ref, notes="peak RSS of each process"),
        Result("widerface_eval_help", t_help, "s", notes="tools/eval_widerface.py --help, best of 3; goal well under 1 s"),
    ] + [Result(f"widerface_eval_ap_{s}", ap_ours[s], "AP", notes="synthetic predictions")
         for s in SETTINGS]


def _seconds(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _write_subset_gt(gt, out_dir, full_dir):
    """The four .mat files restricted to ``gt``'s images (scipy.io.savemat; benchmark only)."""
    from scipy.io import savemat

    os.makedirs(out_dir)
    event_names = list(dict.fromkeys(gt.events))
    per_event = {e: [i for i in range(gt.num_images) if gt.events[i] == e] for e in event_names}

    def cells(values):
        out = np.empty((len(values), 1), dtype=object)
        for k, v in enumerate(values):
            out[k, 0] = v
        return out

    event_list = cells(event_names)
    file_list = cells([cells([gt.names[i] for i in per_event[e]]) for e in event_names])
    bbx = cells([cells([gt.image_boxes(i) for i in per_event[e]]) for e in event_names])
    savemat(os.path.join(out_dir, "wider_face_val.mat"),
            {"event_list": event_list, "file_list": file_list, "face_bbx_list": bbx})
    for s in SETTINGS:
        lists = cells([cells([(np.flatnonzero(gt.keep[s][gt.offsets[i]:gt.offsets[i + 1]]) + 1)
                              .astype(np.float64).reshape(-1, 1) for i in per_event[e]])
                       for e in event_names])
        savemat(os.path.join(out_dir, f"wider_{s}_val.mat"),
                {"event_list": event_list, "file_list": file_list, "gt_list": lists})
    return out_dir


ROWS = {"widerface_eval": bench_widerface_eval}


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--reference":
    reference_main(*sys.argv[2:])
