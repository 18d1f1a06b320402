"""Placement groups: bundles of resources reserved together, all or none, across the
cluster's nodes (Ray's gang scheduling).

The agent of the node whose process made a group *coordinates* it: it plans a node for
each bundle by the group's strategy from what each node has free (``plan``), then asks
each node to hold its bundles (two phases, as Ray's GCS does)::

    coordinator                          each node with bundles (itself too)
      ReserveBundles(group, bundles) --->  takes them from its free resources, all or
                                     <---  none: BundlesReserved(group, error)
      all held: CommitBundles        --->  they come back under the group's own names
      one refused: ReleaseBundles    --->  given back; the group waits and plans again

A committed bundle's resources are named as in Ray::

    CPU_group_<i>_<group hex>    bundle i's CPUs (any resource the bundle holds)
    CPU_group_<group hex>        that node's bundles' together, for "any bundle" (-1)
    bundle_group_<i>_<hex>: 1000 so a task of the group that asks for nothing lands there

A task or actor placed in a group asks for those names instead of its plain resources
(``zray.util.placement_group.placed``), so the schedulers, and the choice of a peer for a
lease, treat them as any resource. A group is PENDING until every bundle is committed (its
reason in its GCS row, ``zray inspect placement_groups``), then CREATED, until removed
(``remove``, or its job's end unless detached): every node gives its bundles back and stops
the actors placed in them. If a node holding bundles dies, the coordinator gives back the
rest and plans the group again; if the coordinator dies, the nodes give back its groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zray import protocol as p
from zray.node.scheduler import Scheduler

_BUNDLE_UNITS = 1000.0  # of bundle_group_*: a task of the group that asks for nothing
_RETRY_S = 0.5  # a group refused by a node plans again after this long
_REASON_EVERY_S = 1.0


@dataclass
class Group:
    """A group this node coordinates."""

    group_id: bytes
    name: str
    strategy: str
    bundles: list[dict[str, float]]
    job_id: bytes
    detached: bool
    state: str = "PENDING"  # -> CREATED -> REMOVED (or PENDING -> REMOVED)
    reason: str = ""
    nodes: list[bytes] = field(default_factory=list)  # each bundle's, once planned
    awaiting: set[bytes] = field(default_factory=set)  # nodes yet to say they hold theirs
    refusal: str = ""  # why a node did not (this round)
    next_try: float = 0.0
    waiting: list[bytes] = field(default_factory=list)  # ready objects to fill once CREATED
    created: float = field(default_factory=time.time)
    said: float = 0.0  # when its reason was last recorded (monotonic)

    def row(self) -> dict[str, Any]:
        placed = self.state == "CREATED"
        return {"placement_group_id": self.group_id.hex(), "name": self.name,
                "strategy": self.strategy, "state": self.state, "bundles": self.bundles,
                "bundle_nodes": [n.hex() for n in self.nodes] if placed
                else [""] * len(self.bundles),
                "pending_reason": self.reason, "job_id": self.job_id.hex(),
                "lifetime": "detached" if self.detached else "", "created": self.created}


@dataclass
class _Held:
    """Bundles of a group this node holds (for its coordinator, maybe itself)."""

    coordinator: bytes
    indexes: list[int]
    bundles: list[dict[str, float]]
    gpu_ids: list[list[int]]
    committed: bool = False


def group_resources(group_id: bytes, indexes: list[int],
                    bundles: list[dict[str, float]]) -> dict[str, float]:
    """The names tasks of the group ask for on a node holding these bundles, and how much
    of each the node holds."""
    hexid = group_id.hex()
    names: dict[str, float] = {}
    for index, bundle in zip(indexes, bundles, strict=True):
        for resource, amount in {**bundle, "bundle": _BUNDLE_UNITS}.items():
            names[f"{resource}_group_{index}_{hexid}"] = amount
            wildcard = f"{resource}_group_{hexid}"
            names[wildcard] = names.get(wildcard, 0.0) + amount
    return names


def plan(bundles: list[dict[str, float]], strategy: str, here: bytes,
         free: dict[bytes, dict[str, float]]) -> list[bytes] | str:
    """A node for each bundle by ``strategy``, from what each live node has ``free`` (this
    one, ``here``, first in ties); or why there is none now."""
    room = {node: dict(have) for node, have in free.items()}
    order = [here] + sorted((n for n in room if n != here),
                            key=lambda n: -room[n].get("CPU", 0.0))

    def fits(node: bytes, demand: dict[str, float]) -> bool:
        return all(room[node].get(k, 0.0) >= v - 1e-9 for k, v in demand.items())

    def take(node: bytes, demand: dict[str, float]) -> bytes:
        for k, v in demand.items():
            room[node][k] = room[node].get(k, 0.0) - v
        return node

    if strategy == "STRICT_PACK":
        together: dict[str, float] = {}
        for bundle in bundles:
            for k, v in bundle.items():
                together[k] = together.get(k, 0.0) + v
        node = next((n for n in order if fits(n, together)), None)
        return ([node] * len(bundles) if node is not None else
                f"no node has room for all {len(bundles)} bundles together ({together})")
    chosen: list[bytes] = []
    for index, bundle in enumerate(bundles):
        if strategy == "STRICT_SPREAD":
            candidates = [n for n in order if n not in chosen]
        elif strategy == "SPREAD":  # (a node not used yet first, then any)
            candidates = [n for n in order if n not in chosen] + [n for n in order
                                                                  if n in chosen]
        else:  # PACK: the nodes used already first
            candidates = list(dict.fromkeys(chosen)) + [n for n in order if n not in chosen]
        node = next((n for n in candidates if fits(n, bundle)), None)
        if node is None:
            if strategy == "STRICT_SPREAD" and len(bundles) > len(order):
                return (f"STRICT_SPREAD puts each of its {len(bundles)} bundles on a node of "
                        f"its own; the cluster has {len(order)} nodes alive")
            return (f"bundle {index} {bundle} fits on no node now"
                    + (" that holds no other bundle of the group" if strategy ==
                       "STRICT_SPREAD" else "") + f" (free: {_shown(free)})")
        chosen.append(take(node, bundle))
    return chosen


def _shown(free: dict[bytes, dict[str, float]]) -> str:
    return "; ".join(f"{node.hex()[:8]} {({k: v for k, v in have.items() if '_group_' not in k})}"
                     for node, have in free.items())


class PlacementGroups:
    def __init__(self, node_id: bytes, scheduler: Scheduler, record: Callable[[Group], None],
                 fill: Callable[[bytes, Group], None], stop_actors_of: Callable[[str], None],
                 peers_free: Callable[[], dict[bytes, dict[str, float]]],
                 send: Callable[[bytes, p.Message], bool]) -> None:
        """``record(group)``: its GCS row; ``fill(object_id, group)``: a ready object's
        value (the group CREATED, or an error once REMOVED); ``stop_actors_of(hex)``: kill
        the actors placed in it here; ``peers_free()``: each live peer's free resources,
        as it last said; ``send(node, msg)``: to a peer's agent (False: it is gone)."""
        self.node_id, self.scheduler = node_id, scheduler
        self.record, self.fill, self.stop_actors_of = record, fill, stop_actors_of
        self.peers_free, self.send = peers_free, send
        self.groups: dict[bytes, Group] = {}  # those we coordinate
        self.pending: list[Group] = []
        self.held: dict[bytes, _Held] = {}  # group id -> our bundles of it

    # --- as coordinator --------------------------------------------------------------

    def create(self, group: Group) -> None:
        self.groups[group.group_id] = group
        self.pending.append(group)
        self.place_pending()
        if group.state == "PENDING":
            self.record(group)

    def place_pending(self) -> None:
        """Plan and ask for the groups waiting, oldest first (each pass of the agent's
        loop; a group whose nodes are still answering waits for them)."""
        now = time.monotonic()
        for group in [g for g in self.pending if not g.awaiting and g.next_try <= now]:
            free = {self.node_id: dict(self.scheduler.available), **self.peers_free()}
            chosen = plan(group.bundles, group.strategy, self.node_id, free)
            if isinstance(chosen, str):
                self._waits(group, chosen)
                continue
            group.nodes, group.refusal = chosen, ""
            for node, indexes in self._by_node(group).items():
                bundles = [group.bundles[i] for i in indexes]
                if node == self.node_id:
                    group.refusal = self.hold(group.group_id, node, indexes, bundles)
                elif self.send(node, p.ReserveBundles(group.group_id, indexes, bundles)):
                    group.awaiting.add(node)
                else:
                    group.refusal = f"node {node.hex()[:8]} is gone"
            self._settle(group)

    def on_reserved(self, node: bytes, msg: p.BundlesReserved) -> None:
        group = self.groups.get(msg.group_id)
        if group is None or node not in group.awaiting:
            return
        group.awaiting.discard(node)
        group.refusal = group.refusal or msg.error
        self._settle(group)

    def _settle(self, group: Group) -> None:
        """Once every node answered: all hold theirs (commit) or not (give back, wait)."""
        if group.awaiting:
            return
        if group.state == "REMOVED" or group.refusal:
            for node in self._by_node(group):
                self._to(node, p.ReleaseBundles(group.group_id))
            if group.state != "REMOVED":
                self._waits(group, group.refusal)
                group.next_try = time.monotonic() + _RETRY_S
            return
        for node in self._by_node(group):
            self._to(node, p.CommitBundles(group.group_id))
        self.pending.remove(group)
        group.state, group.reason = "CREATED", ""
        self.record(group)
        self._answer_waiting(group)

    def _waits(self, group: Group, why: str) -> None:
        """It waits, for ``why``: its row says so (again at most each second: the free
        resources a reason quotes change with every task)."""
        now = time.monotonic()
        if why != group.reason and (now - group.said >= _REASON_EVERY_S
                                    or not why.startswith(group.reason[:24])):
            group.reason, group.said = why, now
            self.record(group)

    def _by_node(self, group: Group) -> dict[bytes, list[int]]:
        by_node: dict[bytes, list[int]] = {}
        for index, node in enumerate(group.nodes):
            by_node.setdefault(node, []).append(index)
        return by_node

    def _to(self, node: bytes, msg: p.Message) -> None:
        """A message to a node holding bundles: handled here if it is this one."""
        if node != self.node_id:
            self.send(node, msg)
        elif isinstance(msg, p.CommitBundles):
            self.commit(msg.group_id)
        elif isinstance(msg, p.ReleaseBundles):
            self.release(msg.group_id)

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
        was = group.state
        group.state, group.reason = "REMOVED", ""
        if was == "CREATED":
            for node in self._by_node(group):
                self._to(node, p.ReleaseBundles(group.group_id))
        else:
            self.pending.remove(group)
            self._settle(group)  # (gives back what is held; the rest once answered)
        self.record(group)
        self._answer_waiting(group)
        return True

    def _answer_waiting(self, group: Group) -> None:
        """Its ``ready()`` refs get their value: the group, or the error it was removed."""
        for object_id in group.waiting:
            self.fill(object_id, group)
        group.waiting.clear()

    def job_ended(self, job_id: bytes) -> None:
        """A job's groups go with it, unless detached (as in Ray)."""
        for group in list(self.groups.values()):
            if group.job_id == job_id and not group.detached:
                self.remove(group.group_id)

    def named(self, name: str) -> Group | None:
        return next((g for g in self.groups.values() if g.name == name
                     and g.state != "REMOVED"), None)

    def node_gone(self, node: bytes) -> None:
        """Groups with bundles there are given back and planned again; bundles held here
        for a coordinator there are given back."""
        for group in self.groups.values():
            if group.state == "REMOVED" or node not in group.nodes:
                continue
            group.awaiting.discard(node)
            if group.state == "CREATED":
                for other in self._by_node(group):
                    if other != node:
                        self._to(other, p.ReleaseBundles(group.group_id))
                group.state, group.nodes = "PENDING", []
                self.pending.append(group)
                self._waits(group, f"node {node.hex()[:8]}, which held bundles, died: "
                                   "placed again")
            else:
                group.refusal = group.refusal or f"node {node.hex()[:8]} died"
                self._settle(group)
        for group_id in [g for g, held in self.held.items() if held.coordinator == node]:
            self.release(group_id)

    # --- as a node holding bundles -----------------------------------------------------

    def hold(self, group_id: bytes, coordinator: bytes, indexes: list[int],
             bundles: list[dict[str, float]]) -> str:
        """Take these bundles from our free resources, all or none: "" or why not."""
        if group_id in self.held:
            return f"node {self.node_id.hex()[:8]} holds bundles of that group already"
        taken: list[list[int]] = []
        for index, bundle in zip(indexes, bundles, strict=True):
            gpu_ids = self.scheduler.reserve(bundle)
            if gpu_ids is None:
                for done, ids in zip(bundles, taken, strict=False):
                    self.scheduler.unreserve(done, ids)
                return (f"node {self.node_id.hex()[:8]} has no room for bundle {index} "
                        f"{bundle} now (free: {_shown({self.node_id: self.scheduler.available})})")
            taken.append(gpu_ids)
        self.held[group_id] = _Held(coordinator, indexes, bundles, taken)
        return ""

    def on_reserve(self, node: bytes, msg: p.ReserveBundles) -> None:
        error = self.hold(msg.group_id, node, list(msg.indexes), list(msg.bundles))
        self.send(node, p.BundlesReserved(msg.group_id, error))

    def commit(self, group_id: bytes) -> None:
        held = self.held.get(group_id)
        if held is not None and not held.committed:
            held.committed = True
            self.scheduler.add_resources(group_resources(group_id, held.indexes,
                                                         held.bundles))

    def release(self, group_id: bytes) -> None:
        held = self.held.pop(group_id, None)
        if held is None:
            return
        if held.committed:
            self.scheduler.remove_resources(group_resources(group_id, held.indexes,
                                                            held.bundles))
            self.stop_actors_of(group_id.hex())
        for bundle, gpu_ids in zip(held.bundles, held.gpu_ids, strict=True):
            self.scheduler.unreserve(bundle, gpu_ids)

    def on_message(self, node: bytes, msg: p.Message) -> None:
        """A peer's agent, about groups (the mesh's kind "groups")."""
        if isinstance(msg, p.ReserveBundles):
            self.on_reserve(node, msg)
        elif isinstance(msg, p.BundlesReserved):
            self.on_reserved(node, msg)
        elif isinstance(msg, p.CommitBundles) and node == self._coordinator(msg.group_id):
            self.commit(msg.group_id)
        elif isinstance(msg, p.ReleaseBundles) and node == self._coordinator(msg.group_id):
            self.release(msg.group_id)

    def _coordinator(self, group_id: bytes) -> bytes | None:
        held = self.held.get(group_id)
        return held.coordinator if held is not None else None
