"""zray.util's libraries on the core API (issue 18, item 3): ActorPool, Queue and the
multiprocessing Pool, through the public API, on a real cluster."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import zray
from zray.util import ActorPool
from zray.util.multiprocessing import Pool
from zray.util.queue import Empty, Full, Queue

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("cluster")]


@zray.remote
class Doubler:
    def double(self, value: int) -> tuple[int, int]:
        time.sleep(0.01 * (value % 3))  # (finishing out of order)
        return 2 * value, os.getpid()


def test_an_actor_pool_maps_in_order_or_as_done_over_its_actors() -> None:
    actors = [Doubler.remote() for _ in range(2)]
    pool = ActorPool(actors)
    results = list(pool.map(lambda actor, v: actor.double.remote(v), range(8)))
    assert [value for value, _ in results] == [2 * v for v in range(8)]
    pids = {pid for _, pid in results}
    assert len(pids) == 2 and os.getpid() not in pids  # (both actors, not the driver)
    assert sorted(v for v, _ in pool.map_unordered(lambda actor, v: actor.double.remote(v),
                                                    range(8))) == [2 * v for v in range(8)]
    pool.submit(lambda actor, v: actor.double.remote(v), 5)
    assert pool.has_next() and pool.get_next()[0] == 10 and not pool.has_next()
    idle = pool.pop_idle()
    assert idle is not None and pool.has_free()  # (one idle actor left)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(actors[0] if actors[0] is not idle else actors[1])
    pool.push(idle)


@zray.remote
def produce(queue: Queue, count: int) -> int:
    for item in range(count):
        queue.put(item)
    return os.getpid()


def test_a_queue_is_shared_by_tasks_bounded_and_says_empty_or_full() -> None:
    queue = Queue(maxsize=2)
    try:
        queue.put("a")
        queue.put_nowait("b")
        assert queue.full() and queue.qsize() == 2 == len(queue)
        with pytest.raises(Full):
            queue.put("c", timeout=0.1)
        with pytest.raises(Full):
            queue.put_nowait_batch(["c"])
        assert [queue.get(), queue.get_nowait()] == ["a", "b"] and queue.empty()
        with pytest.raises(Empty):
            queue.get(timeout=0.1)
        with pytest.raises(Empty):
            queue.get_nowait()
        producer = produce.remote(queue, 5)  # blocks while full: the driver drains it
        assert [queue.get(timeout=10) for _ in range(5)] == list(range(5))
        assert zray.get(producer) != os.getpid()
        queue.put_nowait_batch([1, 2])
        assert queue.get_nowait_batch(2) == [1, 2]

        async def round_trip() -> object:
            await queue.put_async("x")
            return await queue.get_async(timeout=5)

        assert asyncio.run(round_trip()) == "x"
    finally:
        queue.shutdown()


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def where(_: int) -> int:
    return os.getpid()


def set_env(name: str, value: str) -> None:
    os.environ[name] = value


def get_env(name: str) -> str | None:
    return os.environ.get(name)


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_a_multiprocessing_pool_runs_its_work_in_zray_workers() -> None:
    with Pool(processes=2, initializer=set_env, initargs=("POOL_INIT", "done")) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert pool.apply(add, (2, 3)) == 5
        got: list[int] = []
        result = pool.apply_async(square, (7,), callback=got.append)
        assert result.get(timeout=10) == 49 and result.successful()
        result.wait(5)
        assert got == [49]
        pids = set(pool.map(where, range(8), chunksize=1))
        assert len(pids) == 2 and os.getpid() not in pids
        assert pool.apply(get_env, ("POOL_INIT",)) == "done"
        with pytest.raises(ValueError, match="three"):
            pool.map(fail_on_three, range(5))
        errors: list[BaseException] = []
        failed = pool.map_async(fail_on_three, range(5), error_callback=errors.append)
        failed.wait(10)
        assert not failed.successful() and isinstance(errors[0], ValueError)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


@zray.remote
class Named:
    def ping(self) -> str:
        return "pong"


def test_named_actors_are_listed_and_the_node_has_an_address() -> None:
    from zray.util import get_node_ip_address, list_named_actors

    actors = [Named.options(name="listed-a").remote(),
              Named.options(name="listed-b", namespace="elsewhere").remote()]
    assert zray.get([a.ping.remote() for a in actors]) == ["pong", "pong"]
    deadline = time.monotonic() + 10  # (the GCS hears of them within gcs_flush_ms)
    while "listed-a" not in list_named_actors():
        assert time.monotonic() < deadline, list_named_actors(all_namespaces=True)
        time.sleep(0.05)
    assert "listed-b" not in list_named_actors()
    everyone = list_named_actors(all_namespaces=True)
    assert {"name": "listed-b", "namespace": "elsewhere"} in everyone
    assert get_node_ip_address() == "127.0.0.1"
    for actor in actors:
        zray.kill(actor)


@zray.remote
class AsyncThing:
    async def value(self) -> int:
        return 1


def test_smaller_gaps_ready_method_refs_by_hex_and_task_events() -> None:
    for actor in (Named.remote(), AsyncThing.remote()):
        assert zray.get(actor.__ray_ready__.remote(), timeout=30) is True
        zray.kill(actor)
    ref = zray.put([1, 2, 3])
    again = zray.ObjectRef.from_hex(ref.hex())
    assert again == ref and zray.get(again) == [1, 2, 3]
    del ref
    assert zray.get(again) == [1, 2, 3]  # (held by the ref made from its hex)
    quiet = zray.remote(lambda: 5).options(enable_task_events=False)
    assert zray.get(quiet.remote()) == 5


def test_inspect_serializability_names_the_part_that_does_not_pickle() -> None:
    import io
    import threading

    from zray.util import inspect_serializability

    lock = threading.Lock()

    def uses_a_lock() -> bool:
        return lock.locked()

    report = io.StringIO()
    ok, failures = inspect_serializability(uses_a_lock, name="uses_a_lock", print_file=report)
    assert not ok and [f.name for f in failures] == ["lock"], report.getvalue()
    assert inspect_serializability(square, print_file=report) == (True, set())


@zray.remote(max_restarts=3)
class Quitter:
    def quit(self) -> None:
        from zray.actor import exit_actor

        exit_actor()

    def ping(self) -> str:
        return "pong"


def test_exit_actor_ends_the_actor_for_good() -> None:
    from zray.actor import ActorHandle, exit_actor

    actor = Quitter.remote()
    assert isinstance(actor, ActorHandle) and zray.get(actor.ping.remote()) == "pong"
    with pytest.raises(zray.exceptions.ActorDiedError, match="exit_actor"):
        zray.get(actor.quit.remote(), timeout=30)
    with pytest.raises(zray.exceptions.ActorDiedError):  # (max_restarts notwithstanding)
        zray.get(actor.ping.remote(), timeout=30)
    with pytest.raises(TypeError, match="outside an actor"):
        exit_actor()



@zray.remote(concurrency_groups={"io": 1})
class Grouped:
    def __init__(self, index: int) -> None:
        self.index = index
        self.released = threading.Event()

    def __repr__(self) -> str:
        return f"Grouped(index={self.index})"

    @zray.method(concurrency_group="io")
    def wait_for_release(self) -> str:
        return "released" if self.released.wait(20) else "never released"

    def release(self) -> None:
        print("releasing")
        self.released.set()


def test_concurrency_groups_run_apart_and_an_actors_repr_labels_its_output(
        capsys: pytest.CaptureFixture[str]) -> None:
    grouped = Grouped.remote(7)
    waiting = grouped.wait_for_release.remote()  # (holds the "io" group's one thread)
    zray.get(grouped.release.remote(), timeout=30)  # (the default group's, meanwhile)
    assert zray.get(waiting, timeout=30) == "released"
    deadline = time.monotonic() + 10
    seen = ""
    while "releasing" not in seen and time.monotonic() < deadline:
        seen += capsys.readouterr().out
        time.sleep(0.05)
    assert "(Grouped(index=7) pid=" in seen and "releasing" in seen
    with pytest.raises(ValueError, match="concurrency group 'io'"):
        Grouped.options(concurrency_groups={"other": 1}).remote(0)


def test_a_ref_made_from_its_bytes_reads_the_same_object() -> None:
    ref = zray.put("passed out of band")
    assert zray.get(zray.ObjectRef(ref.binary()), timeout=30) == "passed out of band"
    assert zray.get(zray.ObjectRef.from_hex(ref.hex()), timeout=30) == "passed out of band"


class Unpicklable:
    def __init__(self, value: int) -> None:
        self.value = value
        self.lock = threading.Lock()  # (pickle refuses it)


@zray.remote
def value_of(thing: Unpicklable) -> tuple[str, int]:
    return type(thing).__name__, thing.value


def test_a_registered_serializer_ships_what_pickle_refuses() -> None:
    with pytest.raises(TypeError):
        zray.put(Unpicklable(1))
    zray.util.register_serializer(Unpicklable, serializer=lambda u: u.value,
                                  deserializer=Unpicklable)
    try:
        assert zray.get(value_of.remote(Unpicklable(5)), timeout=30) == ("Unpicklable", 5)
    finally:
        zray.util.deregister_serializer(Unpicklable)
    with pytest.raises(TypeError):
        zray.put(Unpicklable(1))
