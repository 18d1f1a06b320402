"""zray's version, one definition: the installed package's (pyproject.toml).

Read when asked (importlib.metadata is slow to import, and most processes never ask).
"""

import functools


@functools.cache
def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("zray")
    except metadata.PackageNotFoundError:  # run from a source tree never installed
        return "0+unknown"
