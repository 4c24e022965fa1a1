"""Cricket shots: pose head vs image baseline on the group-aware test split; synthetic poses.

    tools/benchmark.py cricket --root DIR [--keypoint-weights W] [--keypoint-config C] [--budget-min N]
    tools/benchmark.py pose_synthetic

``cricket``: converts ``--root`` with ``converters.cricket`` (group-aware seeded split), trains the
image baseline ``configs/cricket/resnet34_cls.yaml`` through ``tools/train_net.py`` (from scratch,
iterations set from a timing of its training step so that it fits the budget) and, when
``--keypoint-weights`` is given, extracts keypoints with ``tools/extract_keypoints.py`` (resumable,
cached in ``--cricket-output``) and trains ``configs/cricket/pose_shot_head.yaml`` on them.
Rows ``cricket/resnet34_cls`` and ``cricket/pose_shot_head``: test top-1 accuracy, with the
confusion matrix (rows true class, columns predicted) in the notes.

``pose_synthetic``: the shot head on synthetic stick-figure batsmen, torso-normalised keypoints
vs image coordinates (same head, optimiser and data), for several training-set sizes and for a
near -> far camera shift.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import Result, seconds_per_train_step

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser):
    for args, kw in [
        (("--root",), dict(default=None, help="cricket: folder with one sub-folder per shot class")),
        (("--keypoint-weights",), dict(default=None, help="cricket: keypoint model weights (enables the pose head)")),
        (("--keypoint-config",), dict(default="model_zoo:COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
                                      help="cricket: keypoint model config (file or model_zoo:<path>)")),
        (("--budget-min",), dict(type=float, default=30.0, help="training budget in minutes")),
        (("--cricket-output",), dict(default="output/bench_cricket", help="cricket: work folder")),
    ]:
        try:
            parser.add_argument(*args, **kw)
        except argparse.ArgumentError:
            pass


def _confusion_note(metrics):
    names = metrics.get("class_names", [])
    return f"classes {names}; confusion (rows true, cols predicted) {metrics['confusion']}"


def _train_image_baseline(args, classes, deadline, out_dir):
    from converters.cricket import register_cricket

    cfg_file = str(REPO / "configs" / "cricket" / "resnet34_cls.yaml")
    names = register_cricket("bench_cricket", args.root, seed=0)
    common = ["MODEL.CLASSIFIER.NUM_CLASSES", str(len(classes))]
    from d2ext.engine import setup_cfg

    s_per_iter = seconds_per_train_step(setup_cfg(cfg_file, common + ["DATASETS.TRAIN", f"('{names[0]}',)"]))
    left = max(60.0, deadline - time.perf_counter())
    max_iter = max(10, int(0.8 * left / s_per_iter))  # 20 %: start-up, test-set evaluation, checkpoint
    run_dir = out_dir / "resnet34_cls"
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", cfg_file, *common,
           "DATASETS.TRAIN", "('cricket_train',)", "DATASETS.TEST", "('cricket_test',)",
           "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", f"({int(0.7 * max_iter)}, {int(0.9 * max_iter)})",
           "SOLVER.WARMUP_ITERS", str(min(100, max_iter // 10)), "OUTPUT_DIR", str(run_dir)]
    env = dict(os.environ, D2EXT_CRICKET_ROOT=str(Path(args.root).resolve()))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"image baseline training failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "inference" / "cricket_test" / "metrics.json").read_text())
    note = (f"ResNet-34 from scratch, {max_iter} iters x {s_per_iter:.2f} s (train+eval wall "
            f"{(time.perf_counter() - t0) / 60:.1f} min), {metrics['num_images']} test images; "
            + _confusion_note(metrics))
    return Result("cricket/resnet34_cls", metrics["top1"], "%", notes=note)


def _train_pose_head(args, classes, out_dir):
    from converters.cricket import register_cricket

    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
    from d2ext.engine import Trainer, setup_cfg

    kp_file = out_dir / "keypoints.json"
    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "tools" / "extract_keypoints.py"), "--config-file", args.keypoint_config,
           "--weights", args.keypoint_weights, "--root", str(args.root), "--out", str(kp_file)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"keypoint extraction failed:\n{proc.stderr[-3000:]}")
    extract_s = time.perf_counter() - t0
    names = register_cricket("bench_cricket_kp", args.root, seed=0, keypoints_file=str(kp_file))
    run_dir = out_dir / "pose_shot_head"
    cfg = setup_cfg(str(REPO / "configs" / "cricket" / "pose_shot_head.yaml"), [
        "MODEL.POSE_SHOT.NUM_CLASSES", len(classes), "DATASETS.TRAIN", f"('{names[0]}',)",
        "DATASETS.TEST", f"('{names[2]}',)", "OUTPUT_DIR", str(run_dir)])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with the test-split evaluation (metrics.json)
    metrics = json.loads((run_dir / "inference" / names[2] / "metrics.json").read_text())
    note = (f"keypoints {Path(args.keypoint_weights).name} (extraction {extract_s / 60:.1f} min), head "
            f"{cfg.SOLVER.MAX_ITER} iters ({(time.perf_counter() - t0) / 60:.1f} min); " + _confusion_note(metrics))
    return Result("cricket/pose_shot_head", metrics["top1"], "%", notes=note)


def cricket(args):
    """Cricket shots (--root): ResNet-34 image baseline and, with --keypoint-weights, the pose head;
    test top-1 and confusion matrix on the group-aware split."""
    from converters.cricket import convert_cricket

    if not args.root:
        raise SystemExit("benchmark cricket: --root DIR (one sub-folder per shot) is required")
    deadline = time.perf_counter() + args.budget_min * 60.0
    out_dir = Path(args.cricket_output)
    out_dir.mkdir(parents=True, exist_ok=True)
    conv = convert_cricket(args.root, seed=0)
    classes = conv["classes"]
    sizes = {k: len(v) for k, v in conv["splits"].items()}
    rows = [Result("cricket/split", sizes["test"], "images",
                   notes=f"{len(classes)} classes {classes}; train/val/test {sizes['train']}/{sizes['val']}/"
                         f"{sizes['test']} (group-aware, seed 0)")]
    pose = None
    if args.keypoint_weights:
        pose = _train_pose_head(args, classes, out_dir)
    image = _train_image_baseline(args, classes, deadline, out_dir)
    rows.append(image)
    if pose is not None:
        pose.peer, pose.peer_value = "cricket/resnet34_cls", image.value
        pose.ratio = pose.value / image.value if image.value else None
        rows.append(pose)
    return rows


def pose_synthetic(args):
    """Shot head on synthetic stick figures: torso-normalised keypoints vs image coordinates."""
    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
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


ROWS = {"cricket": cricket, "pose_synthetic": pose_synthetic}
