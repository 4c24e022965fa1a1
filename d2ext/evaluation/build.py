"""Pick a Detectron2 ``DatasetEvaluator`` from a dataset's ``MetadataCatalog`` entry.

``EVALUATOR_REGISTRY`` (Detectron2's ``Registry``) maps each ``evaluator_type`` string to a builder
``fn(cfg, dataset_name, output_folder) -> DatasetEvaluator``; as in every Detectron2 registry the
name is the registered object's ``__name__``, so a builder is named after the type it serves::

    @EVALUATOR_REGISTRY.register()
    def widerface(cfg, dataset_name, output_folder):
        return WiderFaceEvaluator(dataset_name, output_dir=output_folder)
"""
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils.registry import Registry

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator", "registered_evaluator_types", "register_evaluators"]

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
evaluator_type (a dataset's ``MetadataCatalog`` entry) -> builder
``fn(cfg, dataset_name, output_folder) -> DatasetEvaluator``; the builder's name is the type.
"""


def register_evaluators() -> None:
    """Import d2ext's evaluator modules, so each registers its builders (the one list of them;
    ``d2ext.register_all()`` and ``build_evaluator`` call it). Cheap after the first call."""
    from . import best_box, classification, mask_sem_seg, segmentation, widerface  # noqa: F401


def registered_evaluator_types():
    register_evaluators()
    return sorted(name for name, _ in EVALUATOR_REGISTRY)


def build_evaluator(cfg, dataset_name: str, output_folder: str):
    """The evaluator(s) for ``dataset_name``; metadata ``evaluator_type`` may be a str or a list."""
    register_evaluators()
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
        if t not in EVALUATOR_REGISTRY:
            raise KeyError(
                f"dataset {dataset_name!r}: no evaluator for evaluator_type {t!r}; "
                f"known types: {registered_evaluator_types()}"
            )
        evaluators.append(EVALUATOR_REGISTRY.get(t)(cfg, dataset_name, output_folder))
    # Instance masks also scored as a label map (cfg.TEST.MASK_SEM_SEG_DATASETS; Mask R-CNN vs U-Net).
    from .mask_sem_seg import build_mask_sem_seg_evaluator

    extra = build_mask_sem_seg_evaluator(cfg, dataset_name, output_folder)
    if extra is not None:
        evaluators.append(extra)
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name, output_folder):
    """Builder of ``evaluator_type: "coco"``: Detectron2's ``COCOEvaluator``."""
    return COCOEvaluator(
        dataset_name,
        output_dir=output_folder,
        use_fast_impl=cfg.TEST.COCO_USE_FAST_IMPL,
        # Detectron2's key; () = COCO's 17 person sigmas (pycocotools' default)
        kpt_oks_sigmas=tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS),
    )
