"""Shared fixtures: a module-wide cluster, and leak checks wherever a cluster stops.

After every test that leaves zray stopped, and after every module's shared cluster, nothing
zray started may remain: no agent, broker or worker process, no session directory (sockets,
logs, write-ahead log, disk-backed arena), no /dev/shm arena, no zray thread.
"""

from __future__ import annotations

import glob
import os
import tempfile
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

import zray
from zray.node.launcher import SESSION_PREFIX

_STARTED = time.time() - 1
_ZRAY_MODULES = ("zray.node.boot", "zray.node.worker", "zray.broker.shard")


def zray_processes() -> list[psutil.Process]:
    """zray processes started since this test session began (not a developer's own)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["create_time"] >= _STARTED and any(m in cmdline for m in _ZRAY_MODULES):
            found.append(proc)
    return found


def leftovers() -> list[str]:
    found = [f"process {p.pid}: {' '.join(p.cmdline())}" for p in zray_processes()
             if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    paths = glob.glob(os.path.join(tempfile.gettempdir(), SESSION_PREFIX + "*"))
    paths += glob.glob("/dev/shm/" + SESSION_PREFIX + "*")
    found += [path for path in paths if _created_since_start(path)]
    found += [f"thread {t.name}" for t in threading.enumerate() if t.name.startswith("zray")]
    return found


def _created_since_start(path: str) -> bool:
    """Only what this test session made counts (a developer may run a demo meanwhile)."""
    try:
        return os.stat(path).st_ctime >= _STARTED
    except FileNotFoundError:
        return False


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
