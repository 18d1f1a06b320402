"""The fault matrix of issue 11: where it fails x how it fails -> what the user sees.

    leased tasks   task #150 of 200 calls os._exit,  -> it runs once and alone fails; every
                   max_retries=0                         other task runs once and succeeds
    leased tasks   their worker dies right after     -> their results stay readable through
                   they answered                         the agent (nested in a list)
    actor calls    its process is SIGKILLed while a  -> answered calls never run again (nor
                   call runs (restarts, retries)         fail when read through the agent);
                                                         only the interrupted one is retried
    actor calls    a method os._exits on its 4th     -> Ray's [1, 2, 3, 1, 2, 3, 1, 2] for
                   call, (restarts, task retries)        (4, -1), (4, 2) and (-1, -1)
    actor calls    zray.kill after many answered     -> no "never retrieved" error printed
    returned put   task / num_returns=2 / actor      -> readable at once, every time
    ref            method returns zray.put(...)
    ordinary tasks f(t, t): the same unfinished      -> runs once; the lease goes back, so
                   result twice, then a task          the next task finds a CPU
                   through the agent

Execution counts come from outside zray: each task or call appends a line (what ran, its
pid and attempt) to a file opened with O_APPEND, and the test counts lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import zray
from zray import core
from zray.exceptions import WorkerCrashedError

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
    attempt = core.current().context.attempt
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{line} {os.getpid()} {attempt}\n".encode())
    finally:
        os.close(fd)


def runs(path: str) -> list[str]:
    """What ran, once per execution (the first word of each line)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split()[0] for line in f]


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


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
    path = str(tmp_path / "runs")
    pos, neg = split.remote(9)
    assert zray.get([add.remote(pos, pos, path), add.remote(pos, neg, path)], timeout=20) \
        == [18, 0]
    t = split.remote(5)[0]
    assert zray.get(pair.remote(t, t, path), timeout=20) == (5, 5)
    assert zray.get(read_nested.remote([zray.put(40), 2]), timeout=20) == 42
    assert sorted(runs(path)) == ["add", "add", "pair"]


@zray.remote(max_retries=0)
def short(i, path, crash_at):
    log_run(path, str(i))
    if i == crash_at:
        os._exit(1)
    return i


def test_a_crash_in_a_stream_of_short_tasks_blames_only_the_crashing_task(tmp_path):
    for trial in range(3):
        path = str(tmp_path / f"trial{trial}")
        refs = [short.remote(i, path, 150) for i in range(200)]
        for i, ref in enumerate(refs):
            if i == 150:
                with pytest.raises(WorkerCrashedError):
                    zray.get(ref, timeout=30)
            else:
                assert zray.get(ref, timeout=30) == i
        assert sorted(map(int, runs(path))) == list(range(200)), "a task ran twice, or never"


@zray.remote
def total(values):
    return sum(zray.get(values, timeout=20))


def test_results_of_tasks_whose_worker_died_after_answering_stay_readable(tmp_path):
    path = str(tmp_path / "runs")
    for _ in range(3):
        refs = [short.remote(i, path, 60) for i in range(61)]
        done = refs[:60]
        assert zray.get(done, timeout=30) == list(range(60))
        with pytest.raises(WorkerCrashedError):
            zray.get(refs[60], timeout=30)
        # through the agent (refs nested in a list), after the worker that made them died
        assert zray.get(total.remote(done), timeout=30) == sum(range(60))


@zray.remote
class Stepper:
    def __init__(self, path):
        self.path = path

    def pid(self):
        return os.getpid()

    def step(self, i, seconds=0.0):
        log_run(self.path, str(i))
        time.sleep(seconds)
        return i


@pytest.mark.parametrize("retries", [-1, 0])
def test_answered_actor_calls_never_run_again_after_a_restart(tmp_path, retries):
    path = str(tmp_path / "runs")
    stepper = Stepper.options(max_restarts=-1, max_task_retries=retries).remote(path)
    for trial in range(3):
        pid = zray.get(stepper.pid.remote(), timeout=30)
        base = trial * 100
        answered = [stepper.step.remote(base + i) for i in range(20)]
        assert zray.get(answered, timeout=30) == [base + i for i in range(20)]
        slow = stepper.step.remote(base + 20, 0.05)
        wait_for(lambda started=str(base + 20): started in runs(path))
        time.sleep(0.002 * trial)  # 0-5 ms after the call started
        os.kill(pid, signal.SIGKILL)
        if retries:
            assert zray.get(slow, timeout=30) == base + 20
        else:
            with pytest.raises(zray.exceptions.ActorUnavailableError):
                zray.get(slow, timeout=30)
        # read through the agent too: still their values
        assert zray.get(total.remote(answered), timeout=30) == sum(base + i for i in range(20))
    counts = {name: runs(path).count(name) for name in set(runs(path))}
    replayed = {name: n for name, n in counts.items() if n > 1 and int(name) % 100 != 20}
    assert not replayed, f"answered calls ran again: {replayed}"
    zray.kill(stepper)


@zray.remote
class DiesOnItsFourthCall:
    def __init__(self):
        self.n = 0

    def call(self):
        self.n += 1
        if self.n == 4:
            os._exit(1)
        return self.n


@pytest.mark.parametrize("restarts, retries", [(4, -1), (4, 2), (-1, -1)])
def test_an_actor_restarts_and_retries_as_ray_does(restarts, retries):
    actor = DiesOnItsFourthCall.options(max_restarts=restarts,
                                        max_task_retries=retries).remote()
    refs = [actor.call.remote() for _ in range(8)]
    assert zray.get(refs, timeout=60) == [1, 2, 3, 1, 2, 3, 1, 2]
    zray.kill(actor)


def test_killing_an_actor_after_many_answered_calls_prints_no_unhandled_error():
    script = textwrap.dedent("""
        import zray
        zray.init(num_cpus=2)

        @zray.remote
        class Echo:
            def echo(self, i):
                return i

        echo = Echo.remote()
        for _ in range(4):
            refs = [echo.echo.remote(i) for i in range(5000)]
            assert zray.get(refs) == list(range(5000))
        del refs
        zray.kill(echo)
        zray.shutdown()
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    assert "never retrieved" not in out.stderr, out.stderr[:2000]
