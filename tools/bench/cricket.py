"""Cricket shots: image, pose and fused classifiers on one split; keypoint quality; synthetic poses.

    tools/benchmark.py cricket --root DIR [--keypoint-backend mediapipe] [--budget-min N] [--output O]
    tools/benchmark.py coco_kp_keypoints [--keypoint-backend mediapipe]
    tools/benchmark.py pose_synthetic pose_fused_synthetic

``cricket`` (a user's folder, one sub-folder per shot; ``--data`` works too): the group-aware
seeded split of ``converters.cricket``; keypoints of every image with ``tools/extract_keypoints.py
--backend B`` (resumable, kept under ``--output``); then three models, each trained with the
shared ``train_within_budget`` (same ``--budget-min``) and evaluated on the test split:
``cricket/resnet34_cls`` (image only, configs/cricket/resnet34_cls.yaml), ``cricket/pose_shot_head``
(pose only, pose_shot_head.yaml) and ``cricket/fused`` (fused_R34.yaml): test top-1 with the
confusion matrix (rows true class, columns predicted) in the notes; ``cricket/pose_coverage``: the
share of images where the backend found a person. It ends with the ``coco_kp_keypoints`` row.

``coco_kp_keypoints``: ``coco_kp_val/<backend>/oks_ap``, the backend's keypoints on the COCO
person-keypoints val subset (79 images, 68 people with keypoints; ``$D2EXT_SHARED_DATA/coco_kp``)
scored by Detectron2's ``COCOEvaluator`` (pycocotools OKS AP), and the share of annotated people
it finds (a prediction with OKS >= 0.5, one-to-one).

``pose_synthetic``: the shot head on synthetic stick-figure batsmen, torso-normalised keypoints
vs image coordinates, for several training-set sizes and a near -> far camera shift.
``pose_fused_synthetic``: the fused head vs the pose-only and image-only heads when each modality
holds different information, and handedness canonicalisation (train right-handed, test left).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, Result, row_output, train_within_budget

CRICKET_CONFIGS = {
    "cricket/resnet34_cls": "configs/cricket/resnet34_cls.yaml",
    "cricket/pose_shot_head": "configs/cricket/pose_shot_head.yaml",
    "cricket/fused": "configs/cricket/fused_R34.yaml",
}


def add_arguments(parser):
    parser.add_argument("--root", default=None,
                        help="cricket: folder with one sub-folder per shot class (or --data)")
    parser.add_argument("--keypoint-backend", default="mediapipe", choices=("mediapipe", "detectron2"),
                        help="cricket, coco_kp_keypoints: keypoint backend of tools/extract_keypoints.py")
    parser.add_argument("--keypoint-config", default="model_zoo:COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
                        help="keypoint backend detectron2: its config (file or model_zoo:<path>)")
    parser.add_argument("--keypoint-weights", default=None,
                        help="keypoint backend detectron2: its weights (user-given file)")


def _confusion_note(metrics):
    return f"classes {metrics.get('class_names', [])}; confusion (rows true, cols predicted) {metrics['confusion']}"


def _extract(args, root, out_file):
    cmd = [sys.executable, str(Path(REPO) / "tools" / "extract_keypoints.py"), "--backend", args.keypoint_backend,
           "--root", str(root), "--out", str(out_file)]
    if args.keypoint_backend == "detectron2":
        if not args.keypoint_weights:
            raise ValueError("--keypoint-backend detectron2 needs --keypoint-weights (or use mediapipe)")
        cmd += ["--config-file", args.keypoint_config, "--weights", args.keypoint_weights]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"keypoint extraction failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def _train_and_test(row, args, num_classes, out_dir):
    config = str(Path(REPO) / CRICKET_CONFIGS[row])
    key = "MODEL.POSE_SHOT.NUM_CLASSES" if "resnet34" not in row else "MODEL.CLASSIFIER.NUM_CLASSES"
    run = train_within_budget(config, os.path.join(out_dir, row.split("/")[1]), args.budget_min,
                              opts=[key, str(num_classes), "DATASETS.TRAIN", "('cricket_train',)",
                                    "DATASETS.TEST", "('cricket_test',)"])
    _, results = run.evaluate()
    metrics = json.loads((Path(run.output_dir) / "inference" / "cricket_test" / "metrics.json").read_text())
    return Result(row, results["classification"]["top1"], "%", notes=f"{run.note()}; " + _confusion_note(metrics))


def cricket(args):
    """Cricket shots (--root): image, pose and fused classifiers on the group-aware split (test
    top-1 + confusion), pose coverage, and the backend's OKS AP on COCO val."""
    from converters.cricket import convert_cricket

    root = args.root or getattr(args, "data", None)
    if not root:
        raise ValueError("benchmark cricket: --root DIR (one sub-folder per shot) is required")
    root = Path(root).resolve()
    out_dir = row_output(args, "cricket")
    os.makedirs(out_dir, exist_ok=True)
    kp_file = Path(out_dir) / f"keypoints_{args.keypoint_backend}.json"
    extract_s = _extract(args, root, kp_file)
    # the training subprocesses register cricket_{train,val,test} from these (converters/builtin.py)
    os.environ["D2EXT_CRICKET_ROOT"] = str(root)
    os.environ["D2EXT_CRICKET_KEYPOINTS"] = str(kp_file)
    conv = convert_cricket(root, seed=0, keypoints_file=kp_file)
    classes, splits = conv["classes"], conv["splits"]
    records = [r for s in splits.values() for r in s]
    with_person = sum(bool(r["keypoints"]) for r in records)
    rows = [Result("cricket/pose_coverage", 100.0 * with_person / max(len(records), 1), "%",
                   notes=f"{with_person}/{len(records)} images with a person ({args.keypoint_backend}, "
                         f"{extract_s / max(len(records), 1):.2f} s/image incl. start-up); {len(classes)} classes "
                         f"{classes}; train/val/test {len(splits['train'])}/{len(splits['val'])}/"
                         f"{len(splits['test'])} (group-aware, seed 0)")]
    for row in CRICKET_CONFIGS:
        try:
            rows.append(_train_and_test(row, args, len(classes), out_dir))
        except Exception as e:  # keep the other models' rows
            rows.append(Result(row, float("nan"), "failed", notes=f"{type(e).__name__}: {e}"[:300]))
    image = rows[1].value
    for r in rows[2:]:
        if r.unit == "%" and image == image:
            r.peer, r.peer_value, r.ratio = "cricket/resnet34_cls", image, (r.value / image if image else None)
    return rows + coco_kp_keypoints(args)


