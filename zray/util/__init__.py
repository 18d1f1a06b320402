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

__all__ = ["PlacementGroup", "get_current_placement_group", "get_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]

_SUBMODULES = ("state", "scheduling_strategies", "actor_pool", "queue", "multiprocessing")


def __getattr__(name: str) -> Any:
    if name == "ActorPool":  # (Ray's zray.util.ActorPool)
        return importlib.import_module("zray.util.actor_pool").ActorPool
    if name in _SUBMODULES:  # loaded on first use, as zray's own names are
        return importlib.import_module(f"zray.util.{name}")
    raise AttributeError(f"module 'zray.util' has no attribute {name!r}")
