"""vertedge: vertebra localization and identification in CT from multi-view DRRs.

`import vertedge` pulls no torch and no GPU package; GPU code is imported lazily.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # one place for the version: the installed package's metadata (pyproject.toml)
    __version__ = version("vertedge")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "unknown"

from .errors import VertedgeError  # noqa: E402
from .geometry import Protocol, Views, make_views, pixel_rays, project  # noqa: E402
from .numba_cache import use_user_cache  # noqa: E402
from .volume import Volume, load_volume, save_volume  # noqa: E402

# Before any submodule imports numba and defines its cached kernels (none of the above does).
use_user_cache()

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
