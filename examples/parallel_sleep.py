"""Parallel sleep: the first example of "Announcing Ray" (seed 002).

Runs a one-second ``time.sleep`` four times serially in the driver, then as four remote
tasks. Sleeping uses no CPU, so the cluster is given four CPU slots (``num_cpus=4``) even on
a two-core machine; the tasks run at once and the parallel run takes about one second.
"""

import time

import zray

N_TASKS = 4
SLEEP_S = 1.0


def f():
    time.sleep(SLEEP_S)


remote_f = zray.remote(f)


@zray.remote
def warm_up():
    time.sleep(0.2)  # long enough that all four run at once, each in its own worker


def main():
    zray.init(num_cpus=N_TASKS)
    try:
        zray.get([warm_up.remote() for _ in range(N_TASKS)])  # start the workers first

        start = time.perf_counter()
        for _ in range(N_TASKS):
            f()
        serial_s = time.perf_counter() - start

        start = time.perf_counter()
        zray.get([remote_f.remote() for _ in range(N_TASKS)])
        parallel_s = time.perf_counter() - start
    finally:
        zray.shutdown()
    speedup = serial_s / parallel_s
    print(f"serial: {serial_s:.2f}s for {N_TASKS} sleeps")
    print(f"parallel: {parallel_s:.2f}s for {N_TASKS} sleeps")
    print(f"speed-up: {speedup:.2f}x")
    return speedup


if __name__ == "__main__":
    main()
