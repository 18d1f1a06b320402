"""The GCS's supervisor: it forks the K broker shards and restarts any that dies.

::

    driver --Popen--> supervisor --fork--> broker shard 0 .. K-1
       (pidfd: when the driver dies, the supervisor waits for the agent to finish, stops
        the shards, and ends the session: its logs go to ZRAY_HOME/sessions/)

It is not the node agent: killing an agent leaves the GCS up (DESIGN.md §3). Shard ``i``
binds ``ipc://SESSION/broker-i.sock`` and logs to ``SESSION/broker-i.wal``; all write to
the supervisor's stderr (the session's ``gcs.log``). A shard that dies is restarted after a
backoff that doubles with each death in a row (0.1 s up to 5 s; a shard that served for
``_STABLE_S`` starts the count again), and replays its log. A shard that fails by itself
(an error exit: a damaged log, a bad row) five times in a row is given up on: the reason
goes to ``SESSION/broker-i.failed``, which ``zray inspect`` reports, and the other shards and
the cluster's tasks go on (the agent's link keeps its bounded queue). Killed shards (by a
signal) are always restarted. SIGTERM stops the shards (each closes its log) and exits.

Run as ``python -m zray.broker.supervisor --session DIR --shards K --parent-pid PID
[--agent-pid PID] [--arena PATH]``. Forking (not a new interpreter per shard) keeps a
shard's start, and restart, to a few milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType

from zray.broker import shard as broker_shard
from zray.broker.layout import endpoint, failed_path, gcs_file, publish_endpoint, wal_path
from zray.config import Config
from zray.mesh.auth import Credentials, load_credentials
from zray.node.sessions import end_session
from zray.node.worker_pool import describe_exit

log = logging.getLogger("zray.broker.supervisor")

GIVE_UP_AFTER = 5  # failures in a row of one shard
_BACKOFF_S = (0.1, 5.0)  # first and longest wait before a restart
_STABLE_S = 10.0


@dataclass
class _Shard:
    index: int
    pid: int = 0
    pidfd: int = -1
    ready_fd: int = -1  # read end of the pipe the shard writes to once it serves
    started: float = 0.0
    ready: bool = False
    deaths: int = 0  # in a row (reset once it has served for _STABLE_S)
    failures: int = 0  # error exits in a row
    restart_at: float | None = None
    status: int = 0  # its exit code once reaped: > 0 an error exit, < 0 killed by signal
    endpoints: tuple[str, str] = ("", "")  # ROUTER and PUB (a restart binds the same)


class Supervisor:
    def __init__(self, session: str, shards: int, config: Config, parent_pid: int,
                 agent_pid: int = 0, arena: str = "", host: str = "",
                 credentials: Credentials | None = None, token_file: str = "") -> None:
        """``host``: bind TCP on it (free ports; a cluster's head), admitting holders of
        ``credentials``; else ipc sockets in the session directory (a private cluster)."""
        self.session, self.config = session, config
        self.credentials, self.token_file = credentials, token_file
        self.shards = [_Shard(i, endpoints=(f"tcp://{host}:*", f"tcp://{host}:*") if host else
                              (endpoint(session, i), publish_endpoint(session, i)))
                       for i in range(shards)]
        self.announced = False  # gcs.json written: every shard has served once
        self.agent_pid, self.arena = agent_pid, arena
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.parent_pid = parent_pid
        self.parent_fd = _pidfd(parent_pid)
        if self.parent_fd >= 0:
            self.selector.register(self.parent_fd, selectors.EVENT_READ, "parent")
        # SIGTERM wakes the loop at once (a clean stop waits for us)
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "signal")

    def run(self) -> None:
        if self.parent_pid and (self.parent_fd < 0 or os.getppid() != self.parent_pid):
            log.info("the driver exited before the GCS started; ending the session")
            self._parent_gone()  # (it died while we started: its pidfd would never fire)
            return
        for shard in self.shards:
            self._start(shard)
        while not self.stopping:
            due = [s.restart_at for s in self.shards if s.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 1.0
            for key, _ in self.selector.select(min(timeout, 1.0)):
                if key.data == "signal":
                    os.read(self._wake_r, 512)  # (the handler set ``stopping``)
                    continue
                if key.data == "parent":
                    log.info("the driver exited; stopping the GCS once the agent has")
                    self._parent_gone()
                    return
                self._on_event(*key.data)
            now = time.monotonic()
            for shard in self.shards:
                if shard.restart_at is not None and now >= shard.restart_at:
                    shard.restart_at = None
                    self._start(shard)

    def _start(self, shard: _Shard) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the shard: replay, bind, serve; never back into this loop
            os.close(read_fd)
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = broker_shard.serve(shard.endpoints[0],
                                          wal_path(self.session, shard.index), self.config,
                                          os.getppid(), shard.index, len(self.shards), write_fd,
                                          shard.endpoints[1], self.credentials)
            finally:
                os._exit(code)
        os.close(write_fd)
        shard.pid, shard.started, shard.ready = pid, time.monotonic(), False
        shard.pidfd, shard.ready_fd = os.pidfd_open(pid), read_fd
        self.selector.register(shard.pidfd, selectors.EVENT_READ, ("exit", shard))
        self.selector.register(read_fd, selectors.EVENT_READ, ("ready", shard))

    def _on_event(self, what: str, shard: _Shard) -> None:
        if what == "ready":
            if shard.ready_fd < 0:  # it exited, reaped in this same pass
                return
            self.selector.unregister(shard.ready_fd)
            bound = os.read(shard.ready_fd, 4096)
            os.close(shard.ready_fd)
            shard.ready_fd = -1
            shard.ready = bool(bound)
            if shard.ready:
                router, publish = json.loads(bound)
                shard.endpoints = (router, publish)
                _remove(failed_path(self.session, shard.index))
                self._announce()
            return
        self._reap(shard)
        if self.stopping:
            return
        stable = shard.ready and time.monotonic() - shard.started >= _STABLE_S
        shard.deaths = 1 if stable else shard.deaths + 1
        if stable:
            shard.failures = 0  # (an error after a long good run starts the count again)
        if shard.status > 0:  # an error exit: its own failure
            shard.failures += 1
        elif shard.status < 0:  # killed by a signal from outside
            shard.failures = 0
        how = describe_exit(shard.status)
        if shard.failures >= GIVE_UP_AFTER:
            reason = (f"broker shard {shard.index} {how} {shard.failures} times in a row; "
                      f"given up. Its log: {self.session}/gcs.log; its write-ahead log: "
                      f"{wal_path(self.session, shard.index)}")
            log.error("%s", reason)
            path = failed_path(self.session, shard.index)
            with open(path + ".new", "w") as f:  # (whole, or not there: readers poll it)
                f.write(reason + "\n")
            os.replace(path + ".new", path)
            return
        wait = min(_BACKOFF_S[0] * 2 ** (shard.deaths - 1), _BACKOFF_S[1])
        log.warning("broker shard %d (pid %d) %s; restarting it in %.1fs", shard.index,
                    shard.pid, how, wait)
        shard.restart_at = time.monotonic() + wait

    def _reap(self, shard: _Shard) -> None:
        self.selector.unregister(shard.pidfd)
        os.close(shard.pidfd)
        shard.pidfd = -1
        if shard.ready_fd >= 0:
            self.selector.unregister(shard.ready_fd)
            os.close(shard.ready_fd)
            shard.ready_fd = -1
        _, status = os.waitpid(shard.pid, 0)
        shard.status = os.waitstatus_to_exitcode(status)

    def _announce(self) -> None:
        """Once every shard serves, write where (``SESSION/gcs.json``): what a head's
        agent is told, and tells joining nodes."""
        if self.announced or not all(s.ready for s in self.shards):
            return
        self.announced = True
        path = gcs_file(self.session)
        with open(path + ".new", "w") as f:
            json.dump({"gcs": [s.endpoints[0] for s in self.shards],
                       "gcs_publish": [s.endpoints[1] for s in self.shards],
                       "token_file": self.token_file}, f)
        os.replace(path + ".new", path)

    def stop(self) -> None:
        """SIGTERM every shard (each closes its log) and wait; kill what lingers."""
        self.stopping = True
        running = [s for s in self.shards if s.pidfd >= 0]
        for shard in running:
            _signal(shard.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        for shard in running:
            if not _wait_readable(shard.pidfd, deadline - time.monotonic()):
                log.warning("broker shard %d did not stop; killing it", shard.index)
                _signal(shard.pid, signal.SIGKILL)
            self._reap(shard)

    def _parent_gone(self) -> None:
        """The driver died: let its agent finish (it sends its last rows here), then stop
        the shards and end the session."""
        agent_fd = _pidfd(self.agent_pid)
        if agent_fd >= 0:
            if not _wait_readable(agent_fd, self.config.shutdown_timeout_s * 2):
                log.warning("the agent (pid %d) did not exit; ending the session anyway",
                            self.agent_pid)
            os.close(agent_fd)
        self.stop()
        if self.arena and os.path.exists(self.arena):
            os.unlink(self.arena)
        end_session(self.session, self.config.kept_sessions)


def _pidfd(pid: int) -> int:
    if not pid:
        return -1
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return -1


def _wait_readable(fd: int, timeout_s: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(max(0.0, timeout_s)))


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zray.broker.supervisor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", required=True)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--agent-pid", type=int, default=0)
    parser.add_argument("--arena", default="")
    parser.add_argument("--host", default="", help="bind TCP on this address (free ports), "
                        "not ipc; needs --token-file")
    parser.add_argument("--token-file", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[gcs] %(levelname)s %(message)s")
    config = Config.from_env()
    credentials = (load_credentials(args.token_file, config.encrypt_loopback)
                   if args.token_file else None)
    supervisor = Supervisor(args.session, args.shards, config, args.parent_pid,
                            args.agent_pid, args.arena, args.host, credentials,
                            args.token_file)

    def stop(signum: int, frame: FrameType | None) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver; it stops us
    try:
        supervisor.run()
    finally:
        if not all(s.pidfd < 0 for s in supervisor.shards):
            supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
