"""Resource accounting, checked by start/end times recorded inside the tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import zray

pytestmark = pytest.mark.timeout(90)


@zray.remote
def span(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def max_overlap(spans):
    """The largest number of [start, end) intervals that share a moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


@pytest.fixture
def two_cpus():
    zray.init(num_cpus=2, num_gpus=2, resources={"slot": 1})
    yield
    zray.shutdown()


def test_two_cpus_run_two_tasks_at_once_never_three(two_cpus):
    spans = zray.get([span.remote(0.3) for _ in range(6)])
    assert max_overlap(spans) == 2


def test_four_half_cpu_tasks_run_at_once_on_two_cpus(two_cpus, tmp_path):
    @zray.remote(num_cpus=0.5)
    def meet(i, room, deadline):
        """Wait (until ``deadline``) for all four to be here at once: a barrier."""
        open(os.path.join(room, str(i)), "w").close()
        while len(os.listdir(room)) < 4 and time.time() < deadline:
            time.sleep(0.01)
        return len(os.listdir(room))

    deadline = time.time() + 10
    assert zray.get([meet.remote(i, str(tmp_path), deadline) for i in range(4)]) == [4] * 4


def test_two_cpu_task_runs_alone(two_cpus):
    spans = zray.get([span.options(num_cpus=2).remote(0.2) for _ in range(3)])
    assert max_overlap(spans) == 1


def test_custom_resource_limits_concurrency(two_cpus):
    spans = zray.get([span.options(resources={"slot": 1}).remote(0.2) for _ in range(3)])
    assert max_overlap(spans) == 1


def test_gpus_are_assigned_and_visible(two_cpus):
    @zray.remote(num_gpus=1)
    def which_gpu():
        import os

        time.sleep(0.3)
        accelerators = zray.get_runtime_context().get_accelerator_ids()["GPU"]
        assert accelerators == [str(i) for i in zray.get_gpu_ids()]
        return zray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    results = zray.get([which_gpu.remote() for _ in range(2)])
    assert sorted(ids[0] for ids, _ in results) == [0, 1]
    assert all(env == str(ids[0]) for ids, env in results)

    @zray.remote(num_gpus=2)
    def both():
        return zray.get_gpu_ids()

    assert sorted(zray.get(both.remote())) == [0, 1]


def test_an_actors_calls_see_its_gpus_whichever_path_they_take(two_cpus):
    @zray.remote(num_gpus=1)
    class OnGpu:
        def ids(self):
            import os

            return zray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    actor = OnGpu.remote()
    first = zray.get(actor.ids.remote())  # through the agent; later ones go straight
    assert len(first[0]) == 1 and first[1] == str(first[0][0])
    assert zray.get([actor.ids.remote() for _ in range(20)]) == [first] * 20


def test_cluster_and_available_resources(two_cpus):
    resources = zray.cluster_resources()
    assert resources.pop("memory") > 0  # (bytes: the machine's, less the store's)
    assert resources == {"CPU": 2.0, "GPU": 2.0, "slot": 1.0}
    deadline = time.monotonic() + 10
    while zray.available_resources() != zray.cluster_resources():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_infeasible_task_stays_pending_and_warns_once():
    script = textwrap.dedent("""
        import zray
        zray.init(num_cpus=1)

        @zray.remote(num_cpus=8)
        def huge():
            return 1

        refs = [huge.remote() for _ in range(3)]
        ready, _ = zray.wait(refs, num_returns=1, timeout=0.5)
        assert ready == [], ready
        zray.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("no node can ever provide it") == 1, out.stderr


@zray.remote
class Holding:
    def ping(self) -> str:
        return "pong"


def test_memory_is_a_resource_that_tasks_and_actors_hold(two_cpus):
    """As Ray's ``memory=``: bytes of the node's "memory" resource, held while the task
    runs, or for the actor's life."""
    most = zray.cluster_resources()["memory"] * 0.6
    actor = Holding.options(memory=most).remote()
    assert zray.get(actor.ping.remote(), timeout=30) == "pong"
    waiting = span.options(memory=most).remote(0)
    assert zray.wait([waiting], timeout=0.5)[0] == []  # (the actor holds the memory)
    zray.kill(actor)
    assert zray.get(waiting, timeout=30)
    with pytest.raises(ValueError, match="option memory=-1 is invalid"):
        span.options(memory=-1)
