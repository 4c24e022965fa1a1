"""d2ext heads modules; each registers itself on import."""
from . import unet  # noqa: F401
