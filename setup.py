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
    packages=find_packages(include=["d2ext", "d2ext.*", "converters", "converters.*", "tools", "tools.*"]),
    include_package_data=True,
    entry_points={
        "console_scripts": [
            "d2ext-train=tools.train_net:cli",
            "d2ext-convert=tools.convert:cli",
            "d2ext-visualize=tools.visualize_data:cli",
            "d2ext-predict=tools.predict:cli",
            "d2ext-benchmark=tools.benchmark:cli",
        ]
    },
)
