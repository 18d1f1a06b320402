"""Actor calls sent straight to the actor's worker (zray/actors/caller.py).

Once the agent has told the caller where the actor's worker is, calls bypass the agent;
a caller's calls keep their order across the two paths; calls in flight when the worker
dies are retried or failed as the actor's options say, even those sent after it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

import zray
from zray.core import current
from zray.exceptions import ActorUnavailableError, TaskCancelledError

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("cluster")]


@zray.remote
class Log:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return len(self.items)

    def read(self):
        return list(self.items)

    def pid(self):
        return os.getpid()


@zray.remote
def late(value, seconds=0.05):
    time.sleep(seconds)
    return value


def known_worker(handle) -> int:
    """Make a call through the agent, then wait until it has told us the actor's worker;
    returns that worker's pid."""
    pid = zray.get(handle.pid.remote())
    client = current()
    assert client is not None
    deadline = time.monotonic() + 10
    while not client.actor_calls.worker_of(handle.actor_id):
        assert time.monotonic() < deadline, "the agent never sent the actor's address"
        time.sleep(0.005)
    return pid


@contextlib.contextmanager
def agent_stopped() -> Iterator[None]:
    agent = next(p for p in psutil.Process().children()
                 if "zray.node.boot" in " ".join(p.cmdline()))
    agent.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        agent.send_signal(signal.SIGCONT)


def test_calls_reach_the_actor_while_the_agent_is_stopped():
    log = Log.remote()
    known_worker(log)
    with agent_stopped():  # a call through the agent would hang here
        assert zray.get([log.add.remote(i) for i in range(3)], timeout=20) == [1, 2, 3]
    assert zray.get(log.read.remote()) == [0, 1, 2]


def test_one_callers_order_holds_across_both_paths():
    log = Log.remote()
    known_worker(log)
    # Every fourth call waits in the agent's mailbox for its argument; the ones after it
    # could go straight to the worker, and must not overtake it.
    refs = [log.add.remote(late.remote(i) if i % 4 == 1 else i) for i in range(16)]
    assert zray.get(refs, timeout=30) == list(range(1, 17))
    assert zray.get(log.read.remote()) == list(range(16))


def test_cancel_a_call_held_behind_one_through_the_agent():
    log = Log.remote()
    known_worker(log)
    first = log.add.remote(late.remote("first", 0.5))  # through the agent, waiting
    held = log.add.remote("held")  # could go straight, but must wait behind it
    zray.cancel(held)
    with pytest.raises(TaskCancelledError):
        zray.get(held, timeout=30)
    assert zray.get(first, timeout=30) == 1
    assert zray.get(log.read.remote()) == ["first"]


@pytest.mark.parametrize("retries", [0, 1])
def test_a_call_sent_to_a_worker_that_died_unnoticed(retries):
    log = Log.options(max_restarts=1, max_task_retries=retries).remote()
    pid = known_worker(log)
    with agent_stopped():  # the agent cannot notice the death, nor tell us
        os.kill(pid, signal.SIGKILL)
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
        sent_to_the_dead = log.add.remote("lost?")
    if retries:  # it runs again in the restarted actor (whose __init__ ran again)
        assert zray.get(sent_to_the_dead, timeout=30) == 1
    else:  # it may or may not have run there: it fails, and the actor comes back
        with pytest.raises(ActorUnavailableError):
            zray.get(sent_to_the_dead, timeout=30)
    assert zray.get(log.add.remote("after"), timeout=30) == (2 if retries else 1)
    assert known_worker(log) != pid


def test_a_call_failed_unrun_by_the_agent_does_not_hold_back_the_next():
    @zray.remote
    def broken():
        time.sleep(0.05)
        raise ValueError("no argument for you")

    log = Log.remote()
    known_worker(log)
    failed = log.add.remote(broken.remote())  # through the agent, which fails it unrun
    after = log.add.remote("next")  # held here until the agent has answered that one
    assert zray.get(after, timeout=20) == 1
    with pytest.raises(ValueError, match="no argument for you"):
        zray.get(failed)


def test_a_call_corked_behind_one_that_waits_for_it_still_goes(tmp_path):
    """Calls made while another is in flight wait to go together; one the call in flight
    waits for goes within the batch window even if the caller never waits itself."""

    @zray.remote
    class Gate:
        def __init__(self):
            self.opened = asyncio.Event()

        async def pass_through(self):
            await self.opened.wait()
            return "passed"

        async def open(self, marker):
            self.opened.set()
            open(marker, "w").close()

        def pid(self):
            return os.getpid()

    gate = Gate.remote()
    known_worker(gate)
    waiting = gate.pass_through.remote()  # in flight, until open() runs
    gate.open.remote(str(tmp_path / "opened"))  # corked behind it
    deadline = time.monotonic() + 10
    while not os.path.exists(tmp_path / "opened"):  # no zray call here: nothing flushes
        assert time.monotonic() < deadline, "the corked call never went"
        time.sleep(0.01)
    assert zray.get(waiting, timeout=10) == "passed"


@zray.remote
class Napper:
    def quick(self):
        return "quick"

    def nap(self, seconds):
        time.sleep(seconds)
        return "napped"


@zray.remote
def quick_then_nap(napper):
    """A new caller's first calls go through the mailbox, which sends both to the worker
    at once: the quick one's answer must not wait while the nap behind it runs."""
    quick = napper.quick.remote()
    nap = napper.nap.remote(2.0)
    started = time.monotonic()
    assert zray.get(quick, timeout=10) == "quick"
    waited = time.monotonic() - started
    assert zray.get(nap, timeout=10) == "napped"
    return waited


def test_a_quick_calls_answer_does_not_wait_for_a_slow_call_behind_it():
    napper = Napper.remote()
    assert zray.get([napper.quick.remote() for _ in range(20)]) == ["quick"] * 20  # warm
    assert zray.get(quick_then_nap.remote(napper), timeout=30) < 1.0
