"""Foundation: registration, config keys, train_net (train / resume / eval-only / 2 processes),
the visualisation and prediction tools, and clear errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import d2ext
from d2ext.engine import setup_cfg
from d2ext.evaluation import registered_evaluator_types
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

CONFIG = "configs/shapes/retinanet_R18_FPN.yaml"
# The demo config shrunk to a few seconds of CPU work.
TINY = [
    "DATASETS.TRAIN", "('shapes_tiny_train',)", "DATASETS.TEST", "('shapes_tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "()",
]


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_import_registers_synthetic_datasets_and_evaluators():
    for name in ("shapes_train", "shapes_val", "shapes_tiny_train", "shapes_tiny_val"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "coco"
    assert {"coco", "sem_seg"} <= set(registered_evaluator_types())


def test_synthetic_dataset_is_deterministic_and_valid():
    a = DatasetCatalog.get("shapes_tiny_train")
    b = DatasetCatalog.get("shapes_tiny_train")
    assert a == b and len(a) == 16
    for r in a:
        im = Image.open(r["file_name"])
        assert im.size == (r["width"], r["height"]) == (64, 64)
        assert 1 <= len(r["annotations"]) <= 2
        for ann in r["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert ann["category_id"] in (0, 1, 2)
    assert len({r["image_id"] for r in a}) == 16


def test_add_d2ext_config_sets_keys_and_keeps_user_values():
    cfg = get_cfg()
    d2ext.add_d2ext_config(cfg)
    assert cfg.INPUT.DATASET_MAPPER_NAME == ""
    assert cfg.TEST.COCO_USE_FAST_IMPL is False
    cfg.INPUT.DATASET_MAPPER_NAME = "custom"
    d2ext.add_d2ext_config(cfg)  # a second call must not reset values
    assert cfg.INPUT.DATASET_MAPPER_NAME == "custom"
    cfg = setup_cfg(CONFIG)
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.DEVICE == "cpu"


def test_bad_config_key_gives_detectron2_error(run_tool, tmp_path):
    proc = run_tool("train_net.py", "--config-file", CONFIG, "SOLVER.NOT_A_KEY", "1",
                    "OUTPUT_DIR", tmp_path, check=False)
    assert proc.returncode != 0
    assert "Non-existent key: SOLVER.NOT_A_KEY" in proc.stderr


def test_unregistered_dataset_lists_registered_names(run_tool, tmp_path):
    proc = run_tool("train_net.py", "--config-file", CONFIG, *TINY, "DATASETS.TRAIN", "('no_such_set',)",
                    "OUTPUT_DIR", tmp_path, check=False)
    assert proc.returncode != 0
    assert "no_such_set" in proc.stderr and "not registered" in proc.stderr
    assert "shapes_tiny_train" in proc.stderr  # the message lists what is registered


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """20 iterations on the tiny synthetic set; returns the output folder."""
    from tests.conftest import _run_tool

    out = tmp_path_factory.mktemp("train20")
    _run_tool("train_net.py", "--config-file", CONFIG, *TINY, "SOLVER.MAX_ITER", "20",
              "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", out)
    return out


def test_training_writes_checkpoint_and_metrics(trained):
    assert (trained / "model_final.pth").stat().st_size > 1e6
    assert (trained / "model_0000009.pth").exists()
    metrics = read_metrics(trained)
    iters = [m["iteration"] for m in metrics if "total_loss" in m]
    assert iters[-1] == 19
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert all(np.isfinite(losses))
    # the evaluation at the end of training lands in metrics.json too
    assert any("bbox/AP50" in m for m in metrics)


def test_eval_only_prints_ap(run_tool, trained, tmp_path):
    proc = run_tool("train_net.py", "--config-file", CONFIG, "--eval-only", *TINY,
                    "MODEL.WEIGHTS", trained / "model_final.pth", "OUTPUT_DIR", tmp_path)
    log = proc.stdout + proc.stderr
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert "Starting training" not in log


def test_resume_after_kill_continues_at_next_iteration(repo_root, tmp_path):
    base = [sys.executable, str(repo_root / "tools" / "train_net.py"), "--config-file", CONFIG]
    cmd = base + [*TINY, "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "4", "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        ckpt = tmp_path / "last_checkpoint"  # written after the checkpoint file itself
        while not (ckpt.exists() and ckpt.read_text().strip() == "model_0000007.pth"):
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = (tmp_path / "last_checkpoint").read_text().strip()
    done_iter = int(last.split("_")[1].split(".")[0])  # model_0000007.pth -> 7 (or later)
    assert done_iter >= 7 and (tmp_path / last).exists()
    resumed = subprocess.run(base + ["--resume", *TINY, "SOLVER.MAX_ITER", str(done_iter + 4),
                                     "SOLVER.CHECKPOINT_PERIOD", "4", "OUTPUT_DIR", str(tmp_path)],
                             cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Starting training from iteration {done_iter + 1}" in log
    assert f"[Checkpointer] Loading from {tmp_path / last}" in log
    iters = [m["iteration"] for m in read_metrics(tmp_path) if "total_loss" in m]
    assert iters[-1] == done_iter + 3  # ran iterations done_iter+1 .. done_iter+3 and stopped


def test_two_process_cpu_training(run_tool, tmp_path):
    proc = run_tool("train_net.py", "--config-file", CONFIG, "--num-gpus", "2", *TINY,
                    "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4", "OUTPUT_DIR", tmp_path)
    log = proc.stdout + proc.stderr
    assert "World size: 2" in log
    assert (tmp_path / "model_final.pth").exists()
    assert [m["iteration"] for m in read_metrics(tmp_path) if "total_loss" in m][-1] == 3


def _changed_fraction(png, original):
    a = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(original).convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape
    return np.abs(a - b).max(axis=2) > 30


def test_visualize_data_draws_boxes(run_tool, tmp_path):
    run_tool("visualize_data.py", "--dataset", "shapes_tiny_train", "--output", tmp_path, "--num", "2")
    records = DatasetCatalog.get("shapes_tiny_train")[:2]
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    for png, r in zip(pngs, records):
        changed = _changed_fraction(png, r["file_name"])
        x0, y0, x1, y1 = (int(round(v)) for v in r["annotations"][0]["bbox"])
        # the box outline is drawn: pixels along its top edge changed
        assert changed[max(y0, 0), x0:x1].mean() > 0.5 or changed[max(y0 - 1, 0), x0:x1].mean() > 0.5
        assert changed.mean() < 0.6  # the rest of the image is still there


def test_visualize_data_from_dataloader(run_tool, tmp_path):
    run_tool("visualize_data.py", "--config-file", CONFIG, *["--source", "dataloader"], "--output", tmp_path,
             "--num", "3", *TINY)
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 3 and all(p.stat().st_size > 0 for p in pngs)


def test_predict_and_visualize_predictions(run_tool, trained, tmp_path):
    record = DatasetCatalog.get("shapes_tiny_val")[0]
    results = tmp_path / "results.json"
    run_tool("predict.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
             "--input", record["file_name"], "--output", results, *TINY)
    rows = json.loads(results.read_text())
    assert rows and all(r["image_id"] == os.path.basename(record["file_name"]) for r in rows)
    assert all(r["category_id"] in (1, 2, 3) and len(r["bbox"]) == 4 for r in rows)
    # Draw a known box through --results and check it is where it should be.
    known = tmp_path / "known.json"
    known.write_text(json.dumps([{"image_id": os.path.basename(record["file_name"]), "category_id": 1,
                                  "bbox": [10, 12, 30, 20], "score": 0.9}]))
    out = tmp_path / "vis"
    run_tool("visualize_predictions.py", "--results", known, "--input", record["file_name"],
             "--output", out, "--dataset", "shapes_tiny_val")
    png = next(out.glob("*.png"))
    changed = _changed_fraction(png, record["file_name"])
    # the top edge of the box (y = 12, x 10..40) is drawn: (nearly) every column along it changed
    # (the half-transparent, anti-aliased line may blend into a few background pixels)
    assert changed[10:15, 12:38].any(axis=0).mean() >= 0.9
    assert not changed[10:15, 45:60].any()  # and not beyond its right end
    assert not changed[50:, 50:].any()  # far from the box and its label: untouched
    # and straight from the model
    out2 = tmp_path / "vis2"
    run_tool("visualize_predictions.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
             "--input", record["file_name"], "--output", out2, "--score-thresh", "0.0", *TINY)
    assert next(out2.glob("*.png")).stat().st_size > 0


def test_every_config_merges_with_d2ext_keys(repo_root):
    """Every YAML under configs/ loads through its _BASE_ chain with no unknown key."""
    configs = sorted(p for p in (repo_root / "configs").rglob("*.yaml"))
    assert len(configs) > 30
    for path in configs:
        cfg = setup_cfg(str(path))
        assert cfg.MODEL.META_ARCHITECTURE, path


def test_benchmark_lists_every_issue_row(run_tool):
    listed = {line.split()[0] for line in run_tool("benchmark.py", "--list").stdout.splitlines() if line.strip()}
    expected = {
        "bccd/yolov3", "bccd/yolov2", "bccd/yolov1", "bccd/ssd300", "bccd/ssd512", "bccd/faster_rcnn",
        "bccd/retinanet", "ssd300_latency", "yolov3_latency", "backbone_forward", "lenet5_digits",
        "wbc_seg", "wbc_seg/deeplabv3/binary", "wbc_seg/deeplabv3/3class", "wbc_seg/mask_rcnn/binary",
        "widerface_convert", "widerface_eval", "cricket", "pose_synthetic",
    }
    assert expected <= listed, expected - listed
    unknown = run_tool("benchmark.py", "no_such_row", check=False)
    assert unknown.returncode != 0 and "unknown row" in unknown.stderr
