"""Placement groups: bundles of resources reserved together, all or none (Ray's gang
scheduling), on this node.

A group is PENDING until every bundle fits at once; then each bundle's resources leave
the node's free resources and come back under names of the group's own, as in Ray::

    CPU_group_<i>_<group hex>    bundle i's CPUs (any resource the bundle holds)
    CPU_group_<group hex>        every bundle's, for a task of the group with no index
    bundle_group_<i>_<hex>: 1000 so a task of the group that asks for nothing lands there

A task or actor placed in a group asks for those names instead of its plain resources
(``zray.util.placement_group.placed``), so the scheduler gives it a bundle's share like any
resource, and only while the group exists. Removing the group gives the resources back;
its actors are stopped; what is queued for it waits (no bundle will come). A group that
does not fit stays PENDING, its reason in its GCS row (``zray inspect placement_groups``).

This version places every bundle on the node whose process created the group: STRICT_SPREAD
over several bundles needs several nodes, and stays PENDING saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zray.node.scheduler import Scheduler

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_BUNDLE_UNITS = 1000.0  # of bundle_group_*: a task of the group that asks for nothing


@dataclass
class Group:
    group_id: bytes
    name: str
    strategy: str
    bundles: list[dict[str, float]]
    job_id: bytes
    detached: bool
    state: str = "PENDING"  # -> CREATED -> REMOVED (or PENDING -> REMOVED)
    reason: str = ""
    gpu_ids: list[list[int]] = field(default_factory=list)
    waiting: list[bytes] = field(default_factory=list)  # ready objects to fill once CREATED
    created: float = field(default_factory=time.time)

    def resources(self) -> dict[str, float]:
        """The names tasks of the group ask for, and how much of each the group holds."""
        hexid = self.group_id.hex()
        names: dict[str, float] = {}
        for index, bundle in enumerate(self.bundles):
            for resource, amount in {**bundle, "bundle": _BUNDLE_UNITS}.items():
                names[f"{resource}_group_{index}_{hexid}"] = amount
                wildcard = f"{resource}_group_{hexid}"
                names[wildcard] = names.get(wildcard, 0.0) + amount
        return names

    def row(self, node_hex: str) -> dict[str, Any]:
        placed = self.state == "CREATED"
        return {"placement_group_id": self.group_id.hex(), "name": self.name,
                "strategy": self.strategy, "state": self.state, "bundles": self.bundles,
                "bundle_nodes": [node_hex if placed else "" for _ in self.bundles],
                "pending_reason": self.reason, "job_id": self.job_id.hex(),
                "lifetime": "detached" if self.detached else "", "created": self.created}


class PlacementGroups:
    def __init__(self, scheduler: Scheduler, record: Callable[[Group], None],
                 fill: Callable[[bytes, Group], None], stop_actors_of: Callable[[str], None],
                 may_place_here: Callable[[Group], str]) -> None:
        """``record(group)``: its GCS row; ``fill(object_id, group)``: a ready object's
        value (the group CREATED, or an error once REMOVED); ``stop_actors_of(hex)``: kill
        the actors placed in it; ``may_place_here(group)``: "" or why this node alone
        cannot hold it."""
        self.scheduler = scheduler
        self.record, self.fill, self.stop_actors_of = record, fill, stop_actors_of
        self.may_place_here = may_place_here
        self.groups: dict[bytes, Group] = {}
        self.pending: list[Group] = []

    def create(self, group: Group) -> None:
        self.groups[group.group_id] = group
        self.pending.append(group)
        self.place_pending()
        if group.state == "PENDING":
            self.record(group)

    def place_pending(self) -> None:
        """Reserve the groups that fit now, oldest first (each pass of the agent's loop)."""
        for group in list(self.pending):
            why = self.may_place_here(group) or self._reserve(group)
            if why:
                if why != group.reason:
                    group.reason = why
                    self.record(group)
                continue
            self.pending.remove(group)
            group.state, group.reason = "CREATED", ""
            self.scheduler.add_resources(group.resources())
            self.record(group)
            for object_id in group.waiting:
                self.fill(object_id, group)
            group.waiting.clear()

    def _reserve(self, group: Group) -> str:
        """Take every bundle's resources, all or none: "" or why they do not fit now."""
        taken: list[tuple[dict[str, float], list[int]]] = []
        for index, bundle in enumerate(group.bundles):
            gpu_ids = self.scheduler.reserve(bundle)
            if gpu_ids is None:
                for done, ids in taken:
                    self.scheduler.unreserve(done, ids)
                total = self.scheduler.total
                never = {k: v for k, v in bundle.items() if total.get(k, 0.0) < v}
                return (f"bundle {index} {bundle} is more than this node has ({total})"
                        if never else
                        f"waits for bundle {index} {bundle} to be free: this node has "
                        f"{self.scheduler.available} (all bundles are reserved at once)")
            taken.append((bundle, gpu_ids))
        group.gpu_ids = [ids for _, ids in taken]
        return ""

    def wait_ready(self, group_id: bytes, object_id: bytes) -> bool:
        """Fill ``object_id`` once the group is CREATED (now, if it is); False: unknown."""
        group = self.groups.get(group_id)
        if group is None:
            return False
        if group.state == "PENDING":
            group.waiting.append(object_id)
        else:
            self.fill(object_id, group)
        return True

    def remove(self, group_id: bytes) -> bool:
        group = self.groups.get(group_id)
        if group is None or group.state == "REMOVED":
            return False
        if group.state == "CREATED":
            self.scheduler.remove_resources(group.resources())
            for bundle, gpu_ids in zip(group.bundles, group.gpu_ids, strict=True):
                self.scheduler.unreserve(bundle, gpu_ids)
            self.stop_actors_of(group.group_id.hex())
        else:
            self.pending.remove(group)
        group.state, group.reason = "REMOVED", ""
        self.record(group)
        for object_id in group.waiting:
            self.fill(object_id, group)
        group.waiting.clear()
        return True

    def job_ended(self, job_id: bytes) -> None:
        """A job's groups go with it, unless detached (as in Ray)."""
        for group in list(self.groups.values()):
            if group.job_id == job_id and not group.detached:
                self.remove(group.group_id)

    def named(self, name: str) -> Group | None:
        return next((g for g in self.groups.values() if g.name == name
                     and g.state != "REMOVED"), None)
