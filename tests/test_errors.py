"""What the user sees when a task raises, and the fault matrix for dying workers.

Fault matrix (where it fails x how it fails -> what the user sees):

    task body   raises ValueError         -> get raises TaskError that is also a ValueError
    task body   raises, retry_exceptions  -> retried, then succeeds or raises the error
    argument    is a failed task's result -> dependent's get raises the same error class
    worker      os._exit / SIGKILL / segv -> retried max_retries times, then WorkerCrashedError
    worker      dies once, then succeeds  -> get returns the value; the pool keeps going
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import zray
from zray.exceptions import TaskError, WorkerCrashedError

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("cluster")]


class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


@zray.remote
def fail(message):
    raise CustomError(message, code=7)


def test_task_error_is_also_the_users_class_with_remote_traceback():
    with pytest.raises(CustomError) as info:
        zray.get(fail.remote("boom"))
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, zray.exceptions.RayTaskError)
    assert err.code == 7
    text = str(err)
    assert "boom" in text and "in fail" in text and "raise CustomError" in text
    assert "zray/node/worker.py" not in text and "zray/core.py" not in text


def test_dependents_fail_with_the_same_error():
    @zray.remote
    def plus_one(x):
        return x + 1

    with pytest.raises(CustomError, match="upstream"):
        zray.get(plus_one.remote(plus_one.remote(fail.remote("upstream"))))


def test_user_exceptions_are_not_retried_unless_asked(tmp_path):
    counter = tmp_path / "count"

    @zray.remote
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise ValueError("not yet")
        return "ok"

    with pytest.raises(ValueError):
        zray.get(flaky.remote(str(counter)))
    assert counter.read_text() == "x"
    assert zray.get(flaky.options(retry_exceptions=[ValueError]).remote(str(counter))) == "ok"


@pytest.mark.parametrize("how", ["os._exit", "sigkill", "segfault"])
def test_worker_crash_is_retried_then_reported(how, tmp_path):
    attempts = tmp_path / "attempts"

    @zray.remote(max_retries=2)
    def crash(path, how):
        import ctypes

        with open(path, "a") as f:
            f.write("x")
        if how == "os._exit":
            os._exit(3)
        elif how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            ctypes.string_at(0)

    with pytest.raises(WorkerCrashedError, match="pid="):
        zray.get(crash.remote(str(attempts), how))
    assert attempts.read_text() == "xxx"  # the first try and two retries
    assert zray.get(zray.put(1)) == 1


def test_crash_once_then_succeed_and_pool_keeps_going(tmp_path):
    marker = tmp_path / "crashed"

    @zray.remote
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "survived"

    assert zray.get(crash_once.remote(str(marker))) == "survived"

    @zray.remote
    def square(x):
        return x * x

    assert zray.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]


def test_unretrieved_error_is_printed_when_ref_dropped():
    script = textwrap.dedent("""
        import gc, zray
        zray.init(num_cpus=1)

        @zray.remote
        def bad():
            raise KeyError("nobody-read-me" + "!" * 200_000)  # bigger than inline values

        ref = bad.remote()
        zray.wait([ref])
        del ref
        gc.collect()
        zray.shutdown()  # shutdown waits for the notices the agent owes this driver
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "nobody-read-me" in out.stderr and "never retrieved" in out.stderr
