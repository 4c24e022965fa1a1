"""d2ext backbone modules; each registers itself on import."""
from . import unet_encoder  # noqa: F401
from . import ssd_vgg  # noqa: F401
from . import darknet  # noqa: F401
from . import lenet  # noqa: F401
from . import alexnet  # noqa: F401
from . import vgg  # noqa: F401
from . import googlenet  # noqa: F401
from . import densenet  # noqa: F401
from . import resnet  # noqa: F401
from . import dilated_resnet  # noqa: F401
