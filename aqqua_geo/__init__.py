"""aqqua-geo: plankton images → harmonised store → foundation model → global maps.

Submodules are imported lazily so that ``import aqqua_geo`` stays fast and does not
pull torch or xarray unless they are used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aqqua-geo")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
