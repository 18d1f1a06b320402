"""Parameter server: the ``ParameterServer`` actor from the BAIR blog post (seed 000) and the
"Ray for the Curious" walkthrough (seed 003).

An actor holds named numpy arrays with ``get(keys)`` and ``update(keys, values)``. Worker
*tasks*, each given the actor's handle, repeatedly pull the latest parameters, compute an
update with numpy and push it. The seed's workers loop forever; here each runs a fixed number
of iterations, and its updates are deterministic (small integers drawn from a generator seeded
by worker and iteration) so the final parameters are exactly the initial ones plus them all.
"""

import numpy as np

import zray

SHAPES = {"w1": (4, 3), "w2": (3, 2), "b": (2,)}
N_WORKERS, N_ITERATIONS = 4, 10


@zray.remote
class ParameterServer:
    def __init__(self, keys, values):
        # These values will be mutated, so we must create a local copy.
        values = [value.copy() for value in values]
        self.parameters = dict(zip(keys, values, strict=True))

    def get(self, keys):
        return [self.parameters[key] for key in keys]

    def update(self, keys, values):
        # This update function adds to the existing values, but it could be anything.
        for key, value in zip(keys, values, strict=True):
            self.parameters[key] += value


def compute_update(values, worker, iteration):
    rng = np.random.default_rng([worker, iteration])
    return [rng.integers(-3, 4, size=value.shape).astype(np.float64) for value in values]


@zray.remote
def worker_task(parameter_server, worker, iterations):
    keys = list(SHAPES)
    for iteration in range(iterations):
        # Get the latest parameters, compute some updates, push them.
        values = zray.get(parameter_server.get.remote(keys))
        last = parameter_server.update.remote(keys, compute_update(values, worker, iteration))
    zray.get(last)  # one caller's calls run in order: the last one done means all are
    return iterations


def main():
    keys = list(SHAPES)
    initial = [np.ones(shape) for shape in SHAPES.values()]
    zray.init(num_cpus=2)
    try:
        parameter_server = ParameterServer.remote(keys, initial)
        done = zray.get([worker_task.remote(parameter_server, w, N_ITERATIONS)
                         for w in range(N_WORKERS)])
        final = zray.get(parameter_server.get.remote(keys))
    finally:
        zray.shutdown()
    expected = [value.copy() for value in initial]
    for w in range(N_WORKERS):
        for i in range(N_ITERATIONS):
            for total, update in zip(expected, compute_update(initial, w, i), strict=True):
                total += update
    for key, got, want in zip(keys, final, expected, strict=True):
        assert np.array_equal(got, want), (key, got, want)
    print(f"{sum(done)} updates from {N_WORKERS} workers x {N_ITERATIONS} iterations")
    print(f"final parameters: {', '.join(f'{k}{list(SHAPES[k])}' for k in keys)}; "
          f"sum {sum(v.sum() for v in final):g} (expected {sum(v.sum() for v in expected):g})")
    print("parameter server OK: parameters equal the initial values plus every update")


if __name__ == "__main__":
    main()
