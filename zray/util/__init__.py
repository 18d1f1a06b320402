"""zray.util: tools beyond the core API, as in Ray (``zray.util.state``, placement groups)."""

from __future__ import annotations

import importlib
from typing import Any

# As in Ray, ``zray.util.placement_group`` is the function (the module stays importable as
# ``zray.util.placement_group`` by ``import``/``from``: Python finds it in sys.modules).
from zray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = ["PlacementGroup", "get_current_placement_group", "get_node_ip_address",
           "get_placement_group", "list_named_actors", "placement_group",
           "placement_group_table", "remove_placement_group"]

def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """The live named actors of the cluster (from the GCS's actors table): their names in
    this job's namespace, or every one as {"name", "namespace"} if ``all_namespaces``."""
    from zray.api import client_for_call, read_table

    namespace = client_for_call().namespace
    named = [{"name": row["name"], "namespace": row.get("namespace") or ""}
             for _, row, _ in read_table("actors").rows
             if row.get("name") and row.get("state") != "DEAD"]
    if all_namespaces:
        return named
    return [actor["name"] for actor in named if actor["namespace"] == namespace]


def get_node_ip_address() -> str:
    """The IP address of the node this process runs on (127.0.0.1 for a private
    cluster's)."""
    import zray

    here = zray.get_runtime_context().get_node_id()
    return next((node["NodeManagerAddress"] for node in zray.nodes()
                 if node["NodeID"] == here), "127.0.0.1")


_SUBMODULES = ("state", "scheduling_strategies", "actor_pool", "queue", "multiprocessing",
               "joblib", "dask")  # (the last two need their library)


def __getattr__(name: str) -> Any:
    if name == "ActorPool":  # (Ray's zray.util.ActorPool)
        return importlib.import_module("zray.util.actor_pool").ActorPool
    if name in ("register_serializer", "deregister_serializer"):
        return getattr(importlib.import_module("zray.objects.serialization"), name)
    if name == "inspect_serializability":
        return importlib.import_module("zray.util.check_serialize").inspect_serializability
    if name in _SUBMODULES:  # loaded on first use, as zray's own names are
        return importlib.import_module(f"zray.util.{name}")
    raise AttributeError(f"module 'zray.util' has no attribute {name!r}")
