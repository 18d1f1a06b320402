"""Placement groups, by Ray's names: reserve bundles of resources together, then place
tasks and actors in them (``PlacementGroupSchedulingStrategy``).

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    zray.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()

The node agent reserves the bundles, all or none, and holds them until the group is
removed, or its job ends (unless ``lifetime="detached"``); zray/node/placement_groups.py.
A task placed in a group asks for the group's resources instead of its own (``placed``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from zray.ids import put_object_id
from zray.objects.refs import ObjectRef

__all__ = ["PlacementGroup", "PlacementGroupID", "placement_group", "remove_placement_group",
           "get_placement_group", "get_current_placement_group", "placement_group_table"]

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID:
    def __init__(self, binary: bytes) -> None:
        self._binary = binary

    def binary(self) -> bytes:
        return self._binary

    def hex(self) -> str:
        return self._binary.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._binary == self._binary

    def __hash__(self) -> int:
        return hash(self._binary)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"


class PlacementGroup:
    """A handle on a group (picklable: pass it to tasks and actors)."""

    def __init__(self, id: PlacementGroupID, bundle_specs: list[dict[str, float]]) -> None:
        self.id = id
        self.bundle_specs = bundle_specs
        self._ready: ObjectRef | None = None

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """A ref whose value is this group once every bundle is reserved."""
        if self._ready is None:
            from zray.api import client_for_call

            client = client_for_call()
            object_id = put_object_id(client.context.task_id, next(client.context.puts))
            _checked(client.query("placement_group_ready", id=self.id.hex(),
                                  object_id=object_id.hex()))
            self._ready = ObjectRef(object_id, client.refs, created=True)
        return self._ready

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is ready within ``timeout_seconds``."""
        import zray

        ready, _ = zray.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.id.hex(), self.bundle_specs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self.bundle_specs})"


def _rebuild(id_hex: str, bundle_specs: list[dict[str, float]]) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(bytes.fromhex(id_hex)), bundle_specs)


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: str | None = None,
                    **ray_options: Any) -> PlacementGroup:
    """Reserve ``bundles`` (each a dict of resource -> amount) together, by ``strategy``:
    PACK (as few nodes as may be), SPREAD (as many), STRICT_PACK (one node), STRICT_SPREAD
    (one node per bundle). Returns at once; ``ready()`` says when it is reserved."""
    from zray.api import client_for_call

    if ray_options:
        raise ValueError(f"placement_group(): unknown argument(s) {sorted(ray_options)}")
    if _soft_target_node_id is not None:
        raise NotImplementedError("placement_group(_soft_target_node_id=...) is not "
                                  "supported by zray")
    _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"placement_group(): strategy {strategy!r} is invalid; it takes one "
                         f"of {', '.join(STRATEGIES)}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement_group(): lifetime {lifetime!r} is invalid; it takes "
                         "None or \"detached\"")
    if not isinstance(name, str):
        raise TypeError(f"placement_group(): name must be a str, got {name!r}")
    specs = [{k: float(v) for k, v in bundle.items()} for bundle in bundles]
    reply = _checked(client_for_call().query(
        "create_placement_group", bundles=specs, strategy=strategy, name=name,
        detached=lifetime == "detached"))
    return PlacementGroup(PlacementGroupID(bytes.fromhex(reply["id"])), specs)


