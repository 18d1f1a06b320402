"""Quickstart: the README's demo on a private local cluster.

Ports the basics of the Ray tutorial (seed 001) and the README: remote tasks, ``put``/``get``
of a numpy array held in shared memory, a task chained on another task's result, a task that
launches tasks of its own, an actor whose calls run one at a time in the order made, and a
``print`` inside a task forwarded to the driver as ``(greet pid=...) ...``.
"""

import numpy as np
from counter import Counter  # an actor (examples/counter.py)

import zray


@zray.remote
def square(x):
    return x * x


@zray.remote
def total(a):
    return float(a.sum())  # a is a read-only zero-copy view of the stored array


@zray.remote
def add(x, y):
    return x + y


@zray.remote
def sum_of_squares(n):
    # A nested task: a task may launch tasks and wait for them.
    return sum(zray.get([square.remote(i) for i in range(n)]))


@zray.remote
def greet(name):
    print(f"hello from a task, {name}")
    return name


def main():
    zray.init(num_cpus=2)
    try:
        squares = zray.get([square.remote(i) for i in range(10)])
        assert squares == [i * i for i in range(10)], squares
        print("squares:", squares)

        big = zray.put(np.ones(1_000_000))
        assert zray.get(total.remote(big)) == 1_000_000.0
        assert np.array_equal(zray.get(big), np.ones(1_000_000))
        print("sum of a shared 1,000,000-element array: 1000000.0")

        chained = add.remote(square.remote(3), square.remote(4))  # refs as arguments
        assert zray.get(chained) == 25
        print("3*3 + 4*4 =", zray.get(chained))

        assert zray.get(sum_of_squares.remote(10)) == 285
        print("nested sum of squares below 10:", zray.get(sum_of_squares.remote(10)))

        counter = Counter.remote()
        counts = zray.get([counter.increment.remote() for _ in range(5)])
        assert counts == [1, 2, 3, 4, 5], counts
        print("an actor's calls, in order:", counts)

        assert zray.get(greet.remote("driver")) == "driver"

        ready, not_ready = zray.wait([square.remote(i) for i in range(4)], num_returns=4,
                                     timeout=30.0)
        assert len(ready) == 4 and not not_ready
    finally:
        zray.shutdown()
    print("quickstart OK")


if __name__ == "__main__":
    main()
