"""Placement groups (zray/node/placement_groups.py, zray.util.placement_group), through the
public API, on one node: bundles reserved all or none, tasks and actors placed in them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import local_cluster

import zray
from zray.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two_cpus() -> Iterator[None]:
    zray.init(num_cpus=2)
    yield
    zray.shutdown()


@zray.remote
def one() -> int:
    return 1


@zray.remote
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@zray.remote
class Pinger:
    def ping(self) -> str:
        return "pong"


@zray.remote
def where() -> str:
    return zray.get_runtime_context().get_node_id()


def in_group(group: object, index: int = -1) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(group, index)


def row_of(group: object, until: str) -> dict:
    """Its placement_group_table() entry once its scheduling state starts with ``until``
    (rows reach the GCS within gcs_flush_ms)."""
    deadline = time.monotonic() + 10
    while not (row := placement_group_table(group)) or not str(
            row["stats"]["scheduling_state"]).startswith(until):
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    return row


def test_a_ready_group_holds_its_cpus_until_it_is_removed(two_cpus: None) -> None:
    group = placement_group([{"CPU": 2}], name="pair")
    assert zray.get(group.ready(), timeout=10) == group and group.wait(1)
    available = zray.available_resources()
    assert available.get("CPU", 0) == 0  # (the reservation)
    assert available[f"CPU_group_0_{group.id.hex()}"] == 2.0
    plain = one.remote()
    assert zray.wait([plain], timeout=1.0)[0] == []  # no CPU outside the group
    assert zray.get([one.options(scheduling_strategy=in_group(group, 0)).remote(),
                     one.options(scheduling_strategy=in_group(group)).remote()]) == [1, 1]
    actor = Pinger.options(scheduling_strategy=in_group(group, 0)).remote()
    assert zray.get(actor.ping.remote(), timeout=10) == "pong"
    assert get_placement_group("pair") == group
    row = row_of(group, "CREATED")
    assert row["state"] == "CREATED" and row["bundles"] == {0: {"CPU": 2.0}}
    assert row["bundles_to_node_id"][0] == zray.get_runtime_context().get_node_id()
    remove_placement_group(group)
    assert zray.get(plain, timeout=10) == 1  # its CPUs are back
    assert zray.available_resources()["CPU"] == 2.0
    with pytest.raises(zray.exceptions.ActorDiedError, match="placement group"):
        zray.get(actor.ping.remote(), timeout=10)
    assert row_of(group, "REMOVED")["state"] == "REMOVED"
    with pytest.raises(ValueError, match="pair"):
        get_placement_group("pair")


def test_a_group_that_does_not_fit_waits_saying_why(two_cpus: None) -> None:
    busy = nap.remote(1.5)
    deadline = time.monotonic() + 10  # (running: one CPU in use)
    while zray.available_resources().get("CPU", 0) != 1.0:
        assert time.monotonic() < deadline, zray.available_resources()
        time.sleep(0.02)
    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert not group.wait(0.3)
    assert "room for all 2 bundles together" in row_of(group, "no node")["stats"][
        "scheduling_state"]
    assert zray.get(busy) == 1.5
    assert group.wait(10)  # all at once, once both CPUs are free
    too_big = placement_group([{"CPU": 4}])
    reason = row_of(too_big, "bundle 0")["stats"]["scheduling_state"]
    assert "fits on no node now" in reason and "{'CPU': 0.0" in reason, reason
    spread = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert "a node of its own" in row_of(spread, "STRICT_SPREAD")["stats"]["scheduling_state"]
    for pending in (too_big, spread):
        remove_placement_group(pending)
        with pytest.raises(zray.exceptions.ZrayError, match="removed"):
            zray.get(pending.ready(), timeout=10)


def test_bad_groups_and_placements_fail_at_the_call(two_cpus: None) -> None:
    for bundles in ([], [{}], [{"CPU": -1}], [{"CPU": 0}], "CPU"):
        with pytest.raises(ValueError, match="bundle"):
            placement_group(bundles)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="PACKED")
    group = placement_group([{"CPU": 1}], name="one")
    with pytest.raises(ValueError, match="exists already"):
        placement_group([{"CPU": 1}], name="one")
    with pytest.raises(ValueError, match="out of range"):
        one.options(scheduling_strategy=in_group(group, 1)).remote()
    with pytest.raises(ValueError, match="more than bundle 0"):
        one.options(num_cpus=2, scheduling_strategy=in_group(group, 0)).remote()
    remove_placement_group(group)


@zray.remote
def group_here() -> str | None:
    group = get_current_placement_group()
    return group.id.hex() if group is not None else None


@zray.remote
def parent_and_child() -> tuple[str | None, str | None]:
    return zray.get(group_here.remote()), zray.get(group_here.remote())


@zray.remote
class InGroup:
    def groups(self) -> tuple[str | None, str | None]:
        current = get_current_placement_group()
        return current.id.hex() if current else None, zray.get(group_here.remote())


def test_tasks_know_their_group_and_capture_their_children_if_asked(two_cpus: None) -> None:
    assert get_current_placement_group() is None  # (a driver)
    group = placement_group([{"CPU": 2}])
    captured = PlacementGroupSchedulingStrategy(group, 0, placement_group_capture_child_tasks=True)
    assert zray.get(group_here.options(scheduling_strategy=in_group(group, 0)).remote()) == \
        group.id.hex()
    # A captured task's children run in the group too (a plain CPU: none is free).
    assert zray.get(parent_and_child.options(scheduling_strategy=captured).remote(),
                    timeout=30) == (group.id.hex(), group.id.hex())
    actor = InGroup.options(scheduling_strategy=captured).remote()
    assert zray.get(actor.groups.remote(), timeout=30) == (group.id.hex(), group.id.hex())
    remove_placement_group(group)
    half = placement_group([{"CPU": 1}])  # (the other CPU stays free for the child)
    assert zray.get(parent_and_child.options(scheduling_strategy=in_group(half, 0)).remote(),
                    timeout=30) == (None, None)
    remove_placement_group(half)


def test_across_three_nodes_strict_spread_gives_each_bundle_a_node_of_its_own() -> None:
    """The coordinator (the driver's node) has every node hold its bundle, then commit;
    each bundle's task runs on that bundle's node. A group the nodes cannot hold together
    waits until one that holds their CPUs is removed."""
    with local_cluster({"num_cpus": 1}, {"num_cpus": 1}):
        spread = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        assert spread.wait(30)
        ran_on = zray.get([where.options(scheduling_strategy=in_group(spread, i)).remote()
                           for i in range(3)], timeout=30)
        assert len(set(ran_on)) == 3
        assert list(row_of(spread, "CREATED")["bundles_to_node_id"].values()) == ran_on
        four = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")
        assert "the cluster has 3 nodes alive" in row_of(four, "STRICT_SPREAD")["stats"][
            "scheduling_state"]
        packed = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
        assert not packed.wait(0.5)  # (every CPU is in the spread group)
        remove_placement_group(spread)
        assert packed.wait(30)
        nodes = set(row_of(packed, "CREATED")["bundles_to_node_id"].values())
        assert len(nodes) == 2  # (one CPU a node: two nodes)
        assert zray.get(where.options(scheduling_strategy=in_group(packed)).remote(),
                        timeout=30) in nodes
        for group in (four, packed):
            remove_placement_group(group)


def test_a_group_whose_node_leaves_is_placed_again() -> None:
    """Its other bundles are given back and it waits, saying why, until the cluster can
    hold it again."""
    with local_cluster({"num_cpus": 1}, {"num_cpus": 1}) as cluster:
        spread = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        assert spread.wait(30)
        leaving = cluster.list_all_nodes()[2]
        cluster.remove_node(leaving)
        reason = row_of(spread, "STRICT_SPREAD")["stats"]["scheduling_state"]
        assert "the cluster has 2 nodes alive" in reason, reason
        deadline = time.monotonic() + 10  # (the rest given back, as the nodes report)
        while zray.available_resources().get("CPU") != 2.0:
            assert time.monotonic() < deadline, zray.available_resources()
            time.sleep(0.05)
        cluster.add_node(num_cpus=1)
        assert list(row_of(spread, "CREATED")["bundles_to_node_id"].values())[2] != \
            leaving.node_id
        assert len(set(zray.get([where.options(scheduling_strategy=in_group(spread, i))
                                 .remote() for i in range(3)], timeout=30))) == 3
