"""Evaluators, and the evaluator_type -> evaluator dispatch used by the d2ext Trainer.

Light on import (PEP 562): the names below load their module on first use, so the torch-free
protocol modules (``d2ext.evaluation.widerface_protocol``, ``d2ext.evaluation.classical``) can be
imported without Detectron2. The evaluators register their builders in ``EVALUATOR_REGISTRY`` when
their module is imported: ``d2ext.register_all()`` (and ``build_evaluator`` itself) imports them all.
"""
import importlib

# public name -> submodule that defines it
_LAZY = {
    "EVALUATOR_REGISTRY": "build",
    "build_evaluator": "build",
    "registered_evaluator_types": "build",
    "register_evaluators": "build",
    "ClassificationEvaluator": "classification",
    "SegmentationMetricsEvaluator": "segmentation",
    "MaskToSemSegEvaluator": "mask_sem_seg",
    "WiderFaceEvaluator": "widerface",
    "BestBoxIoUEvaluator": "best_box",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
