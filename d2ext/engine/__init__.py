"""Training and inference: the d2ext Trainer (Detectron2's DefaultTrainer, task-aware and
CPU-safe) and the Predictor. Importing it registers every d2ext component."""
from .. import register_all
from .predict import Predictor, list_images, outputs_to_coco_results
from .trainer import AutocastTrainer, Trainer, setup_cfg, training_autocast

register_all()

__all__ = ["Trainer", "setup_cfg", "AutocastTrainer", "training_autocast", "Predictor", "list_images",
           "outputs_to_coco_results"]