def _check_bundles(bundles: Any) -> None:
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("placement_group(): bundles must be a non-empty list of dicts, "
                         f"got {bundles!r}")
    for index, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not bundle or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and v >= 0 for k, v in bundle.items()):
            raise ValueError(f"placement_group(): bundle {index} {bundle!r} must map resource "
                             "names to numbers >= 0")
        if not any(v > 0 for v in bundle.values()):
            raise ValueError(f"placement_group(): bundle {index} {bundle!r} reserves nothing")


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give its resources back; actors placed in it are stopped."""
    from zray.api import client_for_call

    _checked(client_for_call().query("remove_placement_group", id=placement_group.id.hex()))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of that name."""
    from zray.api import client_for_call

    reply = client_for_call().query("placement_group_named", name=placement_group_name)
    if "error" in reply:
        raise ValueError(f"Failed to look up placement group with name: "
                         f"{placement_group_name}")
    return _rebuild(reply["placement_group_id"], reply["bundles"])


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor was placed in; None in a driver, or outside
    any group."""
    placement = _current_placement()
    if not placement:
        return None
    return _rebuild(placement["group"], placement["bundles"])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Every group (by hex id), or one, in Ray's shape."""
    from zray.api import read_table

    table = {}
    for _, row, _ in read_table("placement_groups").rows:
        table[row["placement_group_id"]] = {
            "placement_group_id": row["placement_group_id"], "name": row["name"],
            "bundles": dict(enumerate(row["bundles"])),
            "bundles_to_node_id": dict(enumerate(row["bundle_nodes"])),
            "strategy": row["strategy"], "state": row["state"],
            "stats": {"scheduling_state": row["pending_reason"] or row["state"]}}
    if placement_group is None:
        return table
    return table.get(placement_group.id.hex(), {})


def placed(resources: dict[str, float], strategy: Any, what: str) -> dict[str, float]:
    """``resources`` as a task or actor placed by ``strategy`` asks for them: the group's
    names (zray/node/placement_groups.py) if it is a PlacementGroupSchedulingStrategy."""
    from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not isinstance(strategy, PlacementGroupSchedulingStrategy):
        return resources
    group, index = strategy.placement_group, strategy.placement_group_bundle_index
    if not -1 <= index < group.bundle_count:
        raise ValueError(f"{what}: placement_group_bundle_index {index} is out of range: the "
                         f"group has {group.bundle_count} bundles (-1: any)")
    bundles = group.bundle_specs if index == -1 else [group.bundle_specs[index]]
    for name, amount in resources.items():
        if not any(bundle.get(name, 0.0) >= amount for bundle in bundles):
            raise ValueError(f"{what}: needs {name}={amount:g}, more than "
                             f"{'any bundle' if index == -1 else f'bundle {index}'} of its "
                             f"placement group holds ({bundles})")
    suffix = f"_group_{group.id.hex()}" if index == -1 else f"_group_{index}_{group.id.hex()}"
    return {**{f"{name}{suffix}": amount for name, amount in resources.items()},
            f"bundle{suffix}": 0.001}


def captured_group() -> str:
    """The group of the calling task if it captures its children (its hex id), else "".
    (On every ``f.remote()``.)"""
    placement = _current_placement()
    return placement["group"] if placement.get("capture") else ""


def _current_placement() -> dict[str, Any]:
    """The calling task's or actor's placement ({} in a driver, or outside any group).
    The client runtime's module is looked up, not imported: cheap on every call."""
    core = sys.modules.get("zray.core")
    client = core.current() if core is not None else None
    return (client.context.placement or {}) if client is not None else {}


def strategy_of(options: dict[str, Any]) -> Any:
    """The scheduling strategy of a task or actor with these options: its own, else its
    parent's group when the parent was placed with placement_group_capture_child_tasks
    (any bundle of it, and its children in turn, as in Ray)."""
    from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = options.get("scheduling_strategy")
    parent = _current_placement()
    if strategy is not None or not parent.get("capture"):
        return strategy
    return PlacementGroupSchedulingStrategy(_rebuild(parent["group"], parent["bundles"]),
                                            -1, True)


def placement_of(strategy: Any) -> dict[str, Any]:
    """What a task placed by ``strategy`` knows of its group (``get_current_placement_
    group``, and its children's, if captured): {} if none."""
    from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not isinstance(strategy, PlacementGroupSchedulingStrategy):
        return {}
    group = strategy.placement_group
    return {"group": group.id.hex(), "bundles": group.bundle_specs,
            "capture": bool(strategy.placement_group_capture_child_tasks)}


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("error"):
        raise ValueError(reply["error"])
    return reply
