"""``zray microbenchmark``: the same workloads on zray or on Ray, side by side.

    python -m zray.bench [--backend zray|ray] [--quick] [--json]

Each workload runs on a private local cluster with ``num_cpus=2``: once to warm up, then
three times; the median is printed with its unit. Ray is imported by name, only here and
only with ``--backend ray``: it is never a dependency of zray. Every workload runs its tasks
in worker processes (checked), gives each task distinct arguments, and checks its results.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

MB = 2**20


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str


class Workloads:
    """Each method runs one workload once and returns its figure."""

    def __init__(self, rt: Any, quick: bool) -> None:
        self.rt = rt
        self.scale = 10 if quick else 1

        @rt.remote
        def noop(x: Any) -> Any:
            return x

        @rt.remote
        def pid() -> int:
            return os.getpid()

        @rt.remote
        def total(a: np.ndarray, i: int) -> float:
            return float(a[i % a.shape[0]])

        @rt.remote
        def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return a + b

        @rt.remote
        def leaf(i: int) -> int:
            return i

        @rt.remote
        def parent(i: int) -> int:
            return sum(rt.get([leaf.remote(i * 16 + j) for j in range(16)]))

        @rt.remote
        def nap(seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        @rt.remote
        class Echo:
            def call(self, x: Any) -> Any:
                return x

        self.noop, self.total, self.add, self.parent, self.nap = noop, total, add, parent, nap
        self.actors = [Echo.remote(), Echo.remote()]  # type: ignore[attr-defined]
        if rt.get(pid.remote()) == os.getpid():
            raise AssertionError("tasks must run in worker processes, not in the driver")

    def _n(self, n: int) -> int:
        return max(10, n // self.scale)

    def task_latency(self) -> list[Result]:
        times = []
        for i in range(self._n(500)):
            start = time.perf_counter()
            assert self.rt.get(self.noop.remote(i)) == i
            times.append(time.perf_counter() - start)
        return _latencies("task round trip", times)

    def task_throughput(self) -> Result:
        n = self._n(10_000)
        start = time.perf_counter()
        assert self.rt.get([self.noop.remote(i) for i in range(n)]) == list(range(n))
        return Result(f"{n} no-op tasks, throughput", n / (time.perf_counter() - start), "/s")

    def actor_latency(self) -> list[Result]:
        times = []
        for i in range(self._n(500)):
            start = time.perf_counter()
            assert self.rt.get(self.actors[0].call.remote(i)) == i
            times.append(time.perf_counter() - start)
        return _latencies("actor call round trip", times)

    def actor_throughput(self) -> Result:
        n = self._n(10_000)
        start = time.perf_counter()
        assert self.rt.get([self.actors[0].call.remote(i) for i in range(n)]) == list(range(n))
        return Result(f"one actor, {n} calls, throughput", n / (time.perf_counter() - start), "/s")

    def two_actor_throughput(self) -> Result:
        n = self._n(5_000)
        start = time.perf_counter()
        refs = [a.call.remote(i) for i in range(n) for a in self.actors]
        assert len(self.rt.get(refs)) == 2 * n
        return Result(f"two actors, {n} calls each, throughput",
                      2 * n / (time.perf_counter() - start), "/s")

    def put_small(self) -> Result:
        n = self._n(10_000)
        start = time.perf_counter()
        refs = [self.rt.put(i) for i in range(n)]
        rate = n / (time.perf_counter() - start)
        assert self.rt.get(refs[-1]) == n - 1
        return Result("put of a small int", rate, "/s")

    def get_small(self) -> Result:
        ref = self.rt.put(12345)
        n = self._n(10_000)
        start = time.perf_counter()
        for _ in range(n):
            assert self.rt.get(ref) == 12345
        return Result("get of a small object", n / (time.perf_counter() - start), "/s")

    def put_large(self) -> Result:
        array = np.random.default_rng(0).random(256 * MB // 8)
        self._large = None  # the last run's array is freed: its pages are reused
        gc.collect()
        start = time.perf_counter()
        ref = self.rt.put(array)
        rate = array.nbytes / (time.perf_counter() - start) / 1e9
        self._large = ref
        return Result("put of a 256 MB float64 array", rate, "GB/s")

    def get_large(self) -> Result:
        ref = getattr(self, "_large", None) or self.rt.put(np.ones(256 * MB // 8))
        start = time.perf_counter()
        value = self.rt.get(ref)
        elapsed = time.perf_counter() - start
        assert value.nbytes == 256 * MB and not value.flags.writeable
        return Result("get of that array (zero-copy)", elapsed * 1e3, "ms")

    def args_by_value(self) -> Result:
        array = np.arange(MB // 8, dtype=np.float64)
        n = self._n(1_000)
        start = time.perf_counter()
        out = self.rt.get([self.total.remote(array, i) for i in range(n)])
        assert out == [float(i % array.shape[0]) for i in range(n)]
        return Result(f"{n} tasks given a 1 MB array by value", n / (time.perf_counter() - start),
                      "/s")

    def args_by_ref(self) -> Result:
        ref = self.rt.put(np.arange(MB // 8, dtype=np.float64))
        n = self._n(1_000)
        start = time.perf_counter()
        out = self.rt.get([self.total.remote(ref, i) for i in range(n)])
        assert out == [float(i) for i in range(n)]
        return Result(f"{n} tasks given one put ref of it", n / (time.perf_counter() - start), "/s")

    def tree_reduce(self) -> Result:
        start = time.perf_counter()
        level = [self.rt.put(np.full(1000, float(i))) for i in range(256)]
        while len(level) > 1:
            level = [self.add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        result = self.rt.get(level[0])
        assert result[0] == sum(range(256))
        return Result("tree reduce of 256 arrays", time.perf_counter() - start, "s")

    def nested(self) -> Result:
        start = time.perf_counter()
        out = sum(self.rt.get([self.parent.remote(i) for i in range(8)]))
        assert out == sum(range(128))
        return Result("8 tasks x 16 subtasks, summed", time.perf_counter() - start, "s")

    def drain_with_wait(self) -> Result:
        n = self._n(1_000)
        naps = np.random.default_rng(1).uniform(0, 0.005, n)
        start = time.perf_counter()
        pending = [self.nap.remote(float(s)) for s in naps]
        done = 0.0
        while pending:
            ready, pending = self.rt.wait(pending, num_returns=1)
            done += self.rt.get(ready[0])
        assert abs(done - naps.sum()) < 1e-9
        return Result(f"{n} tasks sleeping 0-5 ms drained with wait", time.perf_counter() - start,
                      "s")


def _latencies(what: str, seconds: list[float]) -> list[Result]:
    """The median and the 99th percentile of one round trip, in ms."""
    seconds = sorted(seconds)
    return [Result(f"{what}, median latency", statistics.median(seconds) * 1e3, "ms"),
            Result(f"{what}, p99 latency", seconds[int(len(seconds) * 0.99)] * 1e3, "ms")]


def scaling(rt: Any, quick: bool) -> list[Result]:
    """Issue 4 item 3: throughput as tasks in flight grow, the driver's memory per pending
    task, and whether any process grows with history (waves of 10,000 tasks)."""
    @rt.remote
    def noop(x: int) -> int:
        return x

    results = []
    me = psutil.Process()
    rt.get([noop.remote(i) for i in range(1_000)])  # warm-up: exported, leases known short
    for n in (1_000, 10_000) if quick else (1_000, 10_000, 100_000):
        before = me.memory_info().rss
        start = time.perf_counter()
        refs = [noop.remote(i) for i in range(n)]
        pending = (me.memory_info().rss - before) / n
        assert sum(rt.get(refs)) == n * (n - 1) // 2
        results.append(Result(f"{n} tasks in flight, throughput", n / (time.perf_counter() - start),
                              "/s"))
        results.append(Result(f"driver memory per pending task ({n} in flight)", pending, "B"))
        del refs
    waves = 10 if quick else 100
    sizes: dict[int, tuple[str, int]] = {}
    for wave in range(waves):
        assert sum(rt.get([noop.remote(i) for i in range(10_000)])) == 49_995_000
        if wave == waves // 10 - 1:
            sizes = {p.pid: (p.name(), p.memory_info().rss) for p in _cluster(me)}
    growth, name = max(((p.memory_info().rss / sizes[p.pid][1] - 1) * 100, sizes[p.pid][0])
                       for p in _cluster(me) if p.pid in sizes)
    first, last = waves // 10 * 10_000, waves * 10_000
    results.append(Result(f"largest RSS growth, {first:,} to {last:,} tasks ({name})", growth, "%"))
    return results


def spilling(rt: Any, init_kwargs: dict[str, Any], quick: bool) -> list[Result]:
    """1 GiB of 64 MiB objects put through a 256 MiB store (most go to disk), then each
    read back in the order put (each comes back from disk): bytes per second each way."""
    rt.init(**init_kwargs, object_store_memory=256 * MB)
    array = np.random.default_rng(1).random(64 * MB // 8)
    put_rates, get_rates = [], []
    try:
        for _ in range(2 if quick else 4):  # (the first run warms up)
            start = time.perf_counter()
            refs = [rt.put(array) for _ in range(16)]
            put_rates.append(16 * array.nbytes / (time.perf_counter() - start) / 1e9)
            start = time.perf_counter()
            for ref in refs:
                value = rt.get(ref)
                assert value[12345] == array[12345] and value.nbytes == array.nbytes
                del value
            get_rates.append(16 * array.nbytes / (time.perf_counter() - start) / 1e9)
            del refs, ref
            gc.collect()
            time.sleep(0.5)  # (refs are let go in batches)
    finally:
        rt.shutdown()
    return [Result("put 1 GiB (64 MB objects) into a 256 MB store",
                   statistics.median(put_rates[1:]), "GB/s"),
            Result("get each back from disk, in put order", statistics.median(get_rates[1:]),
                   "GB/s")]


def _cluster(me: psutil.Process) -> list[psutil.Process]:
    return [me] + me.children(recursive=True)


def startup_time(backend: str) -> Result:
    """init + first task + shutdown, in a fresh process (imports included)."""
    extra = ", include_dashboard=False" if backend == "ray" else ""
    code = (f"import {backend} as rt; rt.init(num_cpus=2{extra}); "
            "assert rt.get(rt.remote(lambda: 1).remote()) == 1; rt.shutdown()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    return Result("init + first task + shutdown, fresh process", time.perf_counter() - start, "s")


def idle_memory() -> Result:
    """PSS of this driver and every process it started, object-store pages excluded."""
    me = psutil.Process()
    processes = [me] + me.children(recursive=True)
    total = 0
    for proc in processes:
        try:
            for region in proc.memory_maps(grouped=True):
                if not region.path.startswith("/dev/shm"):
                    total += region.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return Result(f"memory at idle, {len(processes)} processes (PSS)", total / MB, "MB")


def idle_cpu(seconds: float) -> Result:
    """CPU used by this driver and every process it started while nothing runs: what the
    cluster's timers and heartbeats cost (no busy polling is bought for latency)."""
    processes = _cluster(psutil.Process())

    def used() -> float:
        total = 0.0
        for proc in processes:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    before = used()
    time.sleep(seconds)
    return Result(f"CPU at idle, over {seconds:g} s, all processes",
                  100 * (used() - before) / seconds, "% of a core")


