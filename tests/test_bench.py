"""The benchmark's workloads run and check their own results (no timing is asserted here:
speed is measured by `zray microbenchmark`, not by tests)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import zray
from zray import bench

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("cluster")]

WORKLOADS = ["task_latency", "task_throughput", "actor_latency", "actor_throughput",
             "two_actor_throughput", "put_small", "get_small", "put_large", "get_large",
             "args_by_value", "args_by_ref", "tree_reduce", "nested", "drain_with_wait"]


@pytest.fixture(scope="module")
def workloads():
    return bench.Workloads(zray, quick=True)


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_runs_and_reports_a_figure(workloads, name):
    results = getattr(workloads, name)()
    for result in results if isinstance(results, list) else [results]:
        assert result.value > 0 and result.unit in ("ms", "/s", "GB/s", "s")
    if name.endswith("latency"):  # (its median, and its 99th percentile)
        median, p99 = results
        assert "median" in median.name and "p99" in p99.name and p99.value >= median.value


def test_idle_memory_counts_the_cluster_processes():
    result = bench.idle_memory()
    assert result.unit == "MB" and result.value > 0 and "processes" in result.name


def test_an_idle_cluster_does_not_wake_up(workloads):
    """Its driver, agent, workers and GCS together use almost no CPU while nothing runs,
    after work (leases given back, actors alive): each process waking every poll period
    used 0.8% of a core, 5.3% in all. (CPU times tick by 10 ms per process: the bound
    leaves room for one tick each.)"""
    workloads.task_latency()
    workloads.actor_latency()
    time.sleep(1.5)  # (leases go back; the agent finds itself quiet after a second)
    result = bench.idle_cpu(5.0)
    assert result.unit == "% of a core" and 0 <= result.value < 2.5


@pytest.mark.timeout(120)
def test_the_gcs_benchmark_reports_throughput_rows_and_lag():
    out = subprocess.run([sys.executable, "-m", "zray_cli.main", "microbenchmark", "--gcs",
                          "--quick", "--json", "--shards", "2"], capture_output=True, text=True,
                         timeout=110)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for run in (report["log_on"], report["log_off"]):
        assert run["tasks_per_s"] > 0 and len(run["rows_per_s_per_shard"]) == 2
        assert all(rate > 0 for rate in run["rows_per_s_per_shard"])
        assert 0 <= run["lag_p50_ms"] <= run["lag_p99_ms"] < 5000
    assert report["throughput_on_over_off"] > 0


@pytest.mark.timeout(120)
def test_the_cluster_benchmark_reports_round_trips_and_a_transfer():
    out = subprocess.run([sys.executable, "-m", "zray_cli.main", "microbenchmark", "--nodes",
                          "2", "--quick", "--json"], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    rows = {row["workload"]: row for row in map(json.loads, out.stdout.splitlines())}
    for where in ("this node", "another node"):
        for what in ("task on {}, round trip", "actor on {}, call round trip"):
            row = rows[what.format(where)]
            assert 0 < row["median_us"] <= row["p99_us"]
    assert rows["32 MiB from another node"]["warm_GBps"] > 0
    spread = rows["1000 tasks, SPREAD"]
    assert spread["per_s"] > 0 and len(spread["shares"]) == 2
    assert abs(sum(spread["shares"]) - 1) < 0.01
    assert rows["100 tasks on another node, 1 MB each by value"]["per_s"] > 0


@pytest.mark.timeout(120)
def test_the_breakdown_times_each_step_of_a_round_trip_in_both_processes():
    out = subprocess.run([sys.executable, "-m", "zray_cli.main", "microbenchmark",
                          "--breakdown", "--quick", "--json"], capture_output=True, text=True,
                         timeout=110)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    for row in ("task round trip", "actor call round trip"):
        steps = rows[row]
        assert all(median >= 0 for median, _ in steps.values()), (row, steps)
        assert all(steps[step][0] > 0 for step in ("run", "to worker", "to owner")), (row, steps)
        parts = sum(median for step, (median, _) in steps.items() if step != "total")
        assert parts <= steps["total"][0] * 1.5, (row, steps)  # (medians: near the whole)
