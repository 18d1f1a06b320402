"""Objects across nodes: made on one node, pulled in chunks by the nodes that read them,
counted across nodes until the last reference anywhere goes (zray/node/transfer.py,
zray/node/object_table.py). Three real nodes on loopback, each with its own store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import local_cluster

import zray
from cli.status import node_status
from zray.cluster_utils import Cluster, ClusterNode
from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with local_cluster({"num_cpus": 1}, {"num_cpus": 1}) as cluster:
        yield cluster


def on(node: ClusterNode) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


def status(node: ClusterNode) -> dict[str, Any]:
    return node_status(node.record.session)


def store_use(cluster: Cluster) -> list[int]:
    return [status(node)["store"]["bytes_in_use"] for node in cluster.list_all_nodes()]


def received(node: ClusterNode) -> int:
    return int(status(node)["transfers"].get("bytes_received", 0))


def wait_for_baseline(cluster: Cluster, baseline: list[int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (use := store_use(cluster)) != baseline:
        assert time.monotonic() < deadline, f"stores hold {use}, not {baseline}"
        time.sleep(0.1)


@zray.remote
def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@zray.remote
def scale(array: np.ndarray, factor: float) -> np.ndarray:
    return array * factor


@zray.remote
def total(array: np.ndarray) -> tuple[str, float]:
    return zray.get_runtime_context().get_node_id(), float(array.sum())


@zray.remote
class Keeper:
    def __init__(self) -> None:
        self.kept: list[Any] = []

    def keep(self, box: list[Any]) -> int:
        self.kept.extend(box)  # (refs nested in the argument: held in the actor's state)
        return len(self.kept)

    def sum_kept(self) -> float:
        return float(sum(zray.get(ref).sum() for ref in self.kept))

    def drop(self) -> None:
        self.kept.clear()

    def add(self, array: np.ndarray) -> float:
        self.total = getattr(self, "total", 0.0) + float(array.sum())
        return self.total


def test_an_array_made_on_one_node_is_summed_on_another_and_read_here(
        cluster: Cluster) -> None:
    """20 MB made on node 1, summed on node 2 (pulled from node 1, not through the
    head), read by the driver on the head; every store back to where it was once the ref
    goes."""
    head, one, two = cluster.list_all_nodes()
    baseline = store_use(cluster)
    before = [received(node) for node in (head, two)]
    array = make.options(scheduling_strategy=on(one)).remote(2_500_000)
    where, value = zray.get(total.options(scheduling_strategy=on(two)).remote(array))
    expected = float(np.arange(2_500_000, dtype=np.float64).sum())
    assert (where, value) == (two.node_id, expected)
    assert received(two) - before[1] >= 20 * MB
    assert received(head) == before[0]
    local = zray.get(array)
    assert local.shape == (2_500_000,) and float(local.sum()) == expected
    assert not local.flags.writeable  # (zero-copy: a view of this node's store)
    # A driver's array there and a result made of it back: the owner's report of a
    # result left on another node is filed here (it unpins the argument).
    doubled = scale.options(scheduling_strategy=on(two)).remote(array, 2.0)
    assert float(zray.get(doubled).sum()) == 2 * expected
    del local, array, doubled
    wait_for_baseline(cluster, baseline)


def test_a_task_runs_where_its_largest_argument_is(cluster: Cluster) -> None:
    head, one, two = cluster.list_all_nodes()
    baseline = store_use(cluster)
    array = make.options(scheduling_strategy=on(two)).remote(2_500_000)
    assert zray.wait([array], fetch_local=False, timeout=30)[0] == [array]  # (not pulled)
    before = [received(node) for node in cluster.list_all_nodes()]
    assert zray.get(total.remote(array))[0] == two.node_id  # (no strategy: locality)
    assert [received(node) for node in cluster.list_all_nodes()] == before
    del array
    wait_for_baseline(cluster, baseline)


def test_a_drivers_put_is_read_on_other_nodes_once_each(cluster: Cluster) -> None:
    """A 50 MB put read by 100 tasks on another node at once: that node fetches it once."""
    head, one, two = cluster.list_all_nodes()
    baseline = store_use(cluster)
    before = received(one)
    data = np.ones(50 * MB // 8)
    ref = zray.put(data)
    results = zray.get([total.options(scheduling_strategy=on(one)).remote(ref)
                        for _ in range(100)])
    assert results == [(one.node_id, float(len(data)))] * 100
    got = received(one) - before
    assert 50 * MB <= got < 51 * MB, f"node 1 received {got:,} bytes for one 50 MB object"
    del ref, results
    wait_for_baseline(cluster, baseline)


def test_an_actor_elsewhere_called_from_tasks_on_two_other_nodes(cluster: Cluster) -> None:
    head, one, two = cluster.list_all_nodes()
    baseline = store_use(cluster)

    @zray.remote
    def call(n: int) -> float:
        keeper = zray.get_actor("adder", namespace="adders")  # (found through the GCS)
        return zray.get(keeper.add.remote(np.full(1_000_000, float(n))))

    keeper = Keeper.options(scheduling_strategy=on(two), name="adder",
                            namespace="adders").remote()
    assert zray.get(keeper.add.remote(np.zeros(1))) == 0.0
    firsts = [call.options(scheduling_strategy=on(node)).remote(n)
              for node, n in ((head, 1), (one, 2))]
    partial = sorted(zray.get(firsts))
    assert partial[-1] == 3_000_000.0  # (both calls' 8 MB arguments reached its state)
    assert zray.get(keeper.add.remote(np.zeros(10))) == 3_000_000.0
    zray.kill(keeper)
    wait_for_baseline(cluster, baseline)  # (the arguments the calls were lent: freed)


def test_refs_nested_in_objects_and_actor_state_are_freed_when_dropped(
        cluster: Cluster) -> None:
    head, one, two = cluster.list_all_nodes()
    baseline = store_use(cluster)
    inner = zray.put(np.ones(1_000_000))  # 8 MB, held only through the box below
    box = zray.put([inner])
    keeper = Keeper.options(scheduling_strategy=on(one)).remote()
    assert zray.get(keeper.keep.remote(box)) == 1
    del inner, box
    assert zray.get(keeper.sum_kept.remote()) == 1_000_000.0  # (its node pulls the array)
    time.sleep(0.5)
    assert store_use(cluster)[0] > baseline[0]  # (the actor's ref keeps it on the head)
    zray.get(keeper.drop.remote())
    wait_for_baseline(cluster, baseline)
    zray.kill(keeper)


@zray.remote
def boxed() -> list[Any]:
    return [zray.put(np.ones(1_000_000)), zray.put(5)]


@zray.remote
def plus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def test_results_dropped_before_their_task_ends_are_freed_on_every_node(
        cluster: Cluster) -> None:
    """Regression: the owner let go of a result while its task still ran elsewhere; the
    task's report then filed the result as held by the owner again, and the node that
    made it kept it for ever (a tree reduce filled every store)."""
    baseline = store_use(cluster)
    one, two = cluster.worker_nodes
    a, b = (make.options(scheduling_strategy=on(one)).remote(1_000_000) for _ in range(2))
    summed = plus.options(scheduling_strategy=on(two)).remote(a, b)
    del a, b  # (before `make` ends)
    assert zray.get(summed)[-1] == 2 * 999_999
    del summed
    wait_for_baseline(cluster, baseline)


def test_refs_made_on_another_node_and_returned_inside_a_result(cluster: Cluster) -> None:
    head, one, two = cluster.list_all_nodes()
    baseline = store_use(cluster)
    box = zray.get(boxed.options(scheduling_strategy=on(one)).remote(), timeout=30)
    assert float(zray.get(box[0], timeout=30).sum()) == 1_000_000.0
    assert zray.get(box[1], timeout=30) == 5
    del box
    wait_for_baseline(cluster, baseline)


def relayed(cluster: Cluster, kinds: tuple[str, ...] = ("t", "d")) -> int:
    """Messages the agents relayed of these kinds: tasks to a worker, answers back."""
    return sum(status(node)["relayed"].get(f"sent {kind}", 0) for kind in kinds
               for node in cluster.list_all_nodes())


def test_tasks_and_actor_calls_on_other_nodes_go_straight_to_their_workers(
        cluster: Cluster) -> None:
    """The direct paths over TCP: the driver sends tasks to a worker of another node and
    calls an actor on a third, and the answers come back, with no agent relaying them."""
    head, one, two = cluster.list_all_nodes()
    keeper = Keeper.options(scheduling_strategy=on(two)).remote()
    assert zray.get(keeper.add.remote(np.ones(3))) == 3.0
    zray.get(total.options(scheduling_strategy=on(one)).remote(np.zeros(1)))
    before = relayed(cluster)
    ran = zray.get([total.options(scheduling_strategy=on(one)).remote(np.full(10, i))
                    for i in range(200)])
    assert ran == [(one.node_id, 10.0 * i) for i in range(200)]
    sums = [zray.get(keeper.add.remote(np.ones(3))) for _ in range(100)]
    assert sums == [3.0 * (i + 2) for i in range(100)]  # (its state, in call order)
    assert relayed(cluster) == before  # (the agents hear of them: notices and reports)
    zray.kill(keeper)


def test_status_counts_what_crossed(cluster: Cluster) -> None:
    transfers = status(cluster.list_all_nodes()[1])["transfers"]
    assert transfers["bytes_received"] > 0 and transfers["pulls_started"] > 0
    assert transfers["pulling"] == 0


def added_node(cluster: Cluster, **options: Any) -> ClusterNode:
    """A fourth node, once the head's agent knows it (it places the work)."""
    extra = cluster.add_node(num_cpus=1, **options)
    deadline = time.monotonic() + 20
    while extra.node_id not in {n["NodeID"] for n in zray.nodes() if n["Alive"]}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return extra


