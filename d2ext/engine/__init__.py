"""Training: the d2ext Trainer (Detectron2's DefaultTrainer, task-aware and CPU-safe)."""
from .trainer import Trainer, setup_cfg

__all__ = ["Trainer", "setup_cfg"]
