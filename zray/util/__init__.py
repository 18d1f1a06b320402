"""zray.util: tools beyond the core API, as in Ray (``zray.util.state``)."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("state",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # loaded on first use, as zray's own names are
        return importlib.import_module(f"zray.util.{name}")
    raise AttributeError(f"module 'zray.util' has no attribute {name!r}")
