"""Ray's scheduling strategies, by Ray's names: ``.options(scheduling_strategy=...)``.

- ``"DEFAULT"``: on the submitter's node while it has room, else on the peer with the most;
- ``"SPREAD"``: across the nodes that fit, in turn;
- ``NodeAffinitySchedulingStrategy(node_id, soft)``: on that node (its hex id, as
  ``get_runtime_context().get_node_id()`` gives it); ``soft=True`` falls back to the
  default when it is dead or unknown, else the task fails with TaskUnschedulableError
  (an actor with ActorUnschedulableError);
- ``PlacementGroupSchedulingStrategy(pg, bundle_index)``: in a bundle of a placement group
  (zray.util.placement_group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT", "SPREAD", "NodeAffinitySchedulingStrategy",
           "PlacementGroupSchedulingStrategy", "as_wire"]

DEFAULT = "DEFAULT"
SPREAD = "SPREAD"


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    node_id: str
    soft: bool
    _spill_on_unavailable: bool = False  # (Ray's; accepted, zray keeps soft's meaning)
    _fail_on_unavailable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str):
            raise TypeError(f"node_id must be a hex str (get_node_id()), got {self.node_id!r}")
        try:
            bytes.fromhex(self.node_id)
        except ValueError as exc:
            raise ValueError(f"node_id {self.node_id!r} is not a node's hex id") from exc


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """In a placement group's bundle (``placement_group_bundle_index``; -1: any of its
    bundles). The task asks for the group's resources instead of its own
    (zray.util.placement_group.placed)."""

    placement_group: Any  # a zray.util.placement_group.PlacementGroup
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None

    def __post_init__(self) -> None:
        from zray.util.placement_group import PlacementGroup

        if not isinstance(self.placement_group, PlacementGroup):
            raise TypeError("placement_group must be a PlacementGroup (from "
                            f"placement_group()), got {self.placement_group!r}")
        index = self.placement_group_bundle_index
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"placement_group_bundle_index must be an int, got {index!r}")


def valid(strategy: Any) -> bool:
    return strategy in (None, DEFAULT, SPREAD) or isinstance(
        strategy, (NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy))


def as_wire(strategy: Any) -> dict[str, Any]:
    """The strategy as the agents take it: {} (default, and a placement group's: its
    tasks ask for its resources), {"spread": True}, or {"node": hex id, "soft": bool}."""
    if strategy == SPREAD:
        return {"spread": True}
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return {"node": strategy.node_id, "soft": bool(strategy.soft)}
    return {}
