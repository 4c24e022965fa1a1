"""d2ext heads modules; each registers itself on import."""
from . import unet  # noqa: F401
from . import deeplab  # noqa: F401
from . import shot_head  # noqa: F401
