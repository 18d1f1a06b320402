"""Spilling (zray/node/spilling.py): a store over its limit sends objects to disk and reads
them back when wanted; only a live zero-copy view, a task reading it, or the disk limit
keeps an object in its block."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

import zray
from zray import api
from zray.exceptions import ObjectStoreFullError

pytestmark = pytest.mark.timeout(120)
MiB = 2**20


def spill_files(stats: dict[str, Any]) -> dict[str, int]:
    directory = stats["spill_dir"]
    if not os.path.isdir(directory):
        return {}
    return {name: os.path.getsize(os.path.join(directory, name))
            for name in os.listdir(directory)}


def wait_until_empty(timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        gc.collect()
        stats = zray.store_stats()
        if (stats["objects"] == 0 and not spill_files(stats)) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def inspect_says(session: str, places: dict[str, str]) -> None:
    """Wait until ``zray inspect objects`` puts these objects (by id) where ``places``
    says, on this node (its rows reach the GCS within gcs_flush_ms)."""
    node = zray.get_runtime_context().get_node_id()
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run([sys.executable, "-m", "cli.main", "inspect", "objects",
                              "--session", session, "--json"], capture_output=True, text=True,
                             timeout=60, check=True)
        rows = {row["object_id"]: row for row in map(json.loads, out.stdout.splitlines())}
        seen = {key: rows[key]["where"] for key in places if key in rows}
        if seen == places:
            assert all(rows[key]["node_id"] == node for key in places)
            return
        assert time.monotonic() < deadline, f"inspect says {seen}, not {places}"
        time.sleep(0.1)


@zray.remote
def total(array: np.ndarray) -> float:
    return float(array.sum())


def test_600_mib_in_a_200_mib_store_spills_reads_back_and_leaves_nothing() -> None:
    zray.init(num_cpus=1, object_store_memory=200 * MiB)
    try:
        session = api._cluster.session  # type: ignore[union-attr]
        refs = []
        for i in range(75):  # 8 MiB each
            refs.append(zray.put(np.full(MiB, i, dtype=np.float64)))
            stats = zray.store_stats()  # (the agent's own count of its arena)
            assert stats["bytes_in_use"] <= stats["capacity"] == 200 * MiB
        assert stats["spilled_objects"] >= 50 and stats["spilled_bytes"] >= 400 * MiB
        files = spill_files(stats)
        assert len(files) == stats["spilled_objects"]
        assert sum(files.values()) == stats["spilled_bytes"]
        inspect_says(session, {refs[0].hex(): "disk", refs[-1].hex(): "store"})
        shown = subprocess.run([sys.executable, "-m", "cli.main", "status", "--session",
                                session], capture_output=True, text=True, timeout=60).stdout
        assert f"spilled:        {stats['spilled_bytes'] / MiB:.1f} MiB in " \
               f"{stats['spilled_objects']} objects on disk" in shown, shown
        for i, ref in enumerate(refs):  # oldest first: each comes back from disk
            array = zray.get(ref)
            assert array.shape == (MiB,) and array[0] == array[-1] == i
            del array
            stats = zray.store_stats()
            assert stats["bytes_in_use"] <= stats["capacity"]
        assert stats["objects_restored"] >= 50
        # A task whose argument is on disk (the least recently read went first) runs.
        inspect_says(session, {refs[0].hex(): "disk"})
        assert zray.get(total.remote(refs[0])) == 0.0
        assert zray.get([total.remote(ref) for ref in refs[1:4]]) == [MiB * i for i in (1, 2, 3)]
        del refs, ref
        stats = wait_until_empty()
        assert stats["objects"] == 0 and stats["bytes_in_use"] == 0, stats
        assert spill_files(stats) == {} and stats["spilled_bytes"] == 0
    finally:
        zray.shutdown()


def test_objects_mapped_by_views_stay_put_and_a_store_of_them_is_full() -> None:
    zray.init(num_cpus=1, object_store_memory=64 * MiB)
    try:
        viewed = zray.get(zray.put(np.arange(4 * MiB, dtype=np.float64)))  # 32 MiB, mapped
        kept = zray.put(np.ones(3 * MiB))  # 24 MiB, only referenced: may go to disk
        more = zray.put(np.full(3 * MiB, 2.0))  # no room for both: ``kept`` goes
        assert zray.store_stats()["spilled_objects"] == 1
        assert viewed[12345] == 12345.0 and viewed.sum() == np.arange(4 * MiB).sum()
        also = zray.get(more)  # mapped too: now nothing can go
        with pytest.raises(ObjectStoreFullError) as raised:
            zray.put(np.zeros(3 * MiB))
        message = str(raised.value)
        assert "64.0 MB are in use" in message and "spilled to" in message, message
        del viewed
        gc.collect()
        assert zray.get(zray.put(np.zeros(3 * MiB)))[0] == 0.0  # its block could go now
        assert zray.get(kept)[0] == 1.0 and also[0] == 2.0
        del also
    finally:
        zray.shutdown()


def test_past_the_disk_limit_the_store_is_full_naming_both_sizes(monkeypatch) -> None:
    monkeypatch.setenv("ZRAY_OBJECT_SPILL_MAX_BYTES", str(20 * MiB))
    zray.init(num_cpus=1, object_store_memory=32 * MiB)
    try:
        # Three 8 MiB objects fit in the store, two more on the disk (16 of its 20 MiB).
        refs = [zray.put(np.full(MiB, float(i))) for i in range(5)]
        with pytest.raises(ObjectStoreFullError) as raised:
            zray.put(np.zeros(MiB))
        message = str(raised.value)
        assert "of 32.0 MB are in use" in message and "16.0 MB are spilled" in message
        assert "20.0 MB (object_spill_max_bytes)" in message, message
        assert [zray.get(ref)[0] for ref in refs] == [float(i) for i in range(5)]
    finally:
        zray.shutdown()


@zray.remote
def first_and_last(array: np.ndarray) -> tuple[float, float]:
    return float(array[0]), float(array[-1])


def test_tasks_gets_and_puts_under_pressure_read_the_right_bytes() -> None:
    """Objects go to disk and back while tasks (on leases: their owner sends the blocks'
    places straight to the workers) read them: every read sees its own object's bytes."""
    zray.init(num_cpus=2, object_store_memory=48 * MiB)
    try:
        rng = np.random.default_rng(7)
        refs = [zray.put(np.full(MiB // 2, float(i))) for i in range(16)]  # 4 MiB each
        for _ in range(16):  # (a get crossing an ask to let go hung 1 run in 4 at 20)
            order = rng.permutation(len(refs))
            pending = [(i, first_and_last.remote(refs[i])) for i in order[:8]]
            for i in order[8:12]:
                array = zray.get(refs[i])
                assert array[0] == array[-1] == float(i)
                del array
            refs.append(zray.put(np.full(MiB // 2, float(len(refs)))))
            for i, result in pending:
                assert zray.get(result) == (float(i), float(i))
        stats = zray.store_stats()
        assert stats["objects_spilled"] > 10 and stats["objects_restored"] > 10, stats
        del refs, pending, result
        stats = wait_until_empty()
        assert stats["objects"] == 0 and not spill_files(stats), stats
    finally:
        zray.shutdown()


def test_the_spilling_benchmark_reports_both_ways() -> None:
    """(``zray microbenchmark``'s spill lines: no timing is asserted, only that it runs.)"""
    from zray import bench

    results = bench.spilling(zray, {"num_cpus": 1}, quick=True)
    assert [r.unit for r in results] == ["GB/s", "GB/s"] and all(r.value > 0 for r in results)
