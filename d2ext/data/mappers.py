"""Dataset-mapper registry: how each task turns a dataset dict into model inputs.

A model family registers its mapper here; ``build_dataset_mapper(cfg, is_train)`` picks the one
named by ``cfg.INPUT.DATASET_MAPPER_NAME`` (empty: Detectron2's own ``DatasetMapper``).
"""
from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers. A registered object is called as ``obj(cfg, is_train)`` (a class
with a ``@configurable`` ``__init__`` works) and returns a callable ``dataset_dict -> model input``.
"""

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper"]


def build_dataset_mapper(cfg, is_train: bool):
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if not name:
        return DatasetMapper(cfg, is_train)
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train)
