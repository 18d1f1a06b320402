"""zray: a distributed task and actor runtime for Python, in the mould of Ray, on ZeroMQ."""

from zray import exceptions
from zray.actors.handle import ActorHandle, method
from zray.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    store_stats,
    wait,
)
from zray.objects.refs import ObjectRef

__all__ = [
    "ActorHandle",
    "ObjectRef",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "store_stats",
    "wait",
]
