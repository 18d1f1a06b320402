"""The owner's lineage (zray/lineage.py), alone: what it keeps, for how long, and what it
drops past its cap. Real DirectTasks, no processes."""

from __future__ import annotations

from zray.ids import return_object_id
from zray.leasing import DirectTask
from zray.lineage import Lineage


def task(name: str, deps: tuple[bytes, ...] = (), args: bytes = b"") -> DirectTask:
    task_id = name.encode().ljust(16, b".")
    return DirectTask(task_id, b"job", b"fn", name, args, [None] * len(deps), 1, b"", 3,
                      {"CPU": 1.0}, list(deps))


def result(t: DirectTask) -> bytes:
    return return_object_id(t.task_id, 0)


def test_a_task_is_kept_while_its_result_or_a_kept_child_needs_it() -> None:
    lineage = Lineage(max_bytes=1 << 20)
    leaf = task("leaf")
    lineage.submitted(leaf.task_id, 1, [])
    parent = task("parent", (result(leaf),))
    lineage.submitted(parent.task_id, 1, parent.dep_ids)
    lineage.finished(leaf, ok=True)
    lineage.released([result(leaf)])  # the driver dropped the leaf's ref: `parent` needs it
    assert lineage.find(leaf.task_id) == (leaf, False)
    lineage.finished(parent, ok=True)
    lineage.released([result(parent)])  # nothing needs either now
    assert lineage.find(parent.task_id) == (None, False)
    assert lineage.find(leaf.task_id) == (None, False)
    assert len(lineage) == 0 and lineage.bytes == 0


def test_a_failed_task_or_one_whose_results_were_dropped_is_not_kept() -> None:
    lineage = Lineage(max_bytes=1 << 20)
    failed, dropped = task("failed"), task("dropped")
    for t in (failed, dropped):
        lineage.submitted(t.task_id, 1, [])
    lineage.released([result(dropped)])  # before it ended
    lineage.finished(failed, ok=False)
    lineage.finished(dropped, ok=True)
    assert len(lineage) == 0 and lineage.bytes == 0


def test_past_the_cap_the_oldest_are_evicted_but_still_known() -> None:
    lineage = Lineage(max_bytes=5000)
    tasks = [task(f"t{i}", args=b"x" * 2000) for i in range(3)]
    for t in tasks:
        lineage.submitted(t.task_id, 1, [])
        lineage.finished(t, ok=True)
    assert lineage.find(tasks[0].task_id) == (None, True)  # evicted: its error says so
    assert lineage.find(tasks[2].task_id) == (tasks[2], False)
    assert lineage.bytes <= 5000
    lineage.released([result(t) for t in tasks])
    assert lineage.find(tasks[0].task_id) == (None, False) and lineage.bytes == 0


def test_outside_a_cluster_nothing_is_kept() -> None:
    """A private cluster's results cannot outlive their node: no lineage to pay for."""
    lineage = Lineage(max_bytes=1 << 20)
    lineage.enabled = False
    leaf = task("leaf")
    lineage.submitted(leaf.task_id, 1, [])
    lineage.finished(leaf, ok=True)
    assert lineage.find(leaf.task_id) == (None, False) and lineage.bytes == 0
