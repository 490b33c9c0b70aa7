"""vertedge: vertebra localization and identification in CT from multi-view DRRs.

`import vertedge` pulls no torch and no GPU package; GPU code is imported lazily.
"""

from .errors import VertedgeError
from .geometry import Protocol, Views, make_views, pixel_rays, project
from .numba_cache import use_user_cache
from .volume import Volume, load_volume, save_volume

# Before any submodule imports numba and defines its cached kernels (none of the above does).
use_user_cache()

__version__ = "0.1.0"

__all__ = [
    "Protocol",
    "Views",
    "Volume",
    "VertedgeError",
    "load_volume",
    "make_views",
    "pixel_rays",
    "project",
    "save_volume",
]
