"""A thread blocked in a get reads the answer lanes itself (zray/leader.py): every way an
answer can come still wakes it, one thread leads at a time while the others wait their
turn, and the I/O thread reads the lanes again once no thread leads."""

from __future__ import annotations

import threading
import time

import pytest

import zray

pytestmark = pytest.mark.timeout(60)


@zray.remote
def echo(x: int) -> int:
    return x


@zray.remote
def put_later(value: int) -> list[zray.ObjectRef]:
    time.sleep(0.2)
    return [zray.put(value)]


@zray.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def test_threads_blocked_in_gets_at_once_each_get_their_own_answers(cluster) -> None:
    results: dict[int, list[int]] = {}

    def calls(thread: int) -> None:
        results[thread] = [zray.get(echo.remote(thread * 1000 + i), timeout=20)
                           for i in range(60)]

    threads = [threading.Thread(target=calls, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {t: [t * 1000 + i for i in range(60)] for t in range(6)}


def test_a_leading_get_wakes_for_what_the_agent_tells_it(cluster) -> None:
    """The object was put by a worker: its place comes from the agent, filed by the I/O
    thread, which must wake the get polling the lanes."""
    for value in range(5):
        [inner] = zray.get(put_later.remote(value), timeout=20)
        assert zray.get(inner, timeout=20) == value


def test_a_leading_get_times_out_on_time(cluster) -> None:
    @zray.remote
    def slow() -> None:
        time.sleep(2)

    started = time.monotonic()
    with pytest.raises(zray.exceptions.GetTimeoutError):
        zray.get(slow.remote(), timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5


def test_once_no_get_leads_the_io_thread_reads_the_answers_again(cluster) -> None:
    """Futures are completed by the I/O thread alone: after each led get, the answers of
    tasks nobody blocks for must still be read."""
    counter = Counter.remote()
    for round_ in range(20):
        assert zray.get(echo.remote(round_), timeout=20) == round_  # (led)
        futures = [echo.remote(round_ * 100 + i).future() for i in range(5)]
        futures.append(counter.add.remote(1).future())
        assert [f.result(timeout=20) for f in futures[:5]] == [
            round_ * 100 + i for i in range(5)]
        assert futures[5].result(timeout=20) == round_ + 1

