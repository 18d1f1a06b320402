"""Actors through the public API: creation, the mailbox guarantee, handles, names."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import zray

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("cluster")]


@zray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.busy = False

    def increment(self, by=1):
        assert not self.busy, "two methods of one actor overlapped"
        self.busy = True
        time.sleep(0.001)
        self.value += by
        self.busy = False
        return self.value

    def read(self):
        return self.value

    def pid(self):
        return os.getpid()

    @zray.method(num_returns=2)
    def pair(self):
        return self.value, -self.value


def test_create_call_and_repr():
    counter = Counter.remote(10)
    assert zray.get(counter.increment.remote()) == 11
    assert zray.get(counter.pid.remote()) != os.getpid()
    assert repr(counter).startswith("Actor(Counter, ")


def test_num_returns_from_decorator_and_options():
    counter = Counter.remote(3)
    a, b = counter.pair.remote()
    assert zray.get([a, b]) == [3, -3]
    refs = counter.pair.options(num_returns=2).remote()
    assert zray.get(refs) == [3, -3]


def test_a_thousand_calls_run_in_order():
    counter = Counter.remote()
    assert zray.get([counter.increment.remote() for _ in range(1000)]) == list(range(1, 1001))


def test_calls_from_tasks_and_driver_interleave_but_never_overlap():
    counter = Counter.remote()

    @zray.remote
    def hammer(handle, n):
        return zray.get([handle.increment.remote() for _ in range(n)])

    from_tasks = [hammer.remote(counter, 100) for _ in range(2)]
    from_driver = [counter.increment.remote() for _ in range(100)]
    results = sum(zray.get(from_tasks), []) + zray.get(from_driver)
    assert sorted(results) == list(range(1, 301))  # the busy flag asserted no overlap


def test_call_waiting_for_its_argument_is_not_overtaken():
    counter = Counter.remote()

    @zray.remote
    def slow_one():
        time.sleep(0.5)
        return 1

    first = counter.increment.remote(slow_one.remote())  # argument still being computed
    second = counter.increment.remote(100)
    assert zray.get([first, second]) == [1, 101]


def test_arguments_resolve_as_for_tasks():
    counter = Counter.remote(zray.put(5))
    assert zray.get(counter.increment.remote(zray.put(2))) == 7


def test_different_actors_run_in_parallel():
    @zray.remote
    class Sleeper:
        def nap(self):
            start = time.time()
            time.sleep(0.5)
            return start, time.time()

    sleepers = [Sleeper.remote() for _ in range(3)]
    spans = zray.get([s.nap.remote() for s in sleepers])
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all three overlapped


def test_max_concurrency_runs_threads():
    @zray.remote(max_concurrency=3)
    class Pool:
        def __init__(self):
            self.inside = 0
            self.peak = 0
            self.lock = threading.Lock()

        def work(self):
            with self.lock:
                self.inside += 1
                self.peak = max(self.peak, self.inside)
            time.sleep(0.3)
            with self.lock:
                self.inside -= 1
            return self.peak

    pool = Pool.remote()
    assert max(zray.get([pool.work.remote() for _ in range(6)])) == 3


def test_async_methods_bounded_by_max_concurrency():
    @zray.remote(max_concurrency=2)
    class AsyncActor:
        def __init__(self):
            self.inside = 0
            self.peak = 0

        async def work(self):
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            await asyncio.sleep(0.2)
            self.inside -= 1
            return self.peak

    actor = AsyncActor.remote()
    assert max(zray.get([actor.work.remote() for _ in range(6)])) == 2


def test_handles_travel_in_tasks_objects_and_returns():
    counter = Counter.remote()

    @zray.remote
    def bump_via(container):
        return zray.get(container["h"].increment.remote())

    @zray.remote
    def make_counter():
        return Counter.remote(100)

    assert zray.get(bump_via.remote({"h": counter})) == 1
    stored = zray.put([counter])
    assert zray.get(zray.get(stored)[0].increment.remote()) == 2
    made = zray.get(make_counter.remote())
    assert zray.get(made.increment.remote()) == 101

    @zray.remote
    class Caller:
        def __init__(self, other):
            self.other = other

        def poke(self):
            return zray.get(self.other.increment.remote())

    assert zray.get(Caller.remote(counter).poke.remote()) == 3


def test_named_actors():
    counter = Counter.options(name="the-counter").remote(7)
    assert zray.get(counter.read.remote()) == 7
    found = zray.get_actor("the-counter")
    assert zray.get(found.increment.remote()) == 8
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="the-counter").remote()
    with pytest.raises(ValueError, match="no actor named"):
        zray.get_actor("nobody")
    other = Counter.options(name="the-counter", namespace="elsewhere").remote(1)
    assert zray.get(zray.get_actor("the-counter", namespace="elsewhere").read.remote()) == 1
    zray.kill(counter)
    zray.kill(other)


def test_detached_is_accepted_and_kill_ends_it():
    counter = Counter.options(lifetime="detached", name="detached-one").remote()
    assert zray.get(counter.increment.remote()) == 1
    zray.kill(counter)
    with pytest.raises(zray.exceptions.ActorDiedError):
        zray.get(counter.increment.remote())


def test_unknown_method_and_direct_call_are_clear_errors():
    counter = Counter.remote()
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        counter.nope.remote()
    with pytest.raises(TypeError, match="use Counter.remote"):
        Counter()
    with pytest.raises(ValueError, match="unknown option"):
        Counter.options(max_retries_typo=1)
