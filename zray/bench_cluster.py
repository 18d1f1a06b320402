"""``zray microbenchmark --nodes N``: what crossing nodes costs, on zray or on Ray.

    python -m zray.bench_cluster [--nodes 3] [--backend zray|ray] [--quick] [--json]

A ``cluster_utils.Cluster`` of N one-CPU nodes on this machine (each its own session and
store; zray's each its own loopback address), the driver on the head; Ray's with
``ray.cluster_utils.Cluster`` and the same node sizes (Ray is imported by name, only with
``--backend ray``). Rows, each beside the same on one node where that means something:

- a no-op task pinned to the head / to another node, each call waiting: median and p99;
- an actor on the head / on another node, a trivial call each waiting: median and p99;
- a 256 MiB array made by a task on another node, read by the driver: GB/s for the first
  transfer (fresh store pages on both sides) and the best of the next two;
- 10,000 no-op tasks with the SPREAD strategy: throughput, and each node's share;
- 1,000 tasks pinned to another node, each given a distinct 1 MB array: throughput.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


class _Trivial:
    def call(self) -> int:
        return 0


def _round_trips(rt: Any, submit: Callable[[], Any], count: int) -> dict[str, float]:
    """``submit()`` then get its result, ``count`` times one after the other."""
    rt.get(submit())
    times = []
    for _ in range(count):
        started = time.perf_counter()
        rt.get(submit())
        times.append(time.perf_counter() - started)
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p99_us": times[int(len(times) * 0.99)] * 1e6}


def measure(nodes: int, quick: bool, backend: str = "zray") -> list[dict[str, Any]]:
    rt = importlib.import_module(backend)
    cluster_utils = importlib.import_module(f"{backend}.cluster_utils")
    strategies = importlib.import_module(f"{backend}.util.scheduling_strategies")
    calls, size, spread, by_value = (200, 32 << 20, 1000, 100) if quick else \
        (2000, 256 << 20, 10_000, 1000)
    store = 2 * size + (64 << 20)
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": store})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        rt.init(address=cluster.address)
        return _rows(rt, strategies, cluster, calls, size, spread, by_value)
    finally:
        rt.shutdown()
        cluster.shutdown()


def _rows(rt: Any, strategies: Any, cluster: Any, calls: int, size: int, spread: int,
          by_value: int) -> list[dict[str, Any]]:
    import numpy

    noop = rt.remote(lambda: 0)
    make = rt.remote(lambda n: numpy.ones(n, dtype=numpy.uint8))
    where_am_i = rt.remote(lambda: rt.get_runtime_context().get_node_id())
    first = rt.remote(lambda array, i: float(array[i]))
    trivial = rt.remote(_Trivial)
    head, other = cluster.list_all_nodes()[0], cluster.list_all_nodes()[-1]
    rows = []
    for where, node in (("this node", head), ("another node", other)):
        on = strategies.NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        actor = trivial.options(scheduling_strategy=on).remote()
        rows.append({"workload": f"task on {where}, round trip",
                     **_round_trips(rt, noop.options(scheduling_strategy=on).remote, calls)})
        rows.append({"workload": f"actor on {where}, call round trip",
                     **_round_trips(rt, actor.call.remote, calls)})
    on_other = strategies.NodeAffinitySchedulingStrategy(other.node_id, soft=False)
    rates = []
    for _ in range(3):
        ref = make.options(scheduling_strategy=on_other).remote(size)
        rt.wait([ref], fetch_local=False)  # (made there; not pulled yet)
        started = time.perf_counter()
        array = rt.get(ref)
        rates.append(size / (time.perf_counter() - started) / 1e9)
        assert array.nbytes == size
        del array, ref
    rows.append({"workload": f"{size >> 20} MiB from another node", "first_GBps": rates[0],
                 "warm_GBps": max(rates[1:])})
    rt.get([where_am_i.options(scheduling_strategy="SPREAD").remote() for _ in range(100)])
    started = time.perf_counter()
    placed = rt.get([where_am_i.options(scheduling_strategy="SPREAD").remote()
                     for _ in range(spread)])
    rate = spread / (time.perf_counter() - started)
    shares = sorted(collections.Counter(placed).values(), reverse=True)
    rows.append({"workload": f"{spread} tasks, SPREAD", "per_s": rate,
                 "shares": [round(n / spread, 3) for n in shares]})
    arrays = [numpy.full(1 << 20, i % 251, dtype=numpy.uint8) for i in range(by_value)]
    started = time.perf_counter()
    out = rt.get([first.options(scheduling_strategy=on_other).remote(a, 0) for a in arrays])
    rate = by_value / (time.perf_counter() - started)
    assert out == [float(i % 251) for i in range(by_value)]
    rows.append({"workload": f"{by_value} tasks on another node, 1 MB each by value",
                 "per_s": rate})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray microbenchmark --nodes")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--backend", choices=("zray", "ray"), default="zray")
    parser.add_argument("--quick", action="store_true", help="fewer calls, 32 MiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    for row in measure(args.nodes, args.quick, args.backend):
        if args.json:
            print(json.dumps({"backend": args.backend, **row}))
        elif "median_us" in row:
            print(f"{row['workload']:<44} median {row['median_us']:7.0f} us   "
                  f"p99 {row['p99_us']:7.0f} us")
        elif "first_GBps" in row:
            print(f"{row['workload']:<44} first {row['first_GBps']:.2f} GB/s   "
                  f"warm {row['warm_GBps']:.2f} GB/s")
        else:
            shares = f"   shares {row['shares']}" if "shares" in row else ""
            print(f"{row['workload']:<44} {row['per_s']:9.0f} /s{shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
