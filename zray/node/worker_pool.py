"""Worker processes of one node: start them, read their output, notice their death.

Each worker's stdout and stderr are pipes that the agent polls next to its sockets, so a
task's prints (and a dying worker's last words, e.g. a segfault's traceback) reach the
driver prefixed with where they came from. Death is noticed by polling the process's pidfd,
not by heartbeats: the kernel says so the moment the process is gone.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from zray.node.worker_env import spawn_env
from zray.runtime_env import key_of


def wait_for_exit(procs: list[subprocess.Popen[bytes]] | list[int], timeout_s: float) -> None:
    """Return once every process (a Popen, or a pid) has exited or ``timeout_s`` has
    passed, woken by their pidfds the moment they go (``Popen.wait(timeout)`` polls,
    sleeping up to 50 ms)."""
    poller = select.poll()
    fds = []
    for proc in procs:
        try:
            fd = os.pidfd_open(proc if isinstance(proc, int) else proc.pid)
        except ProcessLookupError:
            continue
        fds.append(fd)
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    try:
        left = len(fds)
        while left and time.monotonic() < deadline:
            events = poller.poll(max(0, int((deadline - time.monotonic()) * 1000)) + 1)
            for fd, _ in events:
                poller.unregister(fd)
                left -= 1
    finally:
        for fd in fds:
            os.close(fd)


def stop_process(pid: int, timeout_s: float, signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to ``pid`` (not a child of ours, maybe), wait for it to exit, and
    kill it if it has not within ``timeout_s``."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return
    wait_for_exit([pid], timeout_s)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    pidfd: int
    worker_id: bytes = b""  # known once it registers
    env_key: str = ""  # its runtime_env's (zray/runtime_env.py): it runs only work of that env
    partial: dict[int, bytes] = field(default_factory=dict)  # fd -> unfinished line

    @property
    def pid(self) -> int:
        return self.proc.pid


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


_MAX_LINE_BYTES = 1 << 16  # of a line the agent holds before forwarding it


def _char_boundary(data: bytes) -> int:
    """Where ``data`` (UTF-8, as a worker writes) may be cut without splitting a character:
    before the last character's lead byte, if that character may be unfinished."""
    cut = len(data)
    while cut > len(data) - 4 and cut > 0 and data[cut - 1] & 0xC0 == 0x80:
        cut -= 1  # continuation bytes
    if cut > 0 and data[cut - 1] >= 0xC0:
        cut -= 1  # the lead byte of a character that may go on
    return cut if cut > 0 else len(data)


class WorkerPool:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._argv = argv
        self._env = env
        self.by_pid: dict[int, WorkerProcess] = {}
        self.by_fd: dict[int, tuple[WorkerProcess, str]] = {}  # pipe or pidfd -> (worker, what)

    def start(self, runtime_env: str = "") -> WorkerProcess:
        """A worker for work of the resolved ``runtime_env`` (zray/runtime_env.py)."""
        proc = subprocess.Popen(
            [sys.executable, *self._argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=spawn_env(self._env, runtime_env), close_fds=True,
        )
        worker = WorkerProcess(proc, os.pidfd_open(proc.pid), env_key=key_of(runtime_env))
        self.by_pid[proc.pid] = worker
        assert proc.stdout is not None and proc.stderr is not None
        for pipe, stream in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            os.set_blocking(pipe.fileno(), False)
            self.by_fd[pipe.fileno()] = (worker, stream)
        self.by_fd[worker.pidfd] = (worker, "exit")
        return worker

    def read_lines(self, fd: int) -> list[str]:
        """Complete lines available on a worker's pipe (a final partial line at EOF)."""
        worker, _ = self.by_fd[fd]
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return []
        data = worker.partial.pop(fd, b"") + chunk
        if not chunk:  # EOF: the worker closed it (it is exiting); stop polling it
            del self.by_fd[fd]
            return [data.decode(errors="replace")] if data else []
        *lines, rest = data.split(b"\n")
        if len(rest) > _MAX_LINE_BYTES:  # a line that never ends is forwarded in pieces
            cut = _char_boundary(rest)
            lines.append(rest[:cut])
            rest = rest[cut:]
        if rest:
            worker.partial[fd] = rest
        return [line.decode(errors="replace") for line in lines]

    def reap(self, worker: WorkerProcess) -> str:
        """Forget a worker that exited; how it ended, for error messages."""
        returncode = worker.proc.wait(timeout=5)
        self.by_pid.pop(worker.pid, None)
        for fd, (owner, _) in list(self.by_fd.items()):
            if owner is worker:
                del self.by_fd[fd]
        os.close(worker.pidfd)
        for pipe in (worker.proc.stdout, worker.proc.stderr):
            if pipe is not None:
                pipe.close()
        return describe_exit(returncode)

    def kill(self, worker: WorkerProcess) -> None:
        try:
            worker.proc.kill()
        except ProcessLookupError:
            pass

    def stop_all(self, timeout_s: float) -> None:
        """SIGTERM every worker, SIGKILL those still there after ``timeout_s``, reap all."""
        workers = list(self.by_pid.values())
        for worker in workers:
            try:
                worker.proc.terminate()
            except ProcessLookupError:
                pass
        wait_for_exit([worker.proc for worker in workers], timeout_s)
        for worker in workers:
            if worker.proc.poll() is None:
                self.kill(worker)
            self.reap(worker)
