"""GCS pub/sub with the Clone pattern (issue 13, item 1): a follower's copy of a table
stays equal to a fresh snapshot through gaps (a capped queue) and shard restarts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import gcs_shards

import zray
from zray import api
from zray.broker.follow import Follower
from zray.broker.layout import gcs_address
from zray.broker.reader import read_session

pytestmark = pytest.mark.timeout(90)


@zray.remote
def noop(i: int) -> int:
    return i


def snapshot(session: str) -> dict | None:
    """The table as the shards have it now; None while one does not answer (restarting)."""
    view = read_session(session, "tasks", None, 10**6)
    return None if view.notes else {key: fields for key, fields, _ in view.rows}


def settle(follower: Follower, session: str, rows: int) -> None:
    """Poll until the copy equals a fresh snapshot of ``rows`` rows (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        follower.poll(0.2)
        fresh = snapshot(session)
        if fresh is not None and len(fresh) == rows and follower.rows() == fresh:
            return
        assert time.monotonic() < deadline, "the copy never caught up"


def test_a_follower_resyncs_after_a_gap_and_a_shard_restart(monkeypatch):
    monkeypatch.setenv("ZRAY_GCS_PUBLISH_QUEUE", "2")  # shards queue 2 messages for it
    zray.init(num_cpus=2, _gcs_shards=2)
    follower = None
    try:
        session = api._cluster.session  # type: ignore[union-attr]
        gcs_shards(2)
        follower = Follower(gcs_address(session, 2), "tasks", queue_limit=2)
        deadline = time.monotonic() + 10
        while not follower.ready():  # snapshots taken, subscriptions at the shards (a
            follower.poll(0.2)  # heartbeat came): else a first change could be missed
            assert time.monotonic() < deadline, "the shards' heartbeats never came"
        zray.get([noop.remote(i) for i in range(50)])
        changes = []
        for _ in range(20):  # a follower that keeps up sees every change
            changes += follower.poll(0.05)
        assert follower.resyncs == 0 and len({key for key, _, _ in changes}) == 50
        settle(follower, session, 50)
        for _ in range(20):  # a slow follower: the shards drop what it does not take
            zray.get([noop.remote(i) for i in range(100)])
            time.sleep(0.03)
        settle(follower, session, 2050)
        assert follower.resyncs >= 1
        resyncs = follower.resyncs
        shards = gcs_shards(2)
        shards[0].send_signal(signal.SIGKILL)  # a new epoch: its numbers start again
        gcs_shards(2)
        zray.get([noop.remote(i) for i in range(200)])
        settle(follower, session, 2250)
        assert follower.resyncs > resyncs
    finally:
        if follower is not None:
            follower.close()
        zray.shutdown()


def test_inspect_follow_prints_task_state_changes_live():
    zray.init(num_cpus=1)
    try:
        session = api._cluster.session  # type: ignore[union-attr]
        gcs_shards(1)
        tail = subprocess.Popen([sys.executable, "-m", "zray_cli.main", "inspect", "tasks",
                                 "--follow", "--for", "4", "--session", session],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert tail.stderr is not None
        while "following" not in (line := tail.stderr.readline()):  # (bounded: --for)
            assert line, "the tail ended before it followed"
        ref = noop.remote(7)
        assert zray.get(ref) == 7
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        lines = [line for line in out.splitlines() if ref.hex()[:8] in line]
        assert lines and "FINISHED" in lines[-1] and "noop" in lines[-1], out
    finally:
        zray.shutdown()
