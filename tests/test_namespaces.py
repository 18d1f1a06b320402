"""A node that shares no file with the others: it runs in a mount namespace of its own,
with a private /dev/shm and a private TMPDIR (a tmpfs only it sees), so its session
directory, sockets and arena are invisible to the head and the driver, and theirs to it.
Work, arguments and results still cross, over the mesh. Needs root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import pytest
from conftest import assert_no_leaks

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="mount namespaces need root and unshare(1)"),
]

SMALL = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20)]


@pytest.fixture
def home() -> Iterator[dict[str, str]]:
    """A ZRAY_HOME outside /tmp and the private TMPDIR's mount point: what the nodes
    share is this folder only (records, the token, ended sessions' logs)."""
    folder = tempfile.mkdtemp(prefix="zns", dir="/var/tmp")  # (short: sockets go below)
    os.mkdir(os.path.join(folder, "tmp"))
    env = dict(os.environ, ZRAY_HOME=os.path.join(folder, "home"))
    yield env
    subprocess.run([sys.executable, "-m", "zray_cli.main", "node", "stop"], env=env,
                   capture_output=True, timeout=60)
    assert_no_leaks()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_node_in_its_own_mount_namespace_takes_work_over_the_mesh(
        home: dict[str, str]) -> None:
    head = _cli(home, "node", "start", "--head", "--port", "0", *SMALL)
    private = os.path.join(os.path.dirname(home["ZRAY_HOME"]), "tmp")
    alone = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs tmpfs /dev/shm && mount -t tmpfs tmpfs "$0" && TMPDIR="$0" exec '
         '"$@"', private, sys.executable, "-m", "zray_cli.main", "node", "start",
         "--peers", head, "--host", "127.0.0.2", *SMALL],
        env=home, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stderr
    assert os.listdir(private) == []  # (its session lives on a tmpfs we cannot see)
    driver = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, zray, numpy as np
        from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        zray.init(address="auto")
        there = [n["NodeID"] for n in zray.nodes() if n["NodeManagerAddress"] == "127.0.0.2"]
        @zray.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(there[0], False))
        def work(array):
            return zray.get_runtime_context().get_node_id(), array * 2
        node, doubled = zray.get(work.remote(np.arange(300_000)))  # 2.4 MB each way
        print(json.dumps({"ran_there": node == there[0], "sum": int(doubled.sum())}))
        zray.shutdown()
    """)], env=home, capture_output=True, text=True, timeout=60)
    assert driver.returncode == 0, driver.stderr
    assert json.loads(driver.stdout.splitlines()[-1]) == {
        "ran_there": True, "sum": 2 * sum(range(300_000))}


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "zray_cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]
