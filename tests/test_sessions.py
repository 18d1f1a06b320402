"""The run marker on everything zray starts, and ZRAY_HOME, where ended sessions' logs go.

These are what let the suite (conftest.py) check for leaks while other zray programs run on
the same machine, and keep its hands off a user's own clusters and logs.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from conftest import (  # (one module: pytest imported it so)
    RUN_ID,
    gcs_shards,
    leftovers,
    run_processes,
)

import zray
from zray import api
from zray.node.sessions import SESSION_PREFIX

pytestmark = pytest.mark.timeout(90)


@contextmanager
def running_driver(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A driver with a cluster of its own, running until the block ends."""
    script = textwrap.dedent("""
        import time, zray
        zray.init(num_cpus=1)
        assert zray.get(zray.remote(lambda: 1).remote()) == 1
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.terminate()  # its agent sees it go and stops the cluster
        proc.wait(30)


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def driver(body: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import zray\n" + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_every_process_of_a_cluster_carries_the_runs_marker():
    zray.init(num_cpus=2)
    try:
        session = api._cluster.session  # type: ignore[union-attr]
        assert os.path.basename(session).startswith(f"{SESSION_PREFIX}{RUN_ID}-")
        gcs_shards()  # (the GCS starts once init has returned)
        tree = []
        for top in (api._cluster.agent.pid, api._cluster.gcs.pid):  # type: ignore[union-attr]
            tree += [psutil.Process(top)] + psutil.Process(top).children(recursive=True)
        assert len(tree) >= 5  # the agent, two workers, the GCS supervisor and its shard
        assert {proc.environ().get("ZRAY_RUN_ID") for proc in tree} == {RUN_ID}
        assert {proc.pid for proc in tree} <= {proc.pid for proc in run_processes()}
    finally:
        zray.shutdown()


def test_a_cluster_started_without_a_marker_gets_one_of_its_own():
    env = {k: v for k, v in os.environ.items() if k != "ZRAY_RUN_ID"}
    script = textwrap.dedent("""
        import os, psutil, zray
        from zray import api
        zray.init(num_cpus=1)
        agent = psutil.Process(api._cluster.agent.pid)
        runs = {p.environ().get("ZRAY_RUN_ID") for p in [agent] + agent.children(True)}
        print(os.path.basename(api._cluster.session), *runs)
        zray.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    session, *runs = out.stdout.split()
    assert len(runs) == 1 and runs[0] and session.startswith(f"{SESSION_PREFIX}{runs[0]}-")
    wait_until(lambda: not leftovers(runs[0]))


def test_the_leak_check_sees_this_runs_cluster_and_not_another_runs(tmp_path):
    other = {"ZRAY_RUN_ID": "someone_else", "ZRAY_HOME": str(tmp_path / "their-home")}
    with running_driver(other):
        assert leftovers() == []  # another program's cluster is not this run's leak
        theirs = leftovers("someone_else")
        assert any("zray.node.boot" in item for item in theirs)
        assert any(os.path.basename(item).startswith(SESSION_PREFIX) for item in theirs)
        with running_driver({}):  # one of this run's, running past its test: a leak
            ours = leftovers()
            assert any("zray.node.boot" in item for item in ours)
            assert any("zray.node.worker" in item for item in ours)
            assert any(item.startswith("/dev/shm/") for item in ours)
    wait_until(lambda: not leftovers("someone_else"))


def test_an_ended_sessions_logs_stay_in_zray_home_for_inspect(tmp_path):
    home = tmp_path / "home"
    out = driver("""
        import time
        from zray import api
        from zray.broker.reader import read_session
        zray.init(num_cpus=1)
        @zray.remote
        def remembered():
            return 1
        zray.get(remembered.remote())
        session = api._cluster.session
        while not read_session(session, "tasks", None, 100).rows:  # (a session stopped
            time.sleep(0.01)  # before its GCS is up keeps what reached it: nothing)
        zray.shutdown()
    """, {"ZRAY_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    [ended] = glob.glob(str(home / "sessions" / f"{SESSION_PREFIX}{RUN_ID}-*"))
    assert {"agent.log", "broker-0.wal"} <= set(os.listdir(ended))
    assert oct(os.stat(home).st_mode & 0o777) == "0o700"
    inspect = subprocess.run([sys.executable, "-m", "zray_cli.main", "inspect", "tasks",
                              "--json"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "ZRAY_HOME": str(home)})
    assert inspect.returncode == 0, inspect.stderr
    rows = [json.loads(line) for line in inspect.stdout.splitlines()]
    assert [row["name"].rsplit(".", 1)[-1] for row in rows] == ["remembered"]


def test_zray_home_keeps_only_the_newest_sessions(tmp_path):
    env = {"ZRAY_HOME": str(tmp_path), "ZRAY_KEPT_SESSIONS": "2"}
    for _ in range(3):
        out = driver("zray.init(num_cpus=1)\nzray.shutdown()", env)
        assert out.returncode == 0, out.stderr
    assert len(os.listdir(tmp_path / "sessions")) == 2


def test_a_bad_run_marker_is_named():
    out = driver("zray.init(num_cpus=1)", {"ZRAY_RUN_ID": "../../etc"})
    assert out.returncode == 1 and "ZRAY_RUN_ID='../../etc'" in out.stderr, out.stderr


_KILLED_DRIVER = """
    import os, signal, time, zray
    from zray import api
    from zray.broker.reader import read_session
    zray.init(num_cpus=1, _gcs_shards=2)
    @zray.remote
    def remembered(i):
        print("remembered", i)
        return i
    assert zray.get([remembered.remote(i) for i in range(20)]) == list(range(20))
    session = api._cluster.session
    while len(read_session(session, "tasks", None, 100).rows) < 20:
        time.sleep(0.01)
    print(session, api._cluster.store_path, flush=True)
    os.{kill}
"""


def inspect_names(home, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "zray_cli.main", "inspect", "tasks", "--json",
                          *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ZRAY_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert "read the ended session" in out.stderr or "--session" in args, out.stderr
    return [json.loads(line)["name"].rsplit(".", 1)[-1] for line in out.stdout.splitlines()]


def test_a_killed_drivers_session_is_ended_by_the_gcs_and_kept_for_inspect(tmp_path):
    out = driver(_KILLED_DRIVER.format(kill="kill(os.getpid(), signal.SIGKILL)"),
                 {"ZRAY_HOME": str(tmp_path)})
    assert out.returncode == -signal.SIGKILL, out.stderr
    session, arena = out.stdout.split()[-2:]
    wait_until(lambda: not os.path.exists(session) and not os.path.exists(arena))
    ended = tmp_path / "sessions" / os.path.basename(session)
    assert {"agent.log", "gcs.log", "workers.log", "broker-0.wal",
            "broker-1.wal"} <= set(os.listdir(ended))
    assert "(remembered pid=" in (ended / "workers.log").read_text()
    assert oct(os.stat(ended).st_mode & 0o777) == "0o700"
    assert {oct(os.stat(ended / f).st_mode & 0o777) for f in os.listdir(ended)} == {"0o600"}
    assert inspect_names(tmp_path) == ["remembered"] * 20


def test_init_reaps_a_session_whose_processes_were_all_killed(tmp_path):
    """A process group killed with SIGKILL leaves its session directory and its arena; the
    next init of this user ends that session: its logs kept, the rest removed."""
    script = "import zray\n" + textwrap.dedent(
        _KILLED_DRIVER.format(kill="killpg(0, signal.SIGKILL)"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, start_new_session=True,
                         env={**os.environ, "ZRAY_HOME": str(tmp_path)})
    assert out.returncode == -signal.SIGKILL, out.stderr
    session, arena = out.stdout.split()[-2:]
    time.sleep(0.5)
    assert os.path.exists(session) and os.path.exists(arena)  # nobody left to tidy up
    assert driver("zray.init(num_cpus=1)\nzray.shutdown()",
                  {"ZRAY_HOME": str(tmp_path)}).returncode == 0
    assert not os.path.exists(session) and not os.path.exists(arena)
    ended = tmp_path / "sessions" / os.path.basename(session)
    assert inspect_names(tmp_path, "--session", str(ended)) == ["remembered"] * 20
