"""Run every program in examples/ as a subprocess, so each gets its own private cluster."""

from __future__ import annotations

import re
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
