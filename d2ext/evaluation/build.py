"""Pick a Detectron2 ``DatasetEvaluator`` from a dataset's ``MetadataCatalog`` entry.

Each evaluator family registers a builder for the ``evaluator_type`` strings it serves::

    @register_evaluator("widerface")
    def _build(cfg, dataset_name, output_folder):
        return WiderFaceEvaluator(dataset_name, output_dir=output_folder)
"""
from typing import Callable, Dict

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

__all__ = ["register_evaluator", "build_evaluator", "registered_evaluator_types"]

_BUILDERS: Dict[str, Callable] = {}


def register_evaluator(evaluator_type: str):
    """Decorator: ``fn(cfg, dataset_name, output_folder) -> DatasetEvaluator`` for a type."""

    def deco(fn):
        if evaluator_type in _BUILDERS and _BUILDERS[evaluator_type] is not fn:
            raise KeyError(f"evaluator_type {evaluator_type!r} is already registered")
        _BUILDERS[evaluator_type] = fn
        return fn

    return deco


def registered_evaluator_types():
    return sorted(_BUILDERS)


def build_evaluator(cfg, dataset_name: str, output_folder: str):
    """The evaluator(s) for ``dataset_name``; metadata ``evaluator_type`` may be a str or a list."""
    meta = MetadataCatalog.get(dataset_name)
    types = getattr(meta, "evaluator_type", None)
    if types is None:
        raise KeyError(
            f"dataset {dataset_name!r} has no evaluator_type in MetadataCatalog; "
            f"known types: {registered_evaluator_types()}"
        )
    if isinstance(types, str):
        types = [types]
    evaluators = []
    for t in types:
        if t not in _BUILDERS:
            raise KeyError(
                f"dataset {dataset_name!r}: no evaluator for evaluator_type {t!r}; "
                f"known types: {registered_evaluator_types()}"
            )
        evaluators.append(_BUILDERS[t](cfg, dataset_name, output_folder))
    # Instance masks also scored as a label map (cfg.TEST.MASK_SEM_SEG_DATASETS; Mask R-CNN vs U-Net).
    from .mask_sem_seg import build_mask_sem_seg_evaluator

    extra = build_mask_sem_seg_evaluator(cfg, dataset_name, output_folder)
    if extra is not None:
        evaluators.append(extra)
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


@register_evaluator("coco")
def _build_coco(cfg, dataset_name, output_folder):
    return COCOEvaluator(
        dataset_name,
        output_dir=output_folder,
        use_fast_impl=cfg.TEST.COCO_USE_FAST_IMPL,
        # Detectron2's key; () = COCO's 17 person sigmas (pycocotools' default)
        kpt_oks_sigmas=tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS),
    )
