"""The actor fault matrix, and zray.cancel.

    where it fails            x how                         -> what the caller sees
    a method                  raises                         -> that error; the actor lives on
    __init__                  raises                         -> ActorDiedError with its traceback
    process, between calls    SIGKILL, no restarts left      -> ActorDiedError on later calls
    process, between calls    SIGKILL, restarts left         -> __init__ runs again; calls work
    process, during a call    SIGKILL, no max_task_retries   -> ActorUnavailableError (restarting)
    process, during a call    SIGKILL, max_task_retries      -> the call runs again, in order
    process, during __init__  os._exit, restarts left        -> comes back, calls work
    process, during __init__  os._exit, no restarts          -> ActorDiedError
    handle                    all dropped                    -> the actor's process exits
"""

from __future__ import annotations

import gc
import os
import signal
import time

import psutil
import pytest

import zray
from zray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    TaskCancelledError,
    TaskError,
)

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("cluster")]


@zray.remote
class Box:
    def __init__(self, marker=None):
        self.calls = 0
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # die in __init__ the first time only

    def call(self, seconds=0.0, started=None):
        self.calls += 1
        if started:
            open(started, "w").close()  # tells the test the call is running
        time.sleep(seconds)
        return self.calls

    def pid(self):
        return os.getpid()

    def fail(self):
        raise KeyError("method failed")


@zray.remote
class BadInit:
    def __init__(self):
        raise RuntimeError("cannot start")

    def call(self):
        return 1


def kill_actor_process(handle) -> int:
    pid = zray.get(handle.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_started(path) -> None:
    """Wait (bounded) until a task or call has written its 'started' marker file."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.01)


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} is still there"
        time.sleep(0.02)


def test_method_error_reaches_caller_and_actor_lives_on():
    box = Box.remote()
    with pytest.raises(KeyError, match="method failed"):
        zray.get(box.fail.remote())
    assert zray.get(box.call.remote()) == 1


def test_init_error_makes_every_call_raise_actor_died_with_traceback():
    bad = BadInit.remote()
    for _ in range(2):
        with pytest.raises(ActorDiedError, match="cannot start") as info:
            zray.get(bad.call.remote())
    assert "raise RuntimeError" in str(info.value)


def test_kill_then_calls_raise_actor_died():
    box = Box.remote()
    pid = zray.get(box.pid.remote())
    zray.kill(box)
    with pytest.raises(ActorDiedError, match="zray.kill"):
        zray.get(box.call.remote())
    wait_gone(pid)


def test_killed_between_calls_without_restarts():
    box = Box.remote()
    wait_gone(kill_actor_process(box))
    with pytest.raises(ActorDiedError, match="died|killed|exited"):
        zray.get(box.call.remote(), timeout=30)


def test_killed_between_calls_with_restarts_reruns_init():
    box = Box.options(max_restarts=1).remote()
    assert zray.get(box.call.remote()) == 1
    old = kill_actor_process(box)
    wait_gone(old)
    assert call_until_available(box) == 1  # fresh state: __init__ ran again
    assert zray.get(box.pid.remote()) != old


def call_until_available(box):
    """A call racing the agent's noticing the death may see ActorUnavailableError (as in
    Ray); calls after that wait for the restart. Never a hang: every get is bounded."""
    for _ in range(3):
        try:
            return zray.get(box.call.remote(), timeout=30)
        except ActorUnavailableError:
            continue
    raise AssertionError("the actor never came back")


def test_killed_during_a_call_without_task_retries(tmp_path):
    box = Box.options(max_restarts=1).remote()
    pid = zray.get(box.pid.remote())
    slow = box.call.remote(5.0, str(tmp_path / "started"))
    wait_started(tmp_path / "started")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorUnavailableError):
        zray.get(slow, timeout=30)
    assert call_until_available(box) == 1  # restarted, and usable


def test_killed_during_a_call_with_task_retries_runs_it_again_in_order(tmp_path):
    box = Box.options(max_restarts=1, max_task_retries=1).remote()
    pid = zray.get(box.pid.remote())
    refs = [box.call.remote(1.0, str(tmp_path / "started"))]
    refs += [box.call.remote() for _ in range(3)]
    wait_started(tmp_path / "started")
    os.kill(pid, signal.SIGKILL)
    assert zray.get(refs, timeout=30) == [1, 2, 3, 4]


def test_death_during_init_with_and_without_restarts(tmp_path):
    comes_back = Box.options(max_restarts=1).remote(str(tmp_path / "a"))
    assert zray.get(comes_back.call.remote(), timeout=30) == 1
    stays_dead = Box.remote(str(tmp_path / "b"))
    with pytest.raises(ActorDiedError):
        zray.get(stays_dead.call.remote(), timeout=30)


def test_dropping_every_handle_stops_the_actor():
    box = Box.remote()
    pid = zray.get(box.pid.remote())
    del box
    gc.collect()
    wait_gone(pid)


def test_cancel_queued_running_forced_and_finished(tmp_path):
    @zray.remote
    def sleeper(seconds, started=None):
        if started:
            open(started, "w").close()
        time.sleep(seconds)
        return "slept"

    blockers = [sleeper.remote(1.0) for _ in range(2)]  # both CPUs busy
    queued = sleeper.remote(0)
    zray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        zray.get(queued, timeout=30)
    assert zray.get(blockers) == ["slept", "slept"]

    running = sleeper.remote(30, str(tmp_path / "running"))
    wait_started(tmp_path / "running")
    zray.cancel(running)
    with pytest.raises(TaskError) as info:
        zray.get(running, timeout=30)
    assert isinstance(info.value, TaskCancelledError)

    forced = sleeper.remote(30, str(tmp_path / "forced"))
    wait_started(tmp_path / "forced")
    zray.cancel(forced, force=True)
    with pytest.raises(TaskCancelledError):
        zray.get(forced, timeout=30)

    done = sleeper.remote(0)
    assert zray.get(done) == "slept"
    zray.cancel(done)
    assert zray.get(done) == "slept"


def test_cancel_actor_calls_queued_and_running(tmp_path):
    box = Box.remote()
    running = box.call.remote(1.0, str(tmp_path / "started"))
    queued = box.call.remote()
    wait_started(tmp_path / "started")
    zray.cancel(queued)
    zray.cancel(running)  # a running method of a plain actor is not interrupted
    assert zray.get(running) == 1
    with pytest.raises(TaskCancelledError):
        zray.get(queued)
