"""Tree reduction: the ``aggregate_data`` example of "Announcing Ray" (seed 002) and the
tree reduce of the Ray tutorial (seed 001).

Passing the ObjectRefs returned by ``aggregate_data`` into later calls encodes a tree of
dependencies; each task runs as soon as its two inputs exist. First 100 integers, then 64
numpy arrays made by remote tasks, are summed pairwise and checked against the plain sum.
"""

import numpy as np

import zray


@zray.remote
def aggregate_data(x, y):
    return x + y


@zray.remote
def generate_data(n):
    return np.ones(n)


def tree_reduce(data):
    """Pairwise reduction: pop two, append their sum, until one is left."""
    data = list(data)
    while len(data) > 1:
        data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
    return zray.get(data[0])


def main():
    zray.init(num_cpus=2)
    try:
        total = tree_reduce(range(100))
        assert total == sum(range(100)), total
        print(f"tree reduce of range(100): {total} (plain sum {sum(range(100))})")

        arrays = [generate_data.remote(1000) for _ in range(64)]
        summed = tree_reduce(arrays)
        expected = sum(np.ones(1000) for _ in range(64))
        assert np.array_equal(summed, expected)
        print(f"tree reduce of 64 np.ones(1000): every element {summed[0]:.0f}, "
              f"total {summed.sum():.0f}")
    finally:
        zray.shutdown()
    print("tree reduce OK: results equal the plain sums")
    return total, summed


if __name__ == "__main__":
    main()
