"""The timeline (issue 13, item 4): a Chrome trace of a session's tasks, from the GCS."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest

import zray
from zray import api

pytestmark = pytest.mark.timeout(90)


@zray.remote
def leaf(i: int) -> int:
    time.sleep(0.01)
    return i


@zray.remote
def parent(n: int) -> int:
    return sum(zray.get([leaf.remote(i) for i in range(n)]))


def test_the_timeline_has_one_slice_per_task_none_overlapping_and_flows_that_join(tmp_path):
    zray.init(num_cpus=2)
    try:
        session = api._cluster.session  # type: ignore[union-attr]
        assert zray.get([parent.remote(4) for _ in range(3)] + [leaf.remote(9)]) == [6, 6, 6, 9]
        expected = 3 + 12 + 1  # the parents, their leaves, one more leaf
        deadline = time.monotonic() + 20
        while True:
            trace = zray.timeline()
            slices = [e for e in trace if e["ph"] == "X"]
            if len(slices) == expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(slices) == expected
        assert len({s["args"]["task_id"] for s in slices}) == expected  # one each
        assert len({s["tid"] for s in slices}) >= 2  # on at least 2 workers
        by_worker = defaultdict(list)
        for s in slices:
            by_worker[s["pid"], s["tid"]].append((s["ts"], s["ts"] + s["dur"], s["name"]))
        for runs in by_worker.values():
            runs.sort()
            for (_, end, a), (start, _, b) in itertools.pairwise(runs):
                assert end <= start, f"{a} and {b} overlap on one worker"
        by_id = {s["args"]["task_id"]: s for s in slices}
        starts = {e["id"]: e for e in trace if e["ph"] == "s"}
        finishes = {e["id"]: e for e in trace if e["ph"] == "f"}
        assert len(starts) == 12 and starts.keys() == finishes.keys()  # parent -> each leaf
        for flow_id, start in starts.items():
            parent_slice = next(s for s in slices if (s["pid"], s["tid"]) == (
                start["pid"], start["tid"]) and s["ts"] <= start["ts"] <= s["ts"] + s["dur"])
            child = next(s for s in slices if s["ts"] == finishes[flow_id]["ts"] and (
                s["pid"], s["tid"]) == (finishes[flow_id]["pid"], finishes[flow_id]["tid"]))
            assert parent_slice["name"].endswith("parent") and child["name"].endswith("leaf")
            assert by_id[child["args"]["task_id"]] is child
        assert any(e["ph"] == "M" and e["name"] == "process_name" for e in trace)
        out = tmp_path / "trace.json"
        assert zray.timeline(str(out)) is None
        assert json.loads(out.read_text()) == zray.timeline()
    finally:
        zray.shutdown()
    cli = subprocess.run([sys.executable, "-m", "zray_cli.main", "timeline", "-o",
                          str(tmp_path / "after.json"), "--session", session],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and f"{expected} tasks" in cli.stderr  # a session that ended
    assert len([e for e in json.loads((tmp_path / "after.json").read_text())
                if e["ph"] == "X"]) == expected
