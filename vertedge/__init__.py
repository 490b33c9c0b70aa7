"""vertedge: vertebra localization and identification in CT from multi-view DRRs.

`import vertedge` pulls no torch and no GPU package; GPU code is imported lazily.
"""

from .errors import VertedgeError
from .geometry import Protocol, Views, make_views, pixel_rays, project
from .volume import Volume, load_volume, save_volume

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
