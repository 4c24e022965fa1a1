"""Dataset mappers and built-in (synthetic) datasets."""
from .mappers import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from .synthetic import register_shapes
from . import builtin  # noqa: F401  (registers the built-in synthetic datasets)

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper", "register_shapes"]
