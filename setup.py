"""d2ext: datasets, classic architectures and evaluators for Detectron2.

Detectron2 itself is not on the package index under its name; ``make setup`` installs it from the
``sal-detectron2`` wheel (see README). Dependencies are pinned in requirements.txt.
"""
from setuptools import find_packages, setup

setup(
    name="d2ext",
    version="0.1.0",
    description="Detectron2 plugin: dataset converters, classic backbones, YOLO/SSD, U-Net, evaluators",
    python_requires=">=3.10",
    # tools/ are scripts run by path (see d2ext/console.py): Detectron2's wheel already installs a
    # top-level package named `tools`, so ours is not installed as one.
    packages=find_packages(include=["d2ext", "d2ext.*", "converters", "converters.*"]),
    include_package_data=True,
    entry_points={
        "console_scripts": [
            "d2ext-train=d2ext.console:train",
            "d2ext-convert=d2ext.console:convert",
            "d2ext-predict=d2ext.console:predict",
            "d2ext-evaluate=d2ext.console:evaluate",
            "d2ext-eval-widerface=d2ext.console:eval_widerface",
            "d2ext-visualize=d2ext.console:visualize",
            "d2ext-visualize-predictions=d2ext.console:visualize_predictions",
            "d2ext-benchmark=d2ext.console:benchmark",
        ]
    },
)
