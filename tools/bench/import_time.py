"""Start-up rows: what a user waits for before anything happens.

    tools/benchmark.py import_time

``import_time/converters``, ``import_time/d2ext``: whole-process seconds of ``python -c "import X"``;
``import_time/help/<tool>``: whole-process seconds of ``python tools/<tool>.py --help``. Each is the
best of ``--import-repeat`` runs (the machine may be shared; the minimum is the least disturbed
figure), with whether torch was imported in the notes. Goal: well under a second for every
``--help``, and no torch for converters, ``import d2ext``, ``convert.py`` and ``eval_widerface.py``.
"""
import os
import subprocess
import sys
import time

from tools.bench.common import REPO, Result

# prints whether torch got imported, after the statement under test ran
_PROBE = "import sys; {stmt}; print('torch' in sys.modules)"


def add_arguments(parser):
    parser.add_argument("--import-repeat", type=int, default=3, help="import_time: runs per row (best is kept)")


def _best_seconds(cmd, repeat):
    best, torch_loaded = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        best = min(best, time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        torch_loaded = proc.stdout.strip().splitlines()[-1] == "True"
    return best, torch_loaded


def tool_scripts():
    folder = os.path.join(REPO, "tools")
    return sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def import_time(args):
    """Whole-process start-up: import converters / d2ext, and every tool's --help."""
    rows = []
    for module in ("converters", "d2ext"):
        s, torch_loaded = _best_seconds([sys.executable, "-c", _PROBE.format(stmt=f"import {module}")],
                                        args.import_repeat)
        rows.append(Result(f"import_time/{module}", s, "s", notes=f"torch imported: {torch_loaded}"))
    for script in tool_scripts():
        # --help exits through SystemExit before the probe line: run the tool as __main__ in-process
        stmt = (f"sys.argv = ['{script}', '--help']; import runpy\n"
                f"try:\n    runpy.run_path('tools/{script}', run_name='__main__')\nexcept SystemExit: pass")
        name = f"import_time/help/{script[:-3]}"
        try:
            s, torch_loaded = _best_seconds([sys.executable, "-c", "import sys\n" + stmt + "\nprint('torch' in sys.modules)"],
                                            args.import_repeat)
        except RuntimeError as e:  # one broken tool must not hide the others' figures
            rows.append(Result(name, float("nan"), "failed", notes=str(e).splitlines()[-1][:200]))
            continue
        rows.append(Result(name, s, "s", notes=f"torch imported: {torch_loaded}; goal well under 1 s"))
    return rows


ROWS = {"import_time": import_time}
