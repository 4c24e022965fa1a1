"""Training: the d2ext Trainer (Detectron2's DefaultTrainer, task-aware and CPU-safe)."""
from .predict import Predictor, list_images, outputs_to_coco_results
from .trainer import Trainer, setup_cfg

__all__ = ["Trainer", "setup_cfg", "Predictor", "list_images", "outputs_to_coco_results"]
