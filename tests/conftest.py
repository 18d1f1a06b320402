"""Shared fixtures: a module-wide cluster, and leak checks wherever a cluster stops.

After every test that leaves zray stopped, and after every module's shared cluster, nothing
this test run started may remain: no process, no session directory (sockets, logs,
write-ahead log, disk-backed arena), no /dev/shm arena, no zray thread. What this run started
is known by its marker, ``ZRAY_RUN_ID``, which every process zray starts inherits and every
session directory and arena carries in its name (zray/node/sessions.py): other zray programs
on the machine (a developer's demo, another test run) have another and are left alone.
``ZRAY_HOME`` points at a directory of this run's, so no test reads or touches a user's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

RUN_ID = f"test_{uuid.uuid4().hex[:12]}"
HOME = tempfile.mkdtemp(prefix="zray-test-home-")
os.environ["ZRAY_RUN_ID"] = RUN_ID
os.environ["ZRAY_HOME"] = HOME

import zray  # noqa: E402  (after the environment above: nothing may start without it)
from zray.node.sessions import arenas, live_sessions  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(HOME, ignore_errors=True)


def run_processes(run: str = RUN_ID) -> list[psutil.Process]:
    """Live processes (other than this one) whose environment carries run ``run``'s marker."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if (proc.environ().get("ZRAY_RUN_ID") == run
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except psutil.Error:  # gone meanwhile, or another user's
            continue
    return found


def leftovers(run: str = RUN_ID) -> list[str]:
    found = []
    for proc in run_processes(run):
        try:
            found.append(f"process {proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            continue
    found += live_sessions(run) + arenas(run)
    found += [f"thread {t.name}" for t in threading.enumerate() if t.name.startswith("zray")]
    return found


def assert_no_leaks(timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = leftovers()
    assert not left, f"zray left these behind: {left}"


@pytest.fixture(autouse=True)
def no_leaks_after_own_cluster() -> Iterator[None]:
    """A test that stops zray (or never started it) must leave nothing behind."""
    shared = zray.is_initialized()
    yield
    if not shared and zray.is_initialized():
        zray.shutdown()
        assert_no_leaks()
        pytest.fail("the test left zray initialised; call zray.shutdown()")
    if not shared:
        assert_no_leaks()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One 2-CPU cluster shared by a module's tests; checked for leaks after the module."""
    zray.init(num_cpus=2, object_store_memory=512 * 2**20)
    yield
    zray.shutdown()
    assert_no_leaks()


def gcs_shards(at_least: int = 1, timeout_s: float = 10.0) -> list[psutil.Process]:
    """The running cluster's broker shard processes (its GCS supervisor's children), once
    there are ``at_least`` (the GCS starts after init returns; a shard may be restarting);
    fewer if there are not within ``timeout_s``."""
    cluster = zray.api._cluster
    assert cluster is not None and cluster.gcs is not None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            shards = [p for p in psutil.Process(cluster.gcs.pid).children() if _alive(p)]
        except psutil.Error:
            shards = []
        if len(shards) >= at_least or time.monotonic() > deadline:
            return shards
        time.sleep(0.02)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def task_rows(session: str) -> list[dict]:
    """The session's tasks table (live shards, else their logs), oldest first."""
    from zray.broker.reader import read_session

    return [fields for _, fields, _ in read_session(session, "tasks", None, 10**9).rows]


@contextlib.contextmanager
def local_cluster(*nodes: dict[str, Any]) -> Iterator[Any]:
    """A zray.cluster_utils.Cluster on this machine: a head of 1 CPU and one more node for
    each of ``nodes`` (add_node's arguments), this process connected as its driver; all
    stopped after, and nothing left behind."""
    from zray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for node in nodes:
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        cluster.connect()
        yield cluster
    finally:
        cluster.shutdown()
    assert_no_leaks()
