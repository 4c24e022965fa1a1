"""d2ext meta_arch modules; each registers itself on import."""
from . import ssd  # noqa: F401
from . import yolo  # noqa: F401
from . import classifier  # noqa: F401
from . import pose_shot  # noqa: F401
from . import patch_detector  # noqa: F401  (the course's patch baselines)
from . import rcnn_classic  # noqa: F401  (R-CNN, Girshick et al. 2014)
