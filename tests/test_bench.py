"""The benchmark's workloads run and check their own results (no timing is asserted here:
speed is measured by `zray microbenchmark`, not by tests)."""

from __future__ import annotations

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
    result = getattr(workloads, name)()
    assert result.value > 0 and result.unit in ("ms", "/s", "GB/s", "s")


def test_idle_memory_counts_the_cluster_processes():
    result = bench.idle_memory()
    assert result.unit == "MB" and result.value > 0 and "processes" in result.name
