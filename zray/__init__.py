"""zray: a distributed task and actor runtime for Python, in the mould of Ray, on ZeroMQ.

The public names are loaded on first use (PEP 562), so the processes zray starts (agent,
broker, workers) import only what they need, and ``import zray`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "ActorHandle": "zray.actors.handle",
    "method": "zray.actors.handle",
    "ObjectRef": "zray.objects.refs",
    "ObjectRefGenerator": "zray.generators",
    "DynamicObjectRefGenerator": "zray.generators",
    "available_resources": "zray.api",
    "cancel": "zray.api",
    "cluster_resources": "zray.api",
    "get": "zray.api",
    "get_actor": "zray.api",
    "get_gpu_ids": "zray.api",
    "get_runtime_context": "zray.api",
    "init": "zray.api",
    "is_initialized": "zray.api",
    "kill": "zray.api",
    "nodes": "zray.api",
    "put": "zray.api",
    "remote": "zray.api",
    "shutdown": "zray.api",
    "store_stats": "zray.api",
    "timeline": "zray.api",
    "wait": "zray.api",
}

_MODULES = ("exceptions", "util", "actor", "dag")  # reachable as zray.NAME after import, as in Ray
__all__ = sorted([*_HOME, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"zray.{name}")
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'zray' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from zray import exceptions as exceptions
    from zray.actors.handle import ActorHandle as ActorHandle
    from zray.actors.handle import method as method
    from zray.api import available_resources as available_resources
    from zray.api import cancel as cancel
    from zray.api import cluster_resources as cluster_resources
    from zray.api import get as get
    from zray.api import get_actor as get_actor
    from zray.api import get_gpu_ids as get_gpu_ids
    from zray.api import get_runtime_context as get_runtime_context
    from zray.api import init as init
    from zray.api import is_initialized as is_initialized
    from zray.api import kill as kill
    from zray.api import nodes as nodes
    from zray.api import put as put
    from zray.api import remote as remote
    from zray.api import shutdown as shutdown
    from zray.api import store_stats as store_stats
    from zray.api import wait as wait
    from zray.generators import DynamicObjectRefGenerator as DynamicObjectRefGenerator
    from zray.generators import ObjectRefGenerator as ObjectRefGenerator
    from zray.objects.refs import ObjectRef as ObjectRef
