"""Run every program in examples/ as a subprocess, so each gets its own private cluster."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def run_example(name: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"{name} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


@pytest.mark.timeout(180)
def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert "quickstart OK" in out
    assert re.search(r"^\(greet pid=\d+\) hello from a task, driver$", out, re.M), out
    assert "3*3 + 4*4 = 25" in out


@pytest.mark.timeout(180)
def test_parallel_sleep() -> None:
    out = run_example("parallel_sleep.py")
    match = re.search(r"^speed-up: ([\d.]+)x$", out, re.M)
    assert match, out
    # Four one-second sleeps on four slots: ideally 4x. A wide margin: this checks that the
    # tasks ran in parallel at all, not how fast zray is.
    assert float(match.group(1)) > 1.5, out


@pytest.mark.timeout(180)
def test_tree_reduce() -> None:
    out = run_example("tree_reduce.py")
    assert "tree reduce of range(100): 4950 (plain sum 4950)" in out
    assert "every element 64, total 64000" in out
    assert "tree reduce OK: results equal the plain sums" in out


@pytest.mark.timeout(180)
def test_nested_experiments() -> None:
    out = run_example("nested_experiments.py")
    assert "experiment results: [45, 55, 65, 75, 85]" in out


@pytest.mark.timeout(180)
def test_hyperparameter_search() -> None:
    out = run_example("hyperparameter_search.py")
    assert len(re.findall(r"^trial +\d+/16: accuracy [\d.]+$", out, re.M)) == 16, out
    match = re.search(r"^best accuracy ([\d.]+) after 16 trials with \{", out, re.M)
    assert match, out
    assert 0.5 < float(match.group(1)) <= 1.0, out


@pytest.mark.timeout(180)
def test_counter() -> None:
    out = run_example("counter.py")
    assert re.search(r"^each counter incremented once: \[1, 1, 1, 1, 1, 1, 1, 1, 1, 1\]$", out,
                     re.M), out
    assert re.search(r"^first counter incremented five more times: \[2, 3, 4, 5, 6\]$", out,
                     re.M), out


@pytest.mark.timeout(180)
def test_parameter_server() -> None:
    out = run_example("parameter_server.py")
    assert "40 updates from 4 workers x 10 iterations" in out
    match = re.search(r"; sum (-?[\d.]+) \(expected (-?[\d.]+)\)$", out, re.M)
    assert match and match.group(1) == match.group(2), out
    assert "parameter server OK: parameters equal the initial values plus every update" in out


@pytest.mark.timeout(180)
def test_simulator() -> None:
    out = run_example("simulator.py")
    # Four tasks of 25 steps after the driver's 4, each picking up where the last left off.
    spans = re.findall(r"^task \d: steps (\d+)-(\d+), reward ", out, re.M)
    assert spans == [("5", "29"), ("30", "54"), ("55", "79"), ("80", "104")], out
    assert re.search(r"^final state: position [-+][\d.]+, velocity [-+][\d.]+$", out, re.M), out
    assert "simulator OK: 104 steps taken (expected 104)" in out


@pytest.mark.timeout(180)
def test_policy_gradient() -> None:
    out = run_example("policy_gradient.py")
    rewards = [float(r) for r in re.findall(r"^iteration +\d+: average reward ([-+][\d.]+)$", out,
                                            re.M)]
    assert len(rewards) == 12, out
    match = re.search(r"^policy gradient OK: average reward ([-+][\d.]+) -> ([-+][\d.]+)$", out,
                      re.M)
    assert match, out
    assert float(match.group(2)) > float(match.group(1)) + 1.0, out
    assert sum(rewards[-3:]) / 3 > 0.5, out  # most balls caught by the end


@pytest.mark.timeout(180)
def test_the_readme_cluster_section_runs_as_written() -> None:
    """The commands of the README's "A cluster", one by one (on a free port, not 6380,
    which something else on the machine may hold)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## A cluster", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    try:
        for command in commands:
            done = subprocess.run(command.replace("6380", port), shell=True, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if command.startswith("python examples/cluster.py"):
                assert "2 nodes, 4 CPUs" in done.stdout and "cluster OK" in done.stdout
    finally:
        subprocess.run("zray node stop", shell=True, capture_output=True, timeout=60)
