"""Dataset mappers and built-in (synthetic) datasets."""
from .mappers import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from .synthetic import register_shapes
from .synthetic_seg import register_synthetic_seg
from . import builtin  # noqa: F401  (registers the built-in synthetic datasets)
from . import classification  # noqa: F401  (classification mapper, digits dataset)
from . import pose  # noqa: F401  (pose-to-shot mapper, pose_synthetic_* datasets)
from . import augmentations  # noqa: F401  (AugmentedDatasetMapper, AUGMENTATION_REGISTRY)

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper", "register_shapes", "register_synthetic_seg"]