def test_a_node_that_leaves_gives_back_what_it_borrowed(cluster: Cluster) -> None:
    """Its results can no longer be pulled (ObjectLostError, not a hang, for one that
    may not be rebuilt: tests/test_node_failure.py rebuilds them); what it borrowed from
    the head is freed there when dropped."""
    baseline = store_use(cluster)
    extra = added_node(cluster)
    made_there = make.options(scheduling_strategy=on(extra), max_retries=0).remote(1_000_000)
    assert zray.wait([made_there], fetch_local=False, timeout=30)[0] == [made_there]
    kept = zray.put(np.ones(1_000_000))
    keeper = Keeper.options(scheduling_strategy=on(extra)).remote()
    assert zray.get(keeper.keep.remote([kept])) == 1  # (its node borrows it)
    cluster.remove_node(extra)
    with pytest.raises(zray.exceptions.ObjectLostError):
        zray.get(made_there, timeout=30)
    del made_there, kept
    wait_for_baseline(cluster, baseline)


def test_objects_a_full_node_spilled_are_pulled_from_their_files(cluster: Cluster) -> None:
    """A node whose store is full spills results it holds for an owner elsewhere; another
    node pulling them is served from the files, without reading them back there."""
    small = added_node(cluster, object_store_memory=40 * 2**20)
    refs = [make.options(scheduling_strategy=on(small)).remote(1_000_000) for _ in range(8)]
    assert len(zray.wait(refs, num_returns=8, fetch_local=False, timeout=30)[0]) == 8
    there = status(small)["store"]
    assert there["spilled_objects"] >= 3 and there["bytes_in_use"] <= there["capacity"]
    for ref in refs:  # (pulled here, to the head)
        assert zray.get(ref, timeout=30)[999_999] == 999_999.0
    assert status(small)["store"].get("objects_restored", 0) == 0
    del refs, ref
    deadline = time.monotonic() + 20
    while (there := status(small)["store"])["objects"]:
        assert time.monotonic() < deadline, there
        time.sleep(0.1)
    assert there["spilled_objects"] == 0 and there["spilled_bytes"] == 0
    cluster.remove_node(small)


@zray.remote
def put_there() -> list[Any]:
    return [zray.put(np.ones(1_000_000))]


def test_a_put_made_on_a_node_that_leaves_is_owner_died(cluster: Cluster) -> None:
    extra = added_node(cluster)
    (inner,) = zray.get(put_there.options(scheduling_strategy=on(extra)).remote(), timeout=30)
    cluster.remove_node(extra)
    with pytest.raises(zray.exceptions.OwnerDiedError, match="put by a process"):
        zray.get(inner, timeout=30)
