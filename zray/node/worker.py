"""A worker process: runs the tasks its node agent sends, one at a time, on its main thread.

::

    node agent ROUTER <--- tx / rx DEALERs ---> CoreClient (its "zray-io" thread)
                                                   | ExecuteTask, through a queue
                                               main thread: run the task, send TaskDone

A worker dedicated to an actor hosts its instance (zray/actors/host.py) and runs its calls
in the order they arrive: from the agent's mailbox, or straight from their callers.

Stdout and stderr are pipes that the agent reads and forwards to the driver, so both are
flushed before a task is reported done. If the agent dies the worker exits at once:
nobody is left to take its results.

Cancelling a running task: the agent sends CancelRunning; the I/O thread sends SIGUSR1 to
the main thread, whose handler raises TaskCancelledError inside the task (interrupting a
sleep or a blocking get) if that task is still the one running.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import logging
import os
import signal
import threading
from typing import Any, NoReturn

from zray import core
from zray import protocol as p
from zray.actors.host import ActorHost
from zray.bench_breakdown import STAMPS_VARIABLE, stamp_worker
from zray.config import Config
from zray.core import CoreClient
from zray.exceptions import NodeDiedError, RuntimeEnvSetupError, TaskCancelledError
from zray.exported import load_function
from zray.node import execution, worker_env
from zray.node.execution import Outcome, fail
from zray.node.output import track_lines
from zray.rate_limit import RateLimitedLog

_PR_SET_TIMERSLACK = 29  # (linux/prctl.h)
_FETCH_PACKAGE_S = 300.0  # for a runtime_env's package (up to 100 MiB, from any node)


class Worker:
    def __init__(self, client: CoreClient, env_error: str = "") -> None:
        self.client = client
        self.env_error = env_error  # why its runtime_env could not be set up: it runs nothing
        self.functions: dict[bytes, Any] = {}
        self.actor: ActorHost | None = None
        self.current = b""  # the plain task on the main thread
        self.running = b""  # ...while its user code runs: only then may a cancel interrupt
        self.cancelled = b""
        self.cancel_before_start: set[bytes] = set()  # sent ahead on a lease, not started
        client.on_cancel = self.on_cancel
        signal.signal(signal.SIGUSR1, self._raise_cancelled)
        self.complaints = RateLimitedLog(logging.getLogger("zray.worker"))

    def serve(self) -> None:
        while True:
            assert self.client.inbox is not None
            task = self.client.inbox.next()
            if task is None:
                return
            try:
                self._serve_one(task)
            except Exception as exc:  # a task message this worker cannot use (anyone may
                # write to its task socket): dropped, and the worker serves on
                self.complaints.warning("task", "dropped a task that cannot be run: %r", exc)

    def _serve_one(self, task: p.ExecuteTask) -> None:
        if self.env_error:
            error = RuntimeEnvSetupError(f"{task.name}: {self.env_error}")
            execution.hand_in(self.client, (fail(self.client, task, error), []))
        elif task.actor_options:
            self.actor = ActorHost(self.client, task)
        elif task.actor_id:
            if self.actor is None:
                raise ValueError("an actor call reached a worker that hosts no actor")
            self.actor.run(task)
        else:
            execution.hand_in(self.client, self.run_task(task))

    def run_task(self, task: p.ExecuteTask) -> Outcome:
        if task.task_id in self.cancel_before_start:
            self.cancel_before_start.discard(task.task_id)
            return fail(self.client, task, TaskCancelledError(f"{task.name}() was cancelled")), []
        self.current = task.task_id
        try:
            return execution.run_sync(self.client, task,
                                      lambda: self._armed(task, self._function(task)))
        finally:
            self.current = self.cancelled = b""

    def _armed(self, task: p.ExecuteTask, fn: Any) -> Any:
        """``fn``, interruptible by a cancel while it runs, and only then: a signal inside
        zray's own bookkeeping (sending, ref counting) could corrupt it."""
        def call(*args: Any, **kwargs: Any) -> Any:
            self.running = task.task_id
            try:
                if self.cancelled == task.task_id:
                    raise TaskCancelledError(f"task {task.name}() was cancelled")
                result = fn(*args, **kwargs)
            finally:
                self.running = b""
            return self._armed_generator(task, result) if inspect.isgenerator(result) \
                else result
        return call

    def _armed_generator(self, task: p.ExecuteTask, generator: Any) -> Any:
        """A generator task's values, each made where a cancel may interrupt it."""
        while True:
            self.running = task.task_id
            try:
                if self.cancelled == task.task_id:
                    raise TaskCancelledError(f"task {task.name}() was cancelled")
                value = next(generator)
            except StopIteration:
                return
            finally:
                self.running = b""
            yield value


    def _function(self, task: p.ExecuteTask) -> Any:
        if task.function_blob is not None:
            self.functions[task.function_id] = load_function(task.function_blob)
        return self.functions[task.function_id]

    def on_cancel(self, task_id: bytes) -> None:
        """From the I/O thread: interrupt the main thread if it still runs ``task_id``;
        an actor's call that was sent ahead and has not started is dropped instead."""
        self.client.cancelled.add(task_id)  # (get_runtime_context().is_canceled())
        if self.actor is not None:
            self.actor.cancel(task_id)
        elif task_id and task_id == self.current:
            self.cancelled = task_id
            if self.running == task_id:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        elif task_id:
            self.cancel_before_start.add(task_id)

    def _raise_cancelled(self, signum: int, frame: Any) -> None:
        if self.cancelled and self.cancelled == self.running:
            self.cancelled = b""
            raise TaskCancelledError(f"task {self.running.hex()[:12]} was cancelled")


