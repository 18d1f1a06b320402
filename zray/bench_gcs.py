"""``zray microbenchmark --gcs``: what the GCS costs, and how far behind it runs.

    python -m zray.bench_gcs [--shards K] [--quick] [--json]

On a private cluster (``num_cpus=2``) with K shards, with the write-ahead logs on and off
(``ZRAY_GCS_LOG=0``), in one sitting, in the order on, off, off, on (each figure the mean
of its two runs: the first cluster of a process runs colder):

- 10,000 no-op tasks, then all fetched: throughput, median of 3 runs (and on/off ratio);
- rows each shard stored per second during those runs;
- lag: a steady stream of tasks for 3 s while a reader polls every shard every 50 ms; the
  time from a task's FINISHED (the agent's clock) to its row first read, p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

import zray
from zray.broker.layout import endpoints
from zray.broker.link import query


@zray.remote
def _noop(i: int) -> int:
    return i


def measure(shards: int, scale: int = 1) -> dict[str, Any]:
    """The figures for one cluster; ``scale`` 10: a tenth of the work."""
    tasks = 10_000 // scale
    zray.init(num_cpus=2, _gcs_shards=shards)
    try:
        cluster = zray.api._cluster
        assert cluster is not None
        where = endpoints(cluster.session, shards)
        zray.get([_noop.remote(i) for i in range(1000)])
        time.sleep(0.5)
        before = query(where, "tasks", 1).stats
        rates = []
        started = time.perf_counter()
        for _ in range(3):
            t = time.perf_counter()
            zray.get([_noop.remote(i) for i in range(tasks)])
            rates.append(tasks / (time.perf_counter() - t))
        elapsed = time.perf_counter() - started
        time.sleep(0.3)
        after = query(where, "tasks", 1).stats
        stored = [(after[i]["rows_stored"] - before[i]["rows_stored"]) / elapsed
                  for i in range(shards)]
        lags = _lags(where, 3 / scale)
        return {"tasks_per_s": statistics.median(rates), "rows_per_s_per_shard": stored,
                "lag_p50_ms": lags[len(lags) // 2] * 1000,
                "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000}
    finally:
        zray.shutdown()


def _lags(where: list[str], seconds: float) -> list[float]:
    seen: dict[bytes, float] = {}
    finished: dict[bytes, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            rows = query(where, "tasks", None, timeout_s=5).rows
            now = time.time()
            for key, fields, _, _ in rows:
                row = json.loads(fields)
                if row["state"] == "FINISHED" and key not in seen:
                    seen[key] = now
                    finished[key] = row["submitted"] + row["times"]["FINISHED"] / 1e6
            time.sleep(0.05)

    reader = threading.Thread(target=poll, name="gcs-bench-reader")
    reader.start()
    submitted: list[bytes] = []
    until = time.time() + seconds
    try:
        while time.time() < until:
            refs = [_noop.remote(i) for i in range(200)]
            submitted += [ref.id[:16] for ref in refs]
            zray.get(refs)
        deadline = time.time() + 10
        while time.time() < deadline and not all(task in seen for task in submitted):
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join()
    return sorted(seen[t] - finished[t] for t in submitted if t in seen) or [float("nan")]


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    mean: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, list):
            mean[key] = [statistics.mean(r[key][i] for r in runs) for i in range(len(value))]
        else:
            mean[key] = statistics.mean(r[key] for r in runs)
    return mean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray microbenchmark --gcs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "0": []}
    given = os.environ.get("ZRAY_GCS_LOG")
    try:
        for log in ("1", "0", "0", "1"):
            os.environ["ZRAY_GCS_LOG"] = log
            runs[log].append(measure(args.shards, 10 if args.quick else 1))
    finally:
        if given is None:
            del os.environ["ZRAY_GCS_LOG"]
        else:
            os.environ["ZRAY_GCS_LOG"] = given
    results = {log: _mean(pair) for log, pair in runs.items()}
    ratio = results["1"]["tasks_per_s"] / results["0"]["tasks_per_s"]
    if args.json:
        print(json.dumps({"shards": args.shards, "log_on": results["1"],
                          "log_off": results["0"], "throughput_on_over_off": ratio}))
        return 0
    for log, name in (("1", "log on"), ("0", "log off")):
        r = results[log]
        rows = ", ".join(f"{x:,.0f}" for x in r["rows_per_s_per_shard"])
        print(f"{args.shards} shards, {name:<8} {r['tasks_per_s']:>9,.0f} tasks/s   rows/s per "
              f"shard: {rows}   lag p50 {r['lag_p50_ms']:.0f} ms, p99 {r['lag_p99_ms']:.0f} ms")
    print(f"throughput with the log on / off: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
