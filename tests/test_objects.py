"""put / get / wait and the shared-memory store, through the public API."""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
import pytest

import zray
from zray.exceptions import GetTimeoutError

pytestmark = [pytest.mark.timeout(90)]
MB = 2**20


@pytest.fixture
def small_store():
    zray.init(num_cpus=2, object_store_memory=500 * MB)
    yield
    zray.shutdown()


def wait_store_empty(timeout_s=10.0):
    """Frees are asynchronous (refs are released in batches): poll, bounded."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        gc.collect()
        if zray.store_stats()["bytes_in_use"] == 0:
            return 0
        time.sleep(0.02)
    return zray.store_stats()["bytes_in_use"]


def test_put_get_small_and_large(small_store):
    assert zray.get(zray.put({"a": 1})) == {"a": 1}
    big = np.random.rand(1_000_000)
    out = zray.get(zray.put(big))
    assert np.array_equal(out, big)


def test_numpy_get_is_zero_copy_and_read_only(small_store):
    ref = zray.put(np.ones(1_000_000))
    a, b = zray.get(ref), zray.get(ref)
    assert np.shares_memory(a, b)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 2


def test_arrow_table_roundtrips_zero_copy(small_store):
    table = pa.table({"x": np.arange(500_000), "y": np.ones(500_000)})
    ref = zray.put(table)
    t1, t2 = zray.get(ref), zray.get(ref)
    assert t1.equals(table)
    assert t1["x"].chunks[0].buffers()[1].address == t2["x"].chunks[0].buffers()[1].address


def test_dropping_refs_frees_memory_in_a_loop(small_store):
    for i in range(200):
        ref = zray.put(np.full(50 * MB // 8, float(i)))
        assert zray.get(ref)[0] == float(i)
        del ref
    assert wait_store_empty() == 0


def test_view_keeps_object_alive_after_ref_dropped(small_store):
    ref = zray.put(np.arange(1_000_000, dtype=np.float64))
    view = zray.get(ref)
    del ref
    gc.collect()
    filler = [zray.put(np.zeros(MB)) for _ in range(3)]  # would reuse the block if freed
    assert view[123456] == 123456.0 and view.sum() == np.arange(1_000_000).sum()
    del view, filler
    assert wait_store_empty() == 0


def test_argument_stays_alive_while_task_queued(small_store):
    @zray.remote
    def block(seconds):
        import time

        time.sleep(seconds)

    @zray.remote
    def total(a):
        return float(a.sum())

    blockers = [block.remote(0.5) for _ in range(2)]  # both CPUs busy: next task queues
    ref = zray.put(np.ones(1_000_000))
    result = total.remote(ref)
    del ref
    gc.collect()
    filler = [zray.put(np.zeros(MB)) for _ in range(3)]
    assert zray.get(result) == 1_000_000.0
    zray.get(blockers)
    del filler, result
    assert wait_store_empty() == 0


def test_worker_view_keeps_object_alive():
    zray.init(num_cpus=1, object_store_memory=200 * MB)
    try:
        @zray.remote
        def keep(a):
            import sys

            sys.zray_test_kept = a  # a zero-copy view the worker holds after the task ends
            return True

        @zray.remote
        def read_kept():
            import sys

            return float(sys.zray_test_kept.sum())

        ref = zray.put(np.ones(1_000_000))
        assert zray.get(keep.remote(ref))
        del ref
        gc.collect()
        filler = [zray.put(np.zeros(MB)) for _ in range(3)]
        assert zray.get(read_kept.remote()) == 1_000_000.0
        del filler
    finally:
        zray.shutdown()


def test_get_timeout(small_store):
    @zray.remote
    def sleepy():
        import time

        time.sleep(5)

    with pytest.raises(GetTimeoutError) as info:
        zray.get(sleepy.remote(), timeout=0.2)
    assert isinstance(info.value, TimeoutError)


def test_wait_partitions_in_input_order(small_store):
    @zray.remote
    def after(seconds, value):
        import time

        time.sleep(seconds)
        return value

    fast = [after.remote(0.0, 1), after.remote(0.0, 3)]  # submitted first: run first
    slow = [after.remote(2.0, 0), after.remote(2.0, 2)]
    refs = [slow[0], fast[0], slow[1], fast[1]]
    ready, not_ready = zray.wait(refs, num_returns=2, timeout=10)
    assert ready == [refs[1], refs[3]]
    assert not_ready == [refs[0], refs[2]]
    ready, not_ready = zray.wait(refs, num_returns=4, timeout=0.01)
    assert len(ready) + len(not_ready) == 4 and set(ready) <= set(refs)
    zray.get(refs)  # all ready: the first num_returns in input order count as ready
    assert zray.wait(refs, num_returns=3) == (refs[:3], refs[3:])
    assert zray.wait(refs, num_returns=0) == ([], refs)


def test_wait_among_many_keeps_input_order_with_few_or_many_ready(small_store, tmp_path):
    @zray.remote
    def once_opened(path):
        import os
        import time

        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0

    @zray.remote
    def same(value):
        return value

    opened = tmp_path / "open"
    gate = once_opened.remote(str(opened))
    pending = [same.remote(gate) for _ in range(40)]  # not ready until the gate opens
    ready = [zray.put(i) for i in range(12)]
    refs = pending[:]
    for i, ref in enumerate(ready):  # at positions 1, 5, 9, ...
        refs.insert(1 + 4 * i, ref)
    others = [ref for ref in refs if ref not in ready[:3]]
    assert zray.wait(refs, num_returns=3, timeout=0) == (ready[:3], others)  # (few ready)
    assert zray.wait(refs, num_returns=1, timeout=0) == (ready[:1], refs[:1] + refs[2:])
    assert zray.wait(refs, num_returns=20, timeout=0) == (ready, pending)  # (many ready)
    assert zray.wait(refs, num_returns=5, timeout=0) == (
        ready[:5], [ref for ref in refs if ref not in ready[:5]])
    opened.touch()
    assert zray.get(pending, timeout=30) == [0] * 40


def test_wait_on_no_refs_returns_two_empty_lists(small_store):
    """As Ray: whatever num_returns says (its default, 1, is more than no refs)."""
    assert zray.wait([]) == ([], [])
    assert zray.wait([], num_returns=1, timeout=0) == ([], [])


def test_bad_input_to_get_put_wait(small_store):
    ref = zray.put(1)
    with pytest.raises(ValueError, match="ObjectRef"):
        zray.get(1)
    with pytest.raises(ValueError, match="more than once"):
        zray.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        zray.wait([ref], num_returns=2)
    with pytest.raises(TypeError, match="could not serialise"):
        import threading

        zray.put(threading.Lock())


def test_ref_inside_a_put_keeps_its_object_alive(small_store):
    inner = zray.put(np.arange(1_000_000))
    outer = zray.put({"inner": inner})
    del inner
    gc.collect()
    filler = [zray.put(np.zeros(MB)) for _ in range(3)]
    got = zray.get(zray.get(outer)["inner"])
    assert got[999_999] == 999_999
    del outer, got, filler
    assert wait_store_empty() == 0


def test_ref_made_in_a_task_outlives_the_task(small_store):
    @zray.remote
    def make():
        return [zray.put(np.full(1_000_000, 7.0))]

    [ref] = zray.get(make.remote())
    gc.collect()
    filler = [zray.put(np.zeros(MB)) for _ in range(3)]
    assert float(zray.get(ref).sum()) == 7_000_000.0
    del ref, filler
    assert wait_store_empty() == 0


def test_a_hundred_thousand_messages_in_flight_lose_nothing(small_store):
    """Flow control: 100,000 puts are sent without waiting; none may be dropped."""
    refs = [zray.put(i) for i in range(100_000)]

    @zray.remote
    def total(values):
        return sum(zray.get(values))

    assert zray.get(total.remote(refs[::100])) == sum(range(0, 100_000, 100))
    assert zray.get(refs[-1]) == 99_999
    del refs
    assert wait_store_empty() == 0
