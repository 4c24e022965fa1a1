"""Console scripts (``setup.py`` entry points): ``d2ext-train``, ``d2ext-convert``, ...

Each runs the matching ``tools/<name>.py`` of this checkout as ``__main__``. The tools are
scripts, not an installed package, on purpose: Detectron2's wheel installs a top-level package
named ``tools`` (its own scripts) into site-packages, which shadows any ``tools`` package of ours
that an entry point would import. Running the file by path (the tool puts the checkout first on
``sys.path``) gives the same behaviour as ``python tools/<name>.py`` from any working directory.
"""
import os
import runpy
import sys

from .core import repo_root

__all__ = ["SCRIPTS"]

# console-script name -> tools/ file
SCRIPTS = {
    "d2ext-train": "train_net.py",
    "d2ext-convert": "convert.py",
    "d2ext-predict": "predict.py",
    "d2ext-evaluate": "evaluate.py",
    "d2ext-eval-widerface": "eval_widerface.py",
    "d2ext-visualize": "visualize_data.py",
    "d2ext-visualize-predictions": "visualize_predictions.py",
    "d2ext-benchmark": "benchmark.py",
}


def _run(script: str) -> None:
    path = repo_root() / "tools" / script
    if not path.is_file():
        sys.exit(f"d2ext: {path} not found; the console scripts run the tools of a d2ext checkout "
                 "(install it with `make setup` or `pip install -e .`)")
    # A `tools` module imported before us would be Detectron2's: forget it so ours is found.
    for name in [m for m in sys.modules if m == "tools" or m.startswith("tools.")]:
        del sys.modules[name]
    sys.argv[0] = str(path)
    sys.path.insert(0, str(repo_root()))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    runpy.run_path(str(path), run_name="__main__")


def _entry_point(name: str):
    def run() -> None:
        _run(SCRIPTS[name])

    run.__doc__ = f"``{name}``: runs tools/{SCRIPTS[name]}."
    return run


train = _entry_point("d2ext-train")
convert = _entry_point("d2ext-convert")
predict = _entry_point("d2ext-predict")
evaluate = _entry_point("d2ext-evaluate")
eval_widerface = _entry_point("d2ext-eval-widerface")
visualize = _entry_point("d2ext-visualize")
visualize_predictions = _entry_point("d2ext-visualize-predictions")
benchmark = _entry_point("d2ext-benchmark")
