"""``zray microbenchmark --nodes N``: what crossing nodes costs.

    python -m zray.bench_cluster [--nodes 2] [--quick] [--json]

A ``zray.cluster_utils.Cluster`` of N one-CPU nodes on this machine (each its own
loopback address, session and store), the driver on the head. Each row beside the same on
one node, in one sitting:

- a no-op task pinned to the head / to another node, each call waiting: median and p99;
- an actor on the head / on another node, a trivial call each waiting: median and p99;
- a 256 MiB array made by a task on another node, read by the driver: GB/s for the first
  transfer (fresh store pages on both sides) and the best of the next two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import zray
from zray.cluster_utils import Cluster
from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@zray.remote
def _noop() -> int:
    return 0


@zray.remote
def _make(size: int) -> Any:
    import numpy

    return numpy.ones(size, dtype=numpy.uint8)


class _Trivial:
    def call(self) -> int:
        return 0


_Actor: Any = zray.remote(_Trivial)


def _round_trips(submit: Callable[[], Any], count: int) -> dict[str, float]:
    """``submit()`` then get its result, ``count`` times one after the other."""
    zray.get(submit())
    times = []
    for _ in range(count):
        started = time.perf_counter()
        zray.get(submit())
        times.append(time.perf_counter() - started)
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p99_us": times[int(len(times) * 0.99)] * 1e6}


def measure(nodes: int, quick: bool) -> list[dict[str, Any]]:
    calls, size = (200, 32 << 20) if quick else (2000, 256 << 20)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 2 * size + (64 << 20)})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_memory=2 * size + (64 << 20))
        cluster.wait_for_nodes()
        cluster.connect()
        head, other = cluster.list_all_nodes()[0], cluster.list_all_nodes()[-1]
        rows = []
        for where, node in (("this node", head), ("another node", other)):
            on = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            task = _noop.options(scheduling_strategy=on)
            actor = _Actor.options(scheduling_strategy=on).remote()
            rows.append({"workload": f"task on {where}, round trip",
                         **_round_trips(task.remote, calls)})
            rows.append({"workload": f"actor on {where}, call round trip",
                         **_round_trips(actor.call.remote, calls)})
        on_other = NodeAffinitySchedulingStrategy(other.node_id, soft=False)
        rates = []
        for _ in range(3):
            ref = _make.options(scheduling_strategy=on_other).remote(size)
            zray.wait([ref], fetch_local=False)  # (made there; not pulled yet)
            started = time.perf_counter()
            array = zray.get(ref)
            rates.append(size / (time.perf_counter() - started) / 1e9)
            assert array.nbytes == size
            del array, ref
        rows.append({"workload": f"{size >> 20} MiB from another node", "first_GBps":
                     rates[0], "warm_GBps": max(rates[1:])})
        return rows
    finally:
        zray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray microbenchmark --nodes")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer calls, 32 MiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    for row in measure(args.nodes, args.quick):
        if args.json:
            print(json.dumps(row))
        elif "median_us" in row:
            print(f"{row['workload']:<40} median {row['median_us']:7.0f} us   "
                  f"p99 {row['p99_us']:7.0f} us")
        else:
            print(f"{row['workload']:<40} first {row['first_GBps']:.2f} GB/s   "
                  f"warm {row['warm_GBps']:.2f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
