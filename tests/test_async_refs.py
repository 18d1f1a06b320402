"""Refs in asyncio code (``await ref``, ``ref.future()``) and cancelling actor calls that
run: an async method's coroutine is cancelled, a sync one may check ``is_canceled()``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

import zray
from zray.exceptions import TaskCancelledError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("cluster")]


@zray.remote(num_returns=10_000)
def many_after(seconds: float) -> list[int]:
    time.sleep(seconds)
    return list(range(10_000))


@zray.remote
def double(x: int) -> int:
    return 2 * x


@zray.remote
def fails() -> None:
    raise KeyError("inside")


def test_refs_are_awaitable_and_10000_awaits_take_no_thread_each() -> None:
    async def main() -> None:
        refs = many_after.remote(1.0)
        gathered = asyncio.gather(*refs)
        await asyncio.sleep(0.2)
        assert not gathered.done() and threading.active_count() < 10
        assert await gathered == list(range(10_000))
        assert await double.remote(21) == 42
        done, _ = await asyncio.wait([asyncio.ensure_future(double.remote(i))
                                      for i in range(3)])
        assert sorted(d.result() for d in done) == [0, 2, 4]
        with pytest.raises(KeyError):
            await fails.remote()

    asyncio.run(main())
    assert double.remote(5).future().result(timeout=30) == 10


@zray.remote
class Waiter:
    def __init__(self) -> None:
        self.log: list[str] = []

    async def wait_for(self, ref_in_list: list[zray.ObjectRef]) -> int:
        return await ref_in_list[0] + 1  # (an async method awaits a ref too)

    async def sleep_long(self) -> None:
        self.log.append("started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise

    async def logged(self) -> list[str]:
        return self.log


@zray.remote(max_concurrency=2)
class Spinner:
    def __init__(self) -> None:
        self.spinning = False

    def is_spinning(self) -> bool:
        return self.spinning

    def spin(self) -> str:
        self.spinning = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if zray.get_runtime_context().is_canceled():
                return "noticed the cancel"
            time.sleep(0.01)
        return "ran to its end"


def until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_cancelling_a_running_actor_call() -> None:
    waiter = Waiter.remote()
    assert zray.get(waiter.wait_for.remote([double.remote(1)]), timeout=30) == 3
    sleeping = waiter.sleep_long.remote()
    until(lambda: zray.get(waiter.logged.remote()) == ["started"])  # (a cancel before it
    zray.cancel(sleeping)                                           # starts drops it)
    started = time.monotonic()
    with pytest.raises(TaskCancelledError):
        zray.get(sleeping, timeout=10)
    assert time.monotonic() - started < 5  # (not after its 30 s sleep)
    assert zray.get(waiter.logged.remote(), timeout=10) == ["started", "cancelled"]

    spinner = Spinner.remote()
    spinning = spinner.spin.remote()
    until(lambda: zray.get(spinner.is_spinning.remote()))
    zray.cancel(spinning)
    assert zray.get(spinning, timeout=30) == "noticed the cancel"
    with pytest.raises(RuntimeError, match="not a driver"):
        zray.get_runtime_context().is_canceled()


@zray.remote
class Echo:
    def echo(self, value: int) -> int:
        return value


def test_awaiting_many_actor_calls_in_flight_together() -> None:
    """(Calls made while others are in flight are corked until the caller waits: an await
    sends them at once, as a get does.)"""
    echo = Echo.remote()

    async def main() -> list[int]:
        return list(await asyncio.gather(*[echo.echo.remote(i) for i in range(50)]))

    assert asyncio.run(main()) == list(range(50))
    assert echo.echo.remote(7).future().result(timeout=30) == 7