def run(backend: str, quick: bool, only_scaling: bool = False) -> list[Result]:
    rt = importlib.import_module(backend)
    kwargs: dict[str, Any] = {"num_cpus": 2}
    if backend == "ray":
        kwargs["include_dashboard"] = False
    rt.init(**kwargs)
    results = []
    if only_scaling:
        try:
            return scaling(rt, quick)
        finally:
            rt.shutdown()
    try:
        workloads = Workloads(rt, quick)
        time.sleep(1.0)  # let prestarted workers finish starting before measuring
        results.append(idle_memory())
        results.append(idle_cpu(2.0 if quick else 10.0))
        for name in ("task_latency", "task_throughput", "actor_latency", "actor_throughput",
                     "two_actor_throughput", "put_small", "get_small", "put_large",
                     "get_large", "args_by_value", "args_by_ref", "tree_reduce", "nested",
                     "drain_with_wait"):
            results += _median_of(getattr(workloads, name), 1 if quick else 3)
    finally:
        rt.shutdown()
    results += spilling(rt, kwargs, quick)
    results += _median_of(lambda: startup_time(backend), 1 if quick else 3)
    return results


def _median_of(workload: Callable[[], Result | list[Result]], repetitions: int
               ) -> list[Result]:
    """Each figure of ``workload``: the median of its runs after a warm-up run."""
    workload()  # warm-up
    runs = [workload() for _ in range(repetitions)]
    rows = [run if isinstance(run, list) else [run] for run in runs]
    return [Result(first.name, statistics.median(row[i].value for row in rows), first.unit)
            for i, first in enumerate(rows[0])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray microbenchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("zray", "ray"), default="zray")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, one run")
    parser.add_argument("--json", action="store_true", help="one JSON object per workload")
    parser.add_argument("--scaling", action="store_true",
                        help="only the cost-as-work-grows runs (up to 1,000,000 tasks)")
    args = parser.parse_args(argv)
    for result in run(args.backend, args.quick, args.scaling):
        if args.json:
            print(json.dumps({"backend": args.backend, **result.__dict__}), flush=True)
        else:
            print(f"{result.name:<52} {result.value:>12.3f} {result.unit}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
