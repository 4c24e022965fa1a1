"""d2ext: datasets, classic architectures and evaluators for Detectron2.

``import d2ext`` is light (no torch, no Detectron2): converters, the WIDER evaluation protocol and
every tool's ``--help`` use :mod:`d2ext.core` without paying for models. The models, mappers,
evaluators and built-in datasets register themselves with Detectron2's registries when their
package is imported (``d2ext.modeling``, ``d2ext.data``, ``d2ext.evaluation``; ``d2ext.engine``
imports all three), or all at once through :func:`register_all` / :func:`add_d2ext_config`::

    import d2ext
    from detectron2.config import get_cfg
    cfg = get_cfg()
    d2ext.add_d2ext_config(cfg)   # adds d2ext's keys and registers every d2ext component
"""

__version__ = "0.1.0"
__all__ = ["add_d2ext_config", "register_all", "__version__"]


def register_all() -> None:
    """Import every d2ext component package, so that each registers itself with Detectron2."""
    from . import data, modeling  # noqa: F401  (registration side effects)
    # d2ext.evaluation is lazy (its torch-free protocol modules must import without Detectron2):
    # its evaluator modules (best_box, classification, mask_sem_seg, segmentation, widerface) are
    # imported by name, from the one list in d2ext.evaluation.build, so each registers its builder.
    from .evaluation.build import register_evaluators

    register_evaluators()


def add_d2ext_config(cfg):
    """Add every d2ext config key with its default to ``cfg`` (see :mod:`d2ext.config`) and
    register every d2ext component, so the names in the config resolve."""
    from .config import add_d2ext_config as _add

    register_all()
    return _add(cfg)
