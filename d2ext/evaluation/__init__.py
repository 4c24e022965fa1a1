"""Evaluators, and the evaluator_type -> evaluator dispatch used by the d2ext Trainer."""
from .build import build_evaluator, register_evaluator, registered_evaluator_types
from .classification import ClassificationEvaluator  # noqa: F401  (registers "classification")
from .segmentation import SegmentationMetricsEvaluator  # registers the "sem_seg" builder
from .widerface import WiderFaceEvaluator  # noqa: F401  (registers "widerface")

__all__ = ["build_evaluator", "register_evaluator", "registered_evaluator_types", "SegmentationMetricsEvaluator"]
from .mask_sem_seg import MaskToSemSegEvaluator  # noqa: E402,F401  (Mask R-CNN scored as a segmenter)
