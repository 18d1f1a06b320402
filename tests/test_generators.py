"""Remote generators (zray/generators.py) through the public API: streamed values, as
soon as they are yielded; errors mid-stream; the "dynamic" and int forms; actor methods,
sync and async; ``async for``, ``wait`` and ``cancel`` on a stream."""

from __future__ import annotations

import asyncio
import time

import pytest

import zray
from zray.exceptions import TaskCancelledError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("cluster")]


@zray.remote
class Flag:
    def __init__(self) -> None:
        self.up = False

    def raise_(self) -> None:
        self.up = True

    def is_up(self) -> bool:
        return self.up


@zray.remote
def first_then_wait(flag: object) -> object:
    yield "first"
    deadline = time.monotonic() + 20  # (bounded: a stream sent at the end never gets it)
    while not zray.get(flag.is_up.remote()):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            yield "the driver never got the first value while the task ran"
            return
        time.sleep(0.01)
    yield "second"


@zray.remote
def count_to(n: int) -> object:
    yield from range(n)


@zray.remote
def fails_after(n: int) -> object:
    yield from range(n)
    raise ValueError("mid-stream")


def test_each_value_is_readable_as_soon_as_it_is_yielded() -> None:
    flag = Flag.remote()
    stream = first_then_wait.remote(flag)
    assert isinstance(stream, zray.ObjectRefGenerator)
    assert zray.get(next(stream), timeout=30) == "first"
    zray.get(flag.raise_.remote(), timeout=30)
    assert [zray.get(ref, timeout=30) for ref in stream] == ["second"]
    assert zray.get(stream.completed(), timeout=30) == 2 and stream.is_finished()


def test_an_error_mid_stream_surfaces_at_its_item_and_ends_it() -> None:
    stream = fails_after.options(num_returns="streaming").remote(2)
    assert [zray.get(next(stream), timeout=30) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="mid-stream"):
        zray.get(next(stream), timeout=30)
    with pytest.raises(StopIteration):
        next(stream)


def test_the_dynamic_and_int_forms() -> None:
    dynamic = zray.get(count_to.options(num_returns="dynamic").remote(3), timeout=30)
    assert isinstance(dynamic, zray.DynamicObjectRefGenerator)
    assert zray.get(list(dynamic), timeout=30) == [0, 1, 2]
    assert zray.get(count_to.options(num_returns=3).remote(3), timeout=30) == [0, 1, 2]


@zray.remote
class Producer:
    def values(self, n: int) -> object:
        yield from range(n)

    async def slowly(self, n: int) -> object:
        for i in range(n):
            await asyncio.sleep(0.01)
            yield -i


def test_actor_methods_stream_and_async_for_reads_a_stream() -> None:
    producer = Producer.remote()
    assert [zray.get(ref, timeout=30) for ref in producer.values.remote(3)] == [0, 1, 2]

    async def read() -> list[int]:
        return [await ref async for ref in producer.slowly.remote(3)]

    assert asyncio.run(read()) == [0, -1, -2]


@zray.remote
def forever() -> object:
    yield "started"
    while True:
        time.sleep(0.01)
        yield "more"


def test_wait_and_cancel_take_a_stream() -> None:
    slow = first_then_wait.remote(Flag.remote())
    quick = count_to.remote(0)
    ready, not_ready = zray.wait([slow, quick], num_returns=2, timeout=30)
    assert ready == [slow, quick] and not_ready == []  # (its first value; its end)
    with pytest.raises(StopIteration):
        next(quick)
    zray.cancel(slow)  # (it would wait 20 s for a flag nobody raises)

    endless = forever.remote()
    assert zray.get(next(endless), timeout=30) == "started"
    zray.cancel(endless)
    with pytest.raises(TaskCancelledError):
        for ref in endless:
            zray.get(ref, timeout=30)
