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
    assert " f " in out.stdout and " g " not in out.stdout and "(1 task)" in out.stdout


def test_inspect_without_a_cluster_says_so(tmp_path):
    out = zray_cli("inspect", "tasks", "--session", str(tmp_path))
    assert out.returncode == 1 and "no write-ahead log" in out.stderr


TASK_KEYS = {"task_id", "name", "state", "attempt", "job_id", "node_id", "parent_task_id",
             "submitted", "times"}


def test_inspect_filters_units_json_keys_and_one_tasks_history():
    zray.init(num_cpus=1)
    try:
        session = api._cluster.session  # type: ignore[union-attr]

        @zray.remote(max_retries=0)
        def picky(i):
            if i == 1:
                raise ValueError(f"no {i}s here")
            return i

        refs = [picky.remote(i) for i in range(3)]
        with pytest.raises(ValueError):
            zray.get(refs)
        failed = refs[1].hex()[:32]
        deadline = time.monotonic() + 20
        while True:
            out = zray_cli("inspect", "tasks", "--session", session, "--state", "failed",
                           "--json")
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        [row] = rows
        assert TASK_KEYS <= set(row) and row["task_id"] == failed
        assert (row["error_type"], row["error_message"]) == ("ValueError", "no 1s here")
        assert row["worker_pid"] > 0 and "key" not in row
        job = row["job_id"]
        table = zray_cli("inspect", "tasks", "--session", session, "--name", "*picky",
                         "--job", job[:4], "--since", "10m")
        assert "(3 tasks)" in table.stdout and failed[:8] in table.stdout
        assert failed not in table.stdout  # ids shortened...
        wide = zray_cli("inspect", "tasks", "--session", session, "--wide")
        assert failed in wide.stdout  # ...but for --wide
        none = zray_cli("inspect", "tasks", "--session", session, "--node", "zz")
        assert "(0 tasks)" in none.stdout
        history = zray_cli("inspect", "task", failed[:6], "--session", session)
        assert history.returncode == 0, history.stderr
        for text in (failed, "FAILED", "RUNNING", "QUEUED", "error: ValueError: no 1s here",
                     "raise ValueError(f\"no {i}s here\")"):  # (its traceback's line)
            assert text in history.stdout, history.stdout
        needs = zray_cli("inspect", "tasks", "--session", session, "--json")
        assert all(row["arg_ids"] == [] for row in map(json.loads, needs.stdout.splitlines()))
        jobs = zray_cli("inspect", "jobs", "--session", session, "--json")
        assert [json.loads(line)["state"] for line in jobs.stdout.splitlines()] == ["RUNNING"]
        bad = zray_cli("inspect", "tasks", "--session", session, "--since", "soon")
        assert bad.returncode == 1 and "--since 'soon'" in bad.stderr
    finally:
        zray.shutdown()
    ended = zray_cli("inspect", "jobs", "--json")  # (the ended session, post-mortem)
    assert [json.loads(line)["state"] for line in ended.stdout.splitlines()] == ["SUCCEEDED"]
    nodes = zray_cli("inspect", "nodes", "--json")
    assert [json.loads(line)["state"] for line in nodes.stdout.splitlines()] == ["DEAD"]
    version = zray_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("zray ")


def test_status_shows_resources_workers_and_what_tasks_wait_for():
    zray.init(num_cpus=2, num_gpus=0)
    try:
        session = api._cluster.session  # type: ignore[union-attr]

        @zray.remote
        def hold(i):
            time.sleep(3)
            return i

        needs_gpu = zray.remote(num_gpus=1)(lambda: 1).remote()
        refs = [hold.remote(i) for i in range(4)]
        deadline = time.monotonic() + 20
        while True:
            out = zray_cli("status", "--session", session, "--json")
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            tasks = status["tasks"]
            if tasks["running"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (tasks["running"], tasks["queued"], tasks["infeasible_shapes"]) == (2, 3, 1)
        assert status["resources"]["available"]["CPU"] == 0 and status["workers"]["busy"] == 2
        table = zray_cli("status", "--session", session)
        assert "resources used: CPU 2/2" in table.stdout and "2 running, 3 queued" in table.stdout
        assert "1 kinds of task ask for more than this node has" in table.stdout
        # Every pending task says why (its row is laid out again while it waits).
        deadline = time.monotonic() + 10
        while True:
            rows = [json.loads(line) for line in zray_cli(
                "inspect", "tasks", "--session", session, "--state", "QUEUED", "--json",
            ).stdout.splitlines()]
            reasons = {row["task_id"]: row.get("pending_reason", "") for row in rows}
            gpu = reasons.pop(needs_gpu.hex()[:32], "")
            waiting = [r.startswith(("needs {CPU=1}; CPU is in use (2 of 2) by 2 running",
                                     "queued at its owner")) for r in reasons.values()]
            if (len(waiting) == 2 and all(waiting)) or time.monotonic() > deadline:
                break  # (at their owner, or for the lease it asked for: once refreshed)
            time.sleep(0.2)
        assert len(waiting) == 2 and all(waiting), reasons
        assert gpu == "needs {CPU=1, GPU=1}; no node has enough GPU (has 0)"
        history = zray_cli("inspect", "task", needs_gpu.hex()[:8], "--session", session)
        assert "pending: needs {CPU=1, GPU=1}; no node has enough GPU" in history.stdout
        zray.cancel(needs_gpu)
        assert zray.get(refs) == [0, 1, 2, 3]
    finally:
        zray.shutdown()
    gone = zray_cli("status", "--session", session)
    assert gone.returncode == 1 and "no running cluster" in gone.stderr
