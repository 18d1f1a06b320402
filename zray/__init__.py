"""zray: a distributed task and actor runtime for Python, in the mould of Ray, on ZeroMQ."""

from zray import exceptions
from zray.api import (
    available_resources,
    cluster_resources,
    get,
    get_gpu_ids,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    store_stats,
    wait,
)
from zray.objects.refs import ObjectRef

__all__ = [
    "ObjectRef",
    "available_resources",
    "cluster_resources",
    "exceptions",
    "get",
    "get_gpu_ids",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "store_stats",
    "wait",
]
