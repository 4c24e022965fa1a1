"""d2ext: datasets, classic architectures and evaluators for Detectron2.

Importing ``d2ext`` registers every backbone, meta-architecture, head, dataset mapper, evaluator
and built-in synthetic dataset with Detectron2's registries::

    import d2ext
    from detectron2.config import get_cfg
    cfg = get_cfg()
    d2ext.add_d2ext_config(cfg)
"""
from .config import add_d2ext_config
from . import data, evaluation, modeling  # noqa: F401  (registration side effects)

__version__ = "0.1.0"
__all__ = ["add_d2ext_config", "__version__"]
