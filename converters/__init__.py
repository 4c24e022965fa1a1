"""Dataset converters: real dataset formats -> Detectron2 dataset dicts, COCO JSON, reports.

Nothing here imports torch or detectron2 at module level (``tools/convert.py`` must start fast);
Detectron2 is imported only inside the ``register_*`` functions.
"""
