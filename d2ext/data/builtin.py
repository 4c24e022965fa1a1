"""Built-in synthetic datasets, registered on ``import d2ext`` (generated lazily on first use).

Real datasets (BCCD, WIDER Face, WBC, COCO keypoints, cricket) are registered from their files by
``converters`` (see ``tools/train_net.py``), since they need a path on disk.
"""
from .synthetic import register_shapes

# The demo's data: 128x128 images, 1-4 shapes each.
register_shapes("shapes_train", num_images=400, image_size=128, seed=0)
register_shapes("shapes_val", num_images=80, image_size=128, seed=1)
# A tiny split for tests and smoke runs.
register_shapes("shapes_tiny_train", num_images=16, image_size=64, seed=10, max_objects=2)
register_shapes("shapes_tiny_val", num_images=8, image_size=64, seed=11, max_objects=2)

# Tiny splits for the Keypoint R-CNN / DeepLab config tests (64 px): stick figures with COCO's
# 17 person keypoints, and sem-seg blobs with 2 (background/circle) or 3 classes.
from .synthetic_kp import register_keypoint_figures  # noqa: E402
from .synthetic_seg import register_synthetic_seg  # noqa: E402

register_keypoint_figures("kp_tiny_train", num_images=16, image_size=64, seed=20)
register_keypoint_figures("kp_tiny_val", num_images=8, image_size=64, seed=21)
register_synthetic_seg("seg_tiny_train", num_images=16, image_size=64, seed=30, num_classes=2)
register_synthetic_seg("seg_tiny_val", num_images=8, image_size=64, seed=31, num_classes=2)
register_synthetic_seg("seg3_tiny_train", num_images=16, image_size=64, seed=32, num_classes=3)
register_synthetic_seg("seg3_tiny_val", num_images=8, image_size=64, seed=33, num_classes=3)
