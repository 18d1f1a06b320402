"""Ray's lazy DAG API (zray/dag.py) through the public API: bind, InputNode, actors,
MultiOutputNode, execute."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import zray
from zray.dag import InputNode, MultiOutputNode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    zray.init(num_cpus=2)
    yield
    zray.shutdown()


@zray.remote
def add(a: int, b: int) -> int:
    return a + b


@zray.remote
def times(a: int, b: int) -> tuple[int, int]:
    return a * b, os.getpid()


@zray.remote
class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def inc(self, by: int) -> int:
        self.value += by
        return self.value

    def get(self) -> int:
        return self.value


def test_a_dag_of_tasks_runs_on_execute_with_its_inputs() -> None:
    with InputNode() as inp:
        shared = add.bind(inp[0], inp[1])  # (used twice below: submitted once)
        dag = times.options(num_cpus=0.5).bind(shared, add.bind(shared, inp.offset))
    product, pid = zray.get(dag.execute(2, 3, offset=10), timeout=30)
    assert product == 5 * 15 and pid != os.getpid()
    assert zray.get(dag.execute(1, 1, offset=0), timeout=30)[0] == 4  # (again, new inputs)

    with InputNode() as value:
        whole = add.bind(value, 1)
    assert zray.get(whole.execute(41), timeout=30) == 42
    with pytest.raises(ValueError, match="exactly one positional argument"):
        whole.execute(1, 2)
    with pytest.raises(NotImplementedError, match="not supported by zray"):
        whole.experimental_compile()


def test_actors_in_a_dag_and_several_outputs() -> None:
    counter = Counter.bind(10)  # an actor made by each execute
    with InputNode() as inp:
        dag = MultiOutputNode([counter.inc.bind(inp), counter.get.bind(),
                               add.bind(counter.inc.bind(inp), 0)])
    refs = dag.execute(5)
    assert len(refs) == 3 and zray.get(refs[0], timeout=30) == 15
    assert zray.get(refs[2], timeout=30) == 20  # (the same actor, its calls in order)

    handle = Counter.remote(0)  # a live actor's methods bind too; its state carries over
    with InputNode() as inp:
        step = handle.inc.bind(inp)
    assert [zray.get(step.execute(i), timeout=30) for i in (1, 2, 3)] == [1, 3, 6]
