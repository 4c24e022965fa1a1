"""Pose -> cricket shot: keypoint features (``features``) and synthetic batsmen (``synthetic``)."""
from .features import (COCO_FLIP_INDICES, COCO_KEYPOINT_NAMES, PoseFeatureExtractor, flip_indices,
                       joint_angles, keypoint_mask, mirror_keypoints, normalize_keypoints, persons_to_tensors,
                       select_main_person, wrist_heights)
from .synthetic import SYNTHETIC_SHOT_CLASSES, generate_poses, synthetic_head_accuracy, synthetic_pose_records

__all__ = [
    "COCO_FLIP_INDICES", "COCO_KEYPOINT_NAMES", "PoseFeatureExtractor", "flip_indices", "joint_angles",
    "keypoint_mask", "mirror_keypoints", "normalize_keypoints", "persons_to_tensors", "select_main_person",
    "wrist_heights", "SYNTHETIC_SHOT_CLASSES", "generate_poses", "synthetic_head_accuracy",
    "synthetic_pose_records",
]
