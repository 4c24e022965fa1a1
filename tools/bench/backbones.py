"""Classic-backbone benchmark rows.

``backbone_forward``: CPU forward time of each classifier (backbone + pooling + head) against the
  torchvision model holding the same (random) weights, on the same ImageNet-normalised batch
  (``--backbone-batch`` 8 at ``--backbone-size`` 224; LeNet-5: batch 32 at 32x32 and at least 100
  calls, against a plain ``nn.Sequential`` LeNet-5, torchvision having none). Calls alternate
  between the two models; the best of ``--backbone-repeat`` calls each is reported (the CPU is
  shared: the minimum is the least disturbed figure; the medians are in the notes). One result
  ``backbone_forward/<arch>`` per architecture; goal ratio <= 1.05. The notes give the largest
  difference between the two models' logits.
``lenet5_digits``: train ``configs/classification/lenet5_digits.yaml`` through
  ``tools/train_net.py`` (a subprocess, as a user would) and report the top-1 accuracy on
  ``digits_test`` (goal >= 97 %), with the wall-clock and CPU time of the whole run (goal < 60 s).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.common import Result, row_output

REPO = Path(__file__).resolve().parents[2]
ARCHS = ["lenet5", "alexnet", "vgg16", "vgg16_bn", "googlenet", "resnet34", "densenet121"]


def add_arguments(parser):
    parser.add_argument("--backbone-archs", default=",".join(ARCHS), help="backbone_forward: comma-separated archs")
    parser.add_argument("--backbone-batch", type=int, default=8, help="backbone_forward: batch size (LeNet: 32)")
    parser.add_argument("--backbone-size", type=int, default=224, help="backbone_forward: input side (LeNet: 32)")
    parser.add_argument("--backbone-repeat", type=int, default=5, help="backbone_forward: timed calls per model")
    parser.add_argument("--backbone-threads", type=int, default=1, help="backbone_forward: torch threads")


def _lenet_reference(ours):
    """A plain nn.Sequential LeNet-5 holding our LeNet-5's weights."""
    from torch import nn

    ref = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, 10),
    )
    ref_params = [p for p in ref.parameters()]
    for p, q in zip(ref_params, ours.parameters()):
        p.data.copy_(q.data)
    return ref.eval()


def _models(arch):
    """(ours, peer, peer name, input shape): ours is an ImageClassifier with the peer's weights."""
    import torch
    import torchvision

    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
    from d2ext.engine import setup_cfg
    from d2ext.modeling.meta_arch.classifier import ImageClassifier
    from d2ext.modeling.weight_import import get_weight_converter

    torch.manual_seed(0)
    if arch == "lenet5":
        ours = ImageClassifier(setup_cfg(str(REPO / "configs/classification/lenet5_digits.yaml"))).eval()
        return ours, _lenet_reference(ours), "nn.Sequential LeNet-5"
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    tv = getattr(torchvision.models, arch)(**kwargs).eval()
    opts = []
    if arch == "googlenet":
        opts = ["MODEL.CLASSIFIER.AUX_IN_FEATURES", "[]", "MODEL.CLASSIFIER.AUX_LOSS_WEIGHTS", "[]",
                "MODEL.GOOGLENET.OUT_FEATURES", '["inception5b"]']
    ours = ImageClassifier(setup_cfg(str(REPO / f"configs/classification/{arch}.yaml"), opts)).eval()
    ours.load_state_dict(get_weight_converter(arch)(tv.state_dict()), strict=True)
    return ours, tv, f"torchvision {arch}"


def backbone_forward(args):
    """Forward time of each classic classifier vs torchvision with the same weights (CPU)."""
    import torch

    torch.set_num_threads(args.backbone_threads)
    results = []
    for arch in [a.strip() for a in args.backbone_archs.split(",") if a.strip()]:
        if arch not in ARCHS:
            raise SystemExit(f"--backbone-archs: unknown {arch!r}; known: {ARCHS}")
        ours, peer, peer_name = _models(arch)
        batch, side, ch = (32, 32, 1) if arch == "lenet5" else (args.backbone_batch, args.backbone_size, 3)
        x = torch.randn(batch, ch, side, side, generator=torch.Generator().manual_seed(0))

        def run_ours():
            return ours.head(ours.backbone(x)[ours.in_feature])

        # LeNet-5 takes ~2 ms: many more calls than the big networks for a stable figure.
        repeat = max(args.backbone_repeat, 100) if arch == "lenet5" else args.backbone_repeat
        times = {"ours": [], "peer": []}
        with torch.no_grad():
            diff = float((run_ours() - peer(x)).abs().max())  # also the warm-up
            for _ in range(repeat):
                for name, fn in (("peer", lambda: peer(x)), ("ours", run_ours)):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        best_ours, best_peer = min(times["ours"]), min(times["peer"])
        med_ours, med_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
        results.append(Result(
            f"backbone_forward/{arch}", best_ours * 1000, "ms", peer_name, best_peer * 1000,
            notes=f"CPU, {args.backbone_threads} thread(s), batch {batch} at {side}x{side}, best of "
                  f"{repeat} (medians {med_ours * 1000:.4g} vs {med_peer * 1000:.4g} ms); "
                  f"max |logit diff| {diff:.1e}; goal ratio <= 1.05",
        ))
        del ours, peer
    return results


def lenet5_digits(args):
    """LeNet-5 trained on digits through tools/train_net.py: test top-1 accuracy and run time."""
    out = row_output(args, "lenet5_digits")
    cmd = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file",
           str(REPO / "configs/classification/lenet5_digits.yaml"), "OUTPUT_DIR", out]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    metrics = json.loads((Path(out) / "inference" / "digits_test" / "metrics.json").read_text())
    load = os.getloadavg()[0]
    return [
        Result("lenet5_digits", metrics["top1"], "% top-1", notes=(
            f"digits_test ({metrics['num_images']} images), top-5 {metrics['top5']:.2f}%; goal >= 97%")),
        Result("lenet5_digits/wall_time", wall, "s", notes=(
            f"whole tools/train_net.py run (start-up, 500 iterations, evaluation); CPU time {cpu:.1f} s; "
            f"1-min load average {load:.1f} on {os.cpu_count()} cores; goal < 60 s")),
    ]


ROWS = {"backbone_forward": backbone_forward, "lenet5_digits": lenet5_digits}
