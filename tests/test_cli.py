"""`zray inspect`, live from the broker and post-mortem from its write-ahead log."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import zray
from zray import api
from zray.broker.wal import WriteAheadLog

pytestmark = pytest.mark.timeout(90)


def zray_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zray_cli.main", *args], capture_output=True,
                          text=True, timeout=60)


def test_inspect_tasks_and_objects_live():
    zray.init(num_cpus=1)
    try:
        session = api._cluster.session  # type: ignore[union-attr]

        @zray.remote
        def named_task(i):
            if i == 2:
                raise ValueError("listed, being an error")
            return "x" * 200_000 if i == 0 else i

        refs = [named_task.remote(i) for i in range(3)]
        zray.get(refs[:2])
        with pytest.raises(ValueError):
            zray.get(refs[2])
        deadline = time.monotonic() + 20
        while True:
            out = zray_cli("inspect", "tasks", "--session", session, "--json")
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            states = sorted(r["state"] for r in rows)
            if states == ["FAILED", "FINISHED", "FINISHED"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert states == ["FAILED", "FINISHED", "FINISHED"]  # the one that raised FAILED
        assert {r["name"].rsplit(".", 1)[-1] for r in rows} == {"named_task"}
        objects = zray_cli("inspect", "objects", "--session", session)
        assert objects.returncode == 0 and "store" in objects.stdout and "inline" in objects.stdout
    finally:
        zray.shutdown()


def test_inspect_post_mortem_from_a_log(tmp_path):
    wal = WriteAheadLog(tmp_path / "broker-0.wal")
    wal.append([([("tasks", b"\x01" * 16, json.dumps({"name": "f", "state": "RUNNING"}), None),
                  ("tasks", b"\x02" * 16, json.dumps({"name": "g", "state": "FINISHED"}), None)],
                 1.0, b"node", 1)])
    wal.close()
    out = zray_cli("inspect", "tasks", "--wal", str(tmp_path / "broker-0.wal"),
                   "--filter", "state=RUNNING")
    assert out.returncode == 0, out.stderr
    assert " f " in out.stdout and " g " not in out.stdout and "(1 tasks)" in out.stdout


def test_inspect_without_a_cluster_says_so(tmp_path):
    out = zray_cli("inspect", "tasks", "--session", str(tmp_path))
    assert out.returncode == 1 and "no write-ahead log" in out.stderr
