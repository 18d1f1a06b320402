"""zray's version, one definition: the installed package's (pyproject.toml)."""

from importlib import metadata

try:
    __version__ = metadata.version("zray")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
