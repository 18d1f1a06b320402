"""Starting and stopping a private local cluster: an agent and the GCS's supervisor.

::

    driver --Popen--> agent --Popen--> workers
           --Popen (once the agent serves)--> GCS supervisor --fork--> broker shards 0 .. K-1
      (both watch the driver's pidfd: the agent stops its workers and sends its last rows;
       the supervisor waits for it, stops the shards and ends the session)

Everything a private cluster leaves on disk lives in one session directory (sockets, the
shards' write-ahead logs, the agent's and the GCS's logs, a disk-backed arena if /dev/shm
is too small) plus the arena file in /dev/shm; when the cluster ends the logs are kept in
ZRAY_HOME and the rest is removed (zray/node/sessions.py).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass

from zray.broker.layout import endpoints
from zray.config import Config
from zray.exceptions import ZrayError
from zray.ids import new_worker_id
from zray.lane import lane_path
from zray.malloc import MALLOC_ENV
from zray.node.sessions import (
    add_processes,
    claim,
    end_session,
    ended_path,
    new_session_dir,
    reap_dead_sessions,
    run_id,
)
from zray.node.worker_pool import describe_exit, wait_for_exit
from zray.objects.store import place_arena

_MAX_SOCKET_PATH = 107  # Linux: a Unix socket's path is at most 108 bytes with its NUL


def direct_endpoint(agent_endpoint: str, worker_id: bytes, kind: str = "d") -> str:
    """The ipc endpoint a process binds, next to its agent's socket, for direct messages
    (``kind`` "d": results and cancels, read by its I/O thread) or for tasks sent on a
    lease ("t": read by a worker's main thread, so a task reaches it without a hop)."""
    session_dir = os.path.dirname(agent_endpoint.removeprefix("ipc://"))
    return f"ipc://{session_dir}/{kind}-{worker_id.hex()}.sock"


def check_socket_room(session: str) -> None:
    """Raise (removing the new, empty ``session``) if its sockets' paths would be too
    long for Unix sockets."""
    endpoint = f"ipc://{session}/agent.sock"
    longest = lane_path(endpoint, new_worker_id(), "d")  # (zray/lane.py: the longest name)
    if len(longest) > _MAX_SOCKET_PATH:
        os.rmdir(session)
        raise ZrayError(
            f"the session directory {session} is too long for the Unix sockets zray "
            f"binds in it ({len(longest)} characters, at most {_MAX_SOCKET_PATH}); set "
            "TMPDIR to a shorter directory, e.g. TMPDIR=/tmp")


@dataclass
class LocalCluster:
    session: str
    endpoint: str
    store_path: str
    agent: subprocess.Popen[bytes]
    warning: str
    config: Config
    gcs_shards: int
    env: dict[str, str]
    gcs: subprocess.Popen[bytes] | None = None  # (start_gcs)

    @classmethod
    def start(cls, resources: dict[str, float], store_size: int, config: Config,
              gcs_shards: int = 1) -> LocalCluster:
        reap_dead_sessions(config.kept_sessions)
        run = run_id()
        session = new_session_dir(run)
        endpoint = f"ipc://{session}/agent.sock"
        check_socket_room(session)
        # The arena's name has a secret part: the session directory's name is in a listing
        # anyone can read, and another user must not be able to create the arena first.
        placement = place_arena(f"{os.path.basename(session)}-{secrets.token_hex(8)}",
                                store_size, session)
        claim(session, placement.path)
        env = child_env(config, run)
        with open(os.path.join(session, "agent.log"), "wb") as log_file:
            agent = subprocess.Popen(
                [sys.executable, "-m", "zray.node.boot", "--session", session,
                 "--endpoint", endpoint, "--gcs", ",".join(endpoints(session, gcs_shards)),
                 "--store-path", placement.path, "--store-size", str(store_size),
                 "--resources", json.dumps(resources), "--owner-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        add_processes(session, [agent.pid])
        return cls(session, endpoint, placement.path, agent, placement.warning, config,
                   gcs_shards, env)

    def start_gcs(self) -> None:
        """Start the GCS supervisor, once the agent serves: the first tasks need no GCS
        (the agent's rows wait in its links), and its start-up would otherwise compete
        with the agent's and the first workers' for the cores."""
        with open(os.path.join(self.session, "gcs.log"), "wb") as log_file:
            self.gcs = subprocess.Popen(
                [sys.executable, "-m", "zray.broker.supervisor", "--session", self.session,
                 "--shards", str(self.gcs_shards), "--parent-pid", str(os.getpid()),
                 "--agent-pid", str(self.agent.pid), "--arena", self.store_path],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=self.env)
        add_processes(self.session, [self.gcs.pid])

    def why_not_running(self) -> str:
        """Empty while the agent runs; else how it ended, with the end of its log."""
        code = self.agent.poll()
        if code is None:
            return ""
        log_path = os.path.join(self.session, "agent.log")
        if not os.path.exists(log_path):  # the agent ended the session as it exited
            log_path = os.path.join(ended_path(self.session), "agent.log")
        return (f"the node agent (pid {self.agent.pid}) {describe_exit(code)}; the end of its "
                f"log {log_path} (kept in ZRAY_HOME/sessions/ once the session ends):\n"
                f"{tail(log_path)}")

    def stop(self) -> None:
        """Wait for the agent to finish its clean stop (its last rows stored), then stop
        the GCS; kill what does not stop; end the session."""
        wait_for_exit([self.agent], self.config.shutdown_timeout_s)
        procs = [self.agent]
        if self.gcs is not None:
            self.gcs.terminate()
            wait_for_exit([self.gcs], self.config.shutdown_timeout_s)
            procs.append(self.gcs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        end_session(self.session, self.config.kept_sessions)
        if os.path.exists(self.store_path):
            os.unlink(self.store_path)


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]) or "(empty)"
    except OSError as exc:
        return f"(unreadable: {exc})"


def child_env(config: Config, run: str) -> dict[str, str]:
    """The driver's environment, with its effective config spelled out for the children,
    and the run's marker, which every process of the cluster inherits."""
    env = dict(os.environ, ZRAY_RUN_ID=run)
    for name, value in json.loads(config.to_json()).items():
        env["ZRAY_" + name.upper()] = str(value)
    env.update({k: v for k, v in MALLOC_ENV.items() if k not in os.environ})
    return env