def _instances(h, w, persons):
    """COCO results (pixel-index keypoints) -> Detectron2 ``Instances`` for ``COCOEvaluator``."""
    import torch
    from detectron2.structures import Boxes, Instances

    inst = Instances((h, w))
    kps = torch.tensor([p["keypoints"] for p in persons], dtype=torch.float32).view(-1, 17, 3)
    kps[..., :2] += 0.5  # COCOEvaluator subtracts 0.5 (Detectron2 continuous -> COCO pixel indices)
    boxes = torch.tensor([p["bbox"] for p in persons], dtype=torch.float32).view(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    inst.pred_boxes = Boxes(boxes)
    inst.scores = torch.tensor([p["score"] for p in persons], dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(persons), dtype=torch.int64)
    inst.pred_keypoints = kps
    return inst


def _people_found(gt_json, results_json, min_oks=0.5):
    """(found, annotated): non-crowd people with keypoints matched one-to-one (greedy by OKS) by a
    prediction of OKS >= ``min_oks`` in their image."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_json)
    with open(results_json) as f:
        dets = json.load(f)
    people = [a for a in gt.dataset["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0)]
    if not dets:
        return 0, len(people)
    ev = COCOeval(gt, gt.loadRes(dets), "keypoints")
    ev.params.imgIds = sorted(gt.getImgIds())
    ev.evaluate()
    found = 0
    for img_id in ev.params.imgIds:
        oks = ev.ious.get((img_id, 1))
        gts = ev._gts[img_id, 1]
        if oks is None or len(oks) == 0:
            continue
        oks = np.array(oks, dtype=np.float64).copy()  # (detections by score, ground truths)
        wanted = np.array([g.get("num_keypoints", 0) > 0 and not g.get("iscrowd", 0) for g in gts])
        oks[:, ~wanted] = -1
        for d in range(oks.shape[0]):
            j = int(oks[d].argmax())
            if oks[d, j] >= min_oks:
                found += 1
                oks[:, j] = -1
    return found, len(people)


def coco_kp_keypoints(args):
    """The keypoint backend (--keypoint-backend) on COCO person-keypoints val: OKS AP through
    COCOEvaluator, and the share of annotated people found."""
    from converters.builtin import register_builtin_datasets
    from d2ext.core import data_root, missing_data_message
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.modeling.pose.backends import build_keypoint_backend

    name, backend_name = "coco_kp_val", args.keypoint_backend
    row = f"coco_kp_val/{backend_name}/oks_ap"
    register_builtin_datasets()
    if name not in DatasetCatalog.list():
        raise ValueError(missing_data_message("COCO person keypoints (coco_kp)", Path(data_root()) / "coco_kp"))
    if backend_name == "detectron2":
        if not args.keypoint_weights:
            return [Result(row, float("nan"), "skipped",
                           notes="--keypoint-backend detectron2 needs --keypoint-weights")]
        from detectron2 import model_zoo

        from d2ext.engine import setup_cfg

        cfg_file = args.keypoint_config
        if cfg_file.startswith("model_zoo:"):
            cfg_file = model_zoo.get_config_file(cfg_file[len("model_zoo:"):])
        cfg = setup_cfg(cfg_file, ["MODEL.WEIGHTS", args.keypoint_weights])
        backend = build_keypoint_backend("detectron2", cfg=cfg)
    else:
        backend = build_keypoint_backend(backend_name)
    out_dir = row_output(args, row)
    os.makedirs(out_dir, exist_ok=True)
    records = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        # converters.coco_keypoints does not set it (Detectron2's load_coco_json does); without it
        # COCOEvaluator writes category 0 and pycocotools matches nothing. Person is COCO id 1.
        with open(meta.json_file) as f:
            cat_ids = sorted(c["id"] for c in json.load(f)["categories"])
        meta.thing_dataset_id_to_contiguous_id = {c: i for i, c in enumerate(cat_ids)}
    # use_fast_impl False: Detectron2's fast COCOeval needs the compiled _C extension
    evaluator = COCOEvaluator(name, tasks=("keypoints",), distributed=False, output_dir=out_dir,
                              use_fast_impl=False, kpt_oks_sigmas=[])
    evaluator.reset()
    attempts, t0 = {}, time.perf_counter()
    for r in records:
        h, w, persons, attempt = backend(r["file_name"])
        attempts[attempt] = attempts.get(attempt, 0) + 1
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": _instances(h, w, persons)}])
    per_image = (time.perf_counter() - t0) / max(len(records), 1)
    results = evaluator.evaluate()
    kp = results.get("keypoints", {})
    ap = kp.get("AP", float("nan"))
    ap = 0.0 if ap != ap else ap
    found, people = _people_found(MetadataCatalog.get(name).json_file,
                                  os.path.join(out_dir, "coco_instances_results.json"))
    with_people = sum(any(a.get("keypoints") and max(a["keypoints"][2::3]) > 0 for a in r.get("annotations", []))
                      for r in records)
    return [
        Result(row, ap, "AP", notes=f"COCOEvaluator OKS AP on {len(records)} images ({with_people} with people "
                                    f"with keypoints); AP50 {kp.get('AP50', float('nan')):.1f}, AP75 "
                                    f"{kp.get('AP75', float('nan')):.1f}; {per_image:.2f} s/image on the CPU; "
                                    f"inputs that found a person: {attempts}"),
        Result(f"coco_kp_val/{backend_name}/people_found", 100.0 * found / max(people, 1), "%",
               notes=f"{found}/{people} annotated people (non-crowd, with keypoints) matched by a prediction "
                     f"with OKS >= 0.5"),
    ]


def pose_synthetic(args):
    """Shot head on synthetic stick figures: torso-normalised keypoints vs image coordinates."""
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.modeling.pose import synthetic_head_accuracy

    rows = []
    for n_train in (100, 500, 2000):
        t0 = time.perf_counter()
        acc = {n: 100 * synthetic_head_accuracy(n, num_train=n_train, num_test=2000, iters=2000)
               for n in ("torso", "image")}
        rows.append(Result(f"pose_synthetic/train{n_train}", acc["torso"], "%", "image coordinates", acc["image"],
                           notes=f"top-1 on 2000 test poses, 5 shots, same head/Adam/2000 iters "
                                 f"({time.perf_counter() - t0:.0f} s)"))
    near, far = dict(torso_px_range=(60.0, 140.0)), dict(torso_px_range=(20.0, 50.0))
    acc = {n: 100 * synthetic_head_accuracy(n, num_train=500, num_test=2000, iters=2000,
                                            train_pose_kwargs=near, test_pose_kwargs=far)
           for n in ("torso", "image")}
    rows.append(Result("pose_synthetic/near_to_far", acc["torso"], "%", "image coordinates", acc["image"],
                       notes="train torso 60-140 px, test 20-50 px, 500 train poses"))
    acc_angles = 100 * synthetic_head_accuracy("torso", num_train=500, num_test=2000, iters=2000, joint_angles=True)
    rows.append(Result("pose_synthetic/train500+angles", acc_angles, "%",
                       notes="torso-normalised + joint angles + wrist heights"))
    return rows


def pose_fused_synthetic(args):
    """Fused (pose + image features) head vs single-modality heads on synthetic batsmen, and
    handedness canonicalisation on left-handers."""
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.modeling.pose import fused_vs_single_accuracy, synthetic_head_accuracy

    t0 = time.perf_counter()
    acc = fused_vs_single_accuracy(num_train=2000, num_test=2000, iters=1500, missing_pose_prob=0.2)
    note = (f"4 classes = shot (pose only) x attribute (image features only); 20 % of images without a "
            f"person; 2000 train / 2000 test, same Adam/1500 iters ({time.perf_counter() - t0:.0f} s)")
    rows = [Result("pose_fused_synthetic/fused", 100 * acc["fused"], "%", "pose only", 100 * acc["pose"], notes=note),
            Result("pose_fused_synthetic/fused_vs_image", 100 * acc["fused"], "%", "image only", 100 * acc["image"],
                   notes=f"fused on the images without a person: {100 * acc['fused_no_pose']:.1f} % (ceiling 50)")]
    left = dict(left_handed_prob=1.0)
    acc = {c: 100 * synthetic_head_accuracy("torso", num_train=500, num_test=2000, iters=2000, joint_angles=True,
                                            canonical_handedness=c, test_pose_kwargs=left) for c in (True, False)}
    rows.append(Result("pose_fused_synthetic/left_handed_canonical", acc[True], "%", "no canonicalisation",
                       acc[False], notes="trained on 500 right-handers, tested on 2000 left-handers (mirrored)"))
    return rows


ROWS = {"cricket": cricket, "coco_kp_keypoints": coco_kp_keypoints, "pose_synthetic": pose_synthetic,
        "pose_fused_synthetic": pose_fused_synthetic}
