"""The command-line surface: console scripts start from any folder, the light parser matches
Detectron2's, and the benchmark harness declares each shared flag once and sizes runs by one rule."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from d2ext.console import SCRIPTS  # noqa: E402


def _setup_py_scripts():
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    return {s.value.split("=")[0]: s.value.split("=")[1] for s in v.elts}
    raise AssertionError("no console_scripts in setup.py")


def test_setup_py_declares_every_console_script():
    declared = _setup_py_scripts()
    assert set(declared) == set(SCRIPTS)
    assert all(target.startswith("d2ext.console:") for target in declared.values())
    for script in SCRIPTS.values():
        assert (REPO / "tools" / script).is_file(), script


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_from_another_folder(name, tmp_path):
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        pytest.skip(f"{exe} not installed (run `make setup`)")
    proc = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]
    usage = proc.stdout.splitlines()[0]
    assert SCRIPTS[name] in usage or name in usage, usage  # ours, not Detectron2's tools/


def test_light_parser_matches_detectron2():
    from detectron2.engine import default_argument_parser as d2_parser

    from tools._common import default_argument_parser

    def flags(parser):
        return {a.dest: (tuple(a.option_strings), a.default, a.nargs) for a in parser._actions}

    assert flags(default_argument_parser()) == flags(d2_parser())
    args = default_argument_parser().parse_args(["--config-file", "x.yaml", "--eval-only", "SOLVER.MAX_ITER", "5"])
    assert args.config_file == "x.yaml" and args.eval_only and args.opts == ["SOLVER.MAX_ITER", "5"]


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
                           str(tmp_path / "missing.yaml")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error:") and "missing.yaml" in last


def test_benchmark_shared_flags_declared_once():
    from tools.benchmark import build_parser

    parser, registry = build_parser()
    for flag, default in (("--budget-min", 10.0), ("--data", None), ("--test-data", None), ("--output", None)):
        actions = [a for a in parser._actions if flag in a.option_strings]
        assert len(actions) == 1, flag
        assert actions[0].default == default, flag
    assert "import_time" in registry and "bccd/ssd300" in registry


def test_one_budget_rule():
    from tools.bench.common import LOOP_OVERHEAD, STARTUP_S, iterations_for_budget

    # 10 min, 20 s of calibration, 0.5 s a step: (600 - 20 - startup) / (0.5 * overhead)
    assert iterations_for_budget(600, 20, 0.5) == int((600 - 20 - STARTUP_S) / (0.5 * LOOP_OVERHEAD))
    assert iterations_for_budget(10, 20, 0.5) == 1  # an exhausted budget: one iteration, no overrun


def test_schedule_rescaled_to_the_run():
    from detectron2.config import get_cfg

    from tools.bench.common import _schedule_opts

    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 1000, (800, 900), 100
    opts = dict(zip(*[iter(_schedule_opts(cfg, 200))] * 2))
    assert opts == {"SOLVER.MAX_ITER": "200", "SOLVER.WARMUP_ITERS": "20", "SOLVER.STEPS": "(160,180,)"}
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    assert "SOLVER.STEPS" not in _schedule_opts(cfg, 200)


@pytest.mark.slow
def test_train_within_budget_on_shapes(tmp_path):
    from tools.bench.common import train_within_budget

    run = train_within_budget(str(REPO / "configs/shapes/retinanet_R18_FPN.yaml"), str(tmp_path / "run"), 0.4,
                              opts=["SOLVER.IMS_PER_BATCH", "2"], register_real_data=False)
    assert run.max_iter >= 1 and os.path.exists(os.path.join(run.output_dir, "model_final.pth"))
    _, res = run.evaluate()
    assert 0.0 <= res["bbox"]["AP50"] <= 100.0 and res["bbox"]["AP50"] == res["bbox"]["AP50"]
