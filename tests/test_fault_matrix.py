"""The fault matrix of issue 11: where it fails x how it fails -> what the user sees.

    returned put ref   task / num_returns=2 / actor method   -> readable at once, every time
                       returns zray.put(...), read at once
    ordinary tasks     f(t, t): the same unfinished result   -> runs once; the lease goes back,
                       twice, then a task through the agent     so the next task finds a CPU

Execution counts, where a case needs them, come from outside zray: each task appends a line
to a file opened with O_APPEND, and the test counts lines.
"""

from __future__ import annotations

import os

import pytest

import zray

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("cluster")]

TRIES = 10


@zray.remote
def returns_a_put():
    return zray.put(1)


@zray.remote(num_returns=2)
def returns_two_puts():
    return zray.put(1), zray.put(2)


@zray.remote
class Putter:
    def put_one(self):
        return zray.put(1)


def test_a_put_ref_returned_from_a_task_is_readable_at_once():
    """The worker lets go of the put right behind the report that pins it, and that
    report may reach the agent before the owner's notice of the task: it must pin anyway."""
    putter = Putter.remote()
    for _ in range(TRIES):
        assert zray.get(zray.get(returns_a_put.remote()), timeout=10) == 1
        assert zray.get(zray.get(returns_two_puts.remote()), timeout=10) == [1, 2]
        assert zray.get(zray.get(putter.put_one.remote()), timeout=10) == 1
    zray.kill(putter)


def log_run(path: str, line: str) -> None:
    """One execution, counted from outside zray (O_APPEND: whole lines, any process)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{line} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@zray.remote(num_returns=2)
def split(x):
    return x, -x


@zray.remote
def add(a, b, path):
    log_run(path, "add")
    return a + b


@zray.remote
def pair(a, b, path):
    log_run(path, "pair")
    return a, b


@zray.remote
def read_nested(values):
    return zray.get(values[0], timeout=20) + values[1]


def test_a_task_given_one_unfinished_result_twice_runs_once_and_frees_its_cpu(tmp_path):
    """Root cause of the hang: the owner queued such a task once per argument, sent it to
    its lease twice, and the copy left over kept the lease (and its CPU) forever; with both
    CPUs held so, a task through the agent's scheduler never started."""
    runs = str(tmp_path / "runs")
    pos, neg = split.remote(9)
    assert zray.get([add.remote(pos, pos, runs), add.remote(pos, neg, runs)], timeout=20) \
        == [18, 0]
    t = split.remote(5)[0]
    assert zray.get(pair.remote(t, t, runs), timeout=20) == (5, 5)
    assert zray.get(read_nested.remote([zray.put(40), 2]), timeout=20) == 42
    with open(runs) as f:
        assert sorted(line.split()[0] for line in f) == ["add", "add", "pair"]
