"""Tasks through the public API on a real 2-CPU cluster."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import zray

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("cluster")]


@zray.remote
def add(a, b):
    return a + b


@zray.remote
def pid():
    return os.getpid()


def test_remote_returns_ref_and_get_returns_value():
    ref = add.remote(1, 2)
    assert isinstance(ref, zray.ObjectRef)
    assert zray.get(ref) == 3


def test_runs_in_another_process():
    assert zray.get(pid.remote()) != os.getpid()


def test_get_of_list_keeps_order_and_allows_duplicates():
    refs = [add.remote(i, i) for i in range(20)]
    assert zray.get(refs + refs[:3]) == [2 * i for i in range(20)] + [0, 2, 4]


def test_top_level_refs_are_resolved_nested_refs_are_not():
    @zray.remote
    def inspect(value, container):
        return value, type(container[0]).__name__

    x = zray.put(41)
    assert zray.get(inspect.remote(x, [x])) == (41, "ObjectRef")


def test_chained_tasks_wait_for_their_args_not_the_caller():
    @zray.remote
    def slow(x):
        time.sleep(0.3)
        return x

    ref = add.remote(slow.remote(1), 1)  # submitted while slow still runs
    assert zray.get(ref) == 2


def test_kwargs_and_options_num_returns():
    @zray.remote(num_returns=2)
    def pair(a, *, b):
        return a, b

    r1, r2 = pair.remote(1, b=2)
    assert zray.get([r1, r2]) == [1, 2]


def test_options_override_num_returns():
    @zray.remote
    def triple():
        return 1, 2, 3

    refs = triple.options(num_returns=3).remote()
    assert zray.get(refs) == [1, 2, 3]


def test_nested_tasks_seed_example():
    @zray.remote
    def sub_experiment(i, j):
        return i + j

    @zray.remote
    def run_experiment(i):
        return sum(zray.get([sub_experiment.remote(i, j) for j in range(10)]))

    assert zray.get([run_experiment.remote(i) for i in range(5)]) == [45, 55, 65, 75, 85]


def test_all_workers_blocked_in_get_do_not_deadlock():
    @zray.remote
    def leaf(i):
        return i

    @zray.remote
    def middle(i):
        return zray.get(leaf.remote(i)) * 2

    @zray.remote
    def top():  # 4 tasks on 2 CPUs, each blocking on a child that needs a CPU too
        return sum(zray.get([middle.remote(i) for i in range(4)]))

    assert zray.get([top.remote() for _ in range(3)]) == [12, 12, 12]


def test_big_argument_by_value_goes_through_the_store():
    arr = np.arange(1_000_000, dtype=np.float64)

    @zray.remote
    def total(a):
        return float(a.sum())

    assert zray.get(total.remote(arr)) == float(arr.sum())


def test_unknown_and_bad_options_fail_at_the_call_site():
    with pytest.raises(ValueError, match="unknown option 'num_cpu'"):
        zray.remote(num_cpu=1)(lambda: 1)
    with pytest.raises(ValueError, match="num_returns=0 is invalid"):
        add.options(num_returns=0)
    with pytest.raises(ValueError, match="num_gpus"):
        add.options(num_gpus=1.5)


def test_calling_a_remote_function_directly_says_use_remote():
    with pytest.raises(TypeError, match=r"add.remote\(...\) instead of add\(...\)"):
        add(1, 2)


def test_unpicklable_argument_is_named():
    import threading

    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

    with pytest.raises(TypeError, match=r"argument #1 of add\(\).*\.lock"):
        add.remote(1, Holder())


def test_retried_parent_does_not_run_its_children_twice_or_leak(tmp_path):
    runs = tmp_path / "child-runs"

    @zray.remote
    def child(path, attempts):
        with open(path, "a") as f:
            f.write("x")
        deadline = time.monotonic() + 30  # still running when the parent is retried:
        while time.monotonic() < deadline:  # wait (bounded) for the second attempt
            if os.path.exists(attempts) and len(open(attempts).read()) == 2:
                return 7
            time.sleep(0.01)
        raise TimeoutError("the parent was never retried")

    @zray.remote(retry_exceptions=True, max_retries=1)
    def parent(path, attempts):
        ref = child.remote(path, attempts)
        big = zray.put(np.zeros(50_000))  # a store object, alive in the child's argument
        with open(attempts, "a") as f:
            f.write("x")
        if len(open(attempts).read()) == 1:
            raise RuntimeError("first attempt fails")
        return zray.get(ref) + int(zray.get(big).sum())

    assert zray.get(parent.remote(str(runs), str(tmp_path / "attempts"))) == 7
    assert runs.read_text() == "x"  # the retry's child is the first one, merged by id
    deadline = time.monotonic() + 10
    while zray.available_resources() != zray.cluster_resources():
        assert time.monotonic() < deadline, "resources leaked"
        time.sleep(0.02)


def test_pool_grows_while_tasks_block_and_shrinks_back():
    """Uses its own cluster: the idle timeout is shortened through the environment."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import time, psutil, zray
        zray.init(num_cpus=1)

        @zray.remote
        def leaf(i):
            return i

        @zray.remote
        def parent(i):
            return zray.get(leaf.remote(i))  # blocks: the pool must grow to run leaf

        def workers():
            found = []
            for p in psutil.Process().children(recursive=True):
                try:  # a worker being stopped may be a zombie for a moment
                    if "zray.node.worker" in " ".join(p.cmdline()):
                        found.append(p)
                except psutil.Error:
                    pass
            return found

        assert zray.get([parent.remote(i) for i in range(3)]) == [0, 1, 2]
        grown = len(workers())
        deadline = time.monotonic() + 20
        while len(workers()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(grown, len(workers()))
        zray.shutdown()
    """)
    env = dict(os.environ, ZRAY_IDLE_WORKER_TIMEOUT_S="0.3")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    grown, after = map(int, out.stdout.split())
    assert grown >= 2 and after == 1


def test_workers_keep_large_blocks_on_the_heap():
    """zray/malloc.py: set for the processes the driver starts, unless the user set it."""
    from zray.malloc import MALLOC_ENV

    @zray.remote
    def setting():
        return os.environ.get("MALLOC_MMAP_THRESHOLD_")

    expected = os.environ.get("MALLOC_MMAP_THRESHOLD_", MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"])
    assert zray.get(setting.remote()) == expected
