"""Tasks on leased workers (zray/leasing.py, zray/node/leases.py, zray/node/inbox.py).

Short tasks are sent ahead to a leased worker, several at once; these tests warm a
function up so that it is, then check what must still hold: a task that blocks sends back
the ones queued behind it, a crash requeues them, an owner's death fails its tasks'
results for whoever borrowed them, and an idle lease goes back to the pool.
"""

from __future__ import annotations

import os
import time

import pytest

import zray
from zray.exceptions import OwnerDiedError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("cluster")]


@zray.remote
class Holder:
    def __init__(self):
        self.refs = []

    def hold(self, refs):
        self.refs = refs

    def get(self):
        return self.refs


@zray.remote
def step(i, wait=False):
    """Quick; or wait for the task that the named holder names. (Looked up by name: a
    handle in the arguments would send the task through the agent, not on a lease.)"""
    if not wait:
        return i
    holder = zray.get_actor("lease-test-holder")
    refs = zray.get(holder.get.remote())
    while not refs:
        time.sleep(0.01)
        refs = zray.get(holder.get.remote())
    return zray.get(refs[0]) + 1000


def warm_up(fn, n=60):
    """Enough quick calls that the owner sends this function's tasks ahead."""
    assert zray.get([fn.remote(i) for i in range(n)]) == list(range(n))


def test_a_blocked_task_sends_back_the_tasks_queued_behind_it():
    warm_up(step)
    holder = Holder.options(name="lease-test-holder").remote()
    waiting = step.remote(-1, True)  # first in line; blocks on the next task's result
    quick = [step.remote(i) for i in range(30)]
    holder.hold.remote([quick[0]])  # the task sent right behind it, on the same worker
    assert zray.get(waiting, timeout=30) == 1000
    assert zray.get(quick, timeout=30) == list(range(30))


@zray.remote(max_retries=1)
def crash_once(i, marker):
    if i == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return i


def test_a_crash_retries_the_running_task_and_requeues_those_sent_ahead(tmp_path):
    marker = str(tmp_path / "crashed")
    assert zray.get([crash_once.remote(i, marker + "-warm") for i in range(60)]) == list(range(60))
    refs = [crash_once.remote(i, marker) for i in range(60)]
    assert zray.get(refs, timeout=30) == list(range(60))
    assert os.path.exists(marker)


@zray.remote
def sleeper(seconds):
    time.sleep(seconds)
    return "slept"


@zray.remote(max_retries=0)
def owner_that_dies(holder):
    child = sleeper.remote(5.0)  # runs on a lease this worker owns, long after it dies
    zray.get(holder.hold.remote([child]))
    os._exit(1)


def test_a_dead_owners_results_fail_for_their_borrowers():
    holder = Holder.remote()
    with pytest.raises(zray.exceptions.WorkerCrashedError):
        zray.get(owner_that_dies.remote(holder), timeout=30)
    [child] = zray.get(holder.get.remote())
    with pytest.raises(OwnerDiedError, match="exited before the task finished"):
        zray.get(child, timeout=30)


def test_idle_leases_go_back_to_the_pool():
    warm_up(step)
    deadline = time.monotonic() + 10
    # available_resources() first gives back this driver's own idle leases. (The value
    # checked is the one the loop saw: a second query could catch a lease taken since.)
    while (free := zray.available_resources().get("CPU")) != 2.0 and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    assert free == 2.0


@zray.remote
def maybe_slow(i, seconds=0.0, started=None):
    if started:
        open(started, "w").close()
    if seconds:
        time.sleep(seconds)
    return i


@zray.remote
def plus_one(x, marker=None):
    if marker:
        with open(marker, "a") as f:
            f.write("ran")
    return x + 1


@zray.remote
def fails():
    raise ValueError("nope")


def test_a_quick_tasks_answer_does_not_wait_for_a_long_task_sent_behind_it():
    warm_up(maybe_slow)  # quick: its answers may wait for company while the next one runs
    for i in range(3):
        quick = maybe_slow.remote(i)
        slow = maybe_slow.remote(-1, 2.0)  # on the same lease, right behind it
        assert zray.get(quick, timeout=1.0) == i  # not held until the slow one ends
        zray.cancel(slow)
        with pytest.raises(zray.exceptions.TaskCancelledError):
            zray.get(slow, timeout=10)


def test_a_chain_waits_at_its_owner_and_an_error_skips_what_depends_on_it(tmp_path):
    ref = plus_one.remote(0)
    for _ in range(20):  # each waits for the one before, here, not at the agent
        ref = plus_one.remote(ref)
    assert zray.get(ref, timeout=30) == 21
    marker = tmp_path / "ran"
    dependent = plus_one.remote(fails.remote(), str(marker))
    with pytest.raises(ValueError, match="nope"):
        zray.get(dependent, timeout=30)
    assert not marker.exists()


def test_cancel_a_task_still_waiting_for_its_arguments(tmp_path):
    marker, control_marker = tmp_path / "ran", tmp_path / "control-ran"
    argument = maybe_slow.remote(5, 1.0)
    waiting = plus_one.remote(argument, str(marker))
    control = plus_one.remote(argument, str(control_marker))  # queued behind it
    zray.cancel(waiting)
    with pytest.raises(zray.exceptions.TaskCancelledError):
        zray.get(waiting, timeout=30)
    assert zray.get(control, timeout=30) == 6  # so the cancelled one would have run by now
    assert control_marker.exists() and not marker.exists()




def test_force_cancel_kills_only_the_running_task_and_reruns_those_sent_behind_it(tmp_path):
    warm_up(maybe_slow)
    started = tmp_path / "started"
    slow = maybe_slow.remote(-1, 30.0, str(started))  # first on its lease; quick ones
    quick = [maybe_slow.remote(i) for i in range(20)]  # are sent ahead behind it
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:  # running, not queued
        time.sleep(0.01)
    assert started.exists()
    zray.cancel(slow, force=True)
    with pytest.raises(zray.exceptions.TaskCancelledError):
        zray.get(slow, timeout=30)
    assert zray.get(quick, timeout=30) == list(range(20))
