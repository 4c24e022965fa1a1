"""Pose -> cricket shot, the model side: keypoint backends (Detectron2, MediaPipe BlazePose) and
in-process experiments on synthetic batsmen. Pose features and the synthetic batsmen themselves
live in :mod:`d2ext.data.pose_features` and :mod:`d2ext.data.synthetic_pose` (data and models both
use them)."""
from .experiments import fused_vs_single_accuracy, synthetic_head_accuracy

__all__ = ["fused_vs_single_accuracy", "synthetic_head_accuracy"]