def main() -> None:
    parser = argparse.ArgumentParser(description="zray worker (started by a node agent)")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--agent-pid", type=int, required=True)
    args = parser.parse_args()
    config = Config.from_env()
    _precise_timers()
    track_lines()
    exit_now = os._exit  # (not the one that waits for answers to go: the agent is gone)
    client = CoreClient(args.endpoint, "worker", b"", config, on_agent_death=lambda: exit_now(1))
    try:  # if the agent that started us dies before we connect, give up at once
        client.connect(config.startup_timeout_s,
                       lambda: "" if os.getppid() == args.agent_pid else "the agent exited")
    except NodeDiedError:
        os._exit(1)
    core.set_current(client)
    _deliver_answers_on_exit(client)
    if os.environ.get(STAMPS_VARIABLE):  # (zray microbenchmark --breakdown: time each step)
        stamp_worker(os.environ[STAMPS_VARIABLE])
    env_error = worker_env.set_up(  # (its runtime_env, before any work)
        lambda object_id, node: client.get_from(object_id, node, _FETCH_PACKAGE_S))
    Worker(client, env_error).serve()
    client.close()


def _precise_timers() -> None:
    """Wake this process's sleeps and poll timeouts when they are due: by default Linux
    may wake each up to 50 µs late (timer slack, to batch wake-ups), and does more than
    that on a VM. Measured here: a 2.5 ms ``time.sleep`` overshot by 108-147 µs (median)
    by default, 52-77 µs with a slack of 1 ns; a thousand tasks of 0-5 ms drain that much
    sooner. Costs nothing at idle: no timer is added, they only fire on time."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):  # (not Linux: its timers as they are)
        pass


def _deliver_answers_on_exit(client: CoreClient) -> None:
    """A task that calls os._exit ends its worker at once, but the answers the worker sent
    before that task still reach their owners (os._exit skips everything else, as it should:
    the task is lost, and retried or failed as a crash). A process forked by a task inherits
    this and exits plainly."""
    real_exit = os._exit
    pid = os.getpid()

    def exit_after_delivering(status: int) -> NoReturn:
        if os.getpid() == pid:
            try:
                client.deliver_before_exit(1.0)
            except Exception:  # exiting all the same
                pass
        real_exit(status)

    os._exit = exit_after_delivering


if __name__ == "__main__":
    main()
