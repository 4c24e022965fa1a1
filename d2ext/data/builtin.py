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
