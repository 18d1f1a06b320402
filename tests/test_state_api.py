"""Ray's state API (issue 13, item 5): the same rows as `zray inspect TABLE --json`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import zray
from zray import api
from zray.util.state import (
    get_task,
    list_actors,
    list_jobs,
    list_nodes,
    list_objects,
    list_tasks,
    summarize_tasks,
)

pytestmark = pytest.mark.timeout(90)


def test_list_get_and_summarize_match_inspect():
    zray.init(num_cpus=1)
    try:
        @zray.remote(max_retries=0)
        def maybe(i):
            if i == 2:
                raise KeyError(i)
            return "x" * 200_000 if i == 0 else i

        @zray.remote
        class Keeper:
            def ping(self):
                return 1

        keeper = Keeper.remote()
        assert zray.get(keeper.ping.remote()) == 1
        refs = [maybe.remote(i) for i in range(4)]
        zray.wait(refs, num_returns=4)
        # (rows lag the answers: a leased task's is QUEUED until its owner's report of the
        # answer reaches the agent, in a later batch than its notice)
        deadline = time.monotonic() + 20
        while sum(row["state"] in ("FINISHED", "FAILED") for row in list_tasks(limit=0)) < 6:
            assert time.monotonic() < deadline, list_tasks(limit=0)
            time.sleep(0.05)
        [failed] = list_tasks(filters=[("state", "=", "FAILED")])
        assert failed["task_id"] == refs[2].hex()[:32] and failed["error_type"] == "KeyError"
        assert get_task(failed["task_id"]) == failed and get_task("00" * 16) is None
        assert len(list_tasks(limit=2)) == 2
        counts = summarize_tasks()["cluster"]["summary"]
        assert {name.rsplit(".", 1)[-1]: c["state_counts"] for name, c in counts.items()} == {
            "maybe": {"FINISHED": 3, "FAILED": 1}, "__init__": {"FINISHED": 1},
            "ping": {"FINISHED": 1}}
        assert [a["state"] for a in list_actors()] == ["ALIVE"]
        assert [j["state"] for j in list_jobs()] == ["RUNNING"]
        assert [n["state"] for n in list_nodes()] == ["ALIVE"]
        assert any(o["where"] == "store" for o in list_objects())
        session = api._cluster.session  # type: ignore[union-attr]
        out = subprocess.run([sys.executable, "-m", "zray_cli.main", "inspect", "tasks",
                              "--json", "--session", session], capture_output=True, text=True,
                             timeout=60)
        assert [json.loads(line) for line in out.stdout.splitlines()] == list_tasks(limit=0)
        assert zray.util.state.list_tasks is list_tasks  # reachable after `import zray`
        given = zray.put(5)
        taking = maybe.remote(given)
        assert zray.get(taking) == 5
        deadline = time.monotonic() + 20
        while (get_task(taking.hex()[:32]) or {}).get("state") != "FINISHED":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert get_task(taking.hex()[:32])["arg_ids"] == [given.hex()]
        with pytest.raises(ValueError, match="predicate"):
            list_tasks(filters=[("state", ">", "A")])
    finally:
        zray.shutdown()
