"""Evaluators, and the evaluator_type -> evaluator dispatch used by the d2ext Trainer."""
from .build import build_evaluator, register_evaluator, registered_evaluator_types

__all__ = ["build_evaluator", "register_evaluator", "registered_evaluator_types"]
