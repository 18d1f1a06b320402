"""Starting and stopping the nodes of a cluster on this machine (``zray node start|stop``).

::

    zray node start --head:   supervisor (GCS shards on TCP, free ports) --> SESSION/gcs.json
                              agent (--listen HOST:PORT, told where the GCS is) --> node.json
    zray node start --peers:  Hello to a running node --> Welcome (where the GCS is)
                              agent (--listen HOST:free port) --> node.json

Each node is its own session (directory, arena, logs), and both processes run in sessions
of their own, detached from the terminal: the command returns once the agent serves, and
the node lives until ``zray node stop``. A node's agent, when stopped, stops its workers,
sends its last rows, stops the head's GCS supervisor after it, and ends its session (its
logs kept in ZRAY_HOME/sessions/). What else knows of a node is in ZRAY_HOME
(zray/mesh/records.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from zray import protocol as p
from zray.broker.layout import gcs_file
from zray.config import Config
from zray.exceptions import ZrayError
from zray.mesh.auth import load_credentials, new_token, read_token, write_token
from zray.mesh.join import hello
from zray.mesh.records import (
    ClusterRecord,
    NodeRecord,
    cluster_file,
    find_cluster,
    nodes_here,
    token_path,
)
from zray.node.launcher import check_socket_room, child_env, tail
from zray.node.sessions import (
    add_processes,
    claim,
    end_session,
    hand_over,
    new_session_dir,
    process_alive,
    reap_dead_sessions,
    run_id,
)
from zray.node.worker_pool import describe_exit, stop_process, wait_for_exit
from zray.objects.store import place_arena


@dataclass
class NodeOptions:
    head: bool
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free one
    peers: list[str] = field(default_factory=list)
    shards: int = 2
    resources: dict[str, float] = field(default_factory=dict)
    store_size: int = 0
    token_file: str = ""  # (a peer elsewhere; on this machine it is found)


def start_node(options: NodeOptions, config: Config) -> NodeRecord:
    """Start a node (and, for a head, the GCS) and return once it accepts work."""
    reap_dead_sessions(config.kept_sessions)
    port = _free_port(options.host) if options.port == 0 else _check_port(options)
    address = f"{options.host}:{port}"
    run = run_id()  # (the session's name and every process it starts carry it)
    session = new_session_dir(run)
    check_socket_room(session)
    arena = place_arena(f"{os.path.basename(session)}-{os.urandom(8).hex()}",
                        options.store_size, session)
    claim(session, arena.path)
    env = child_env(config, run)
    started: list[int] = []
    try:
        if options.head:
            tokens = _new_cluster_token(address)
            supervisor = _spawn(session, "gcs.log", env, [
                "-m", "zray.broker.supervisor", "--session", session, "--shards",
                str(options.shards), "--host", options.host, "--token-file", tokens])
            started.append(supervisor)
            where = _await_file(gcs_file(session), supervisor, config, "the GCS supervisor",
                                os.path.join(session, "gcs.log"))
            welcome_cluster, gcs, publish = address, where["gcs"], where["gcs_publish"]
        else:
            tokens = _token_file_for(options, session)
            welcome = _join(options.peers, tokens, config)
            welcome_cluster, gcs, publish = welcome.cluster, welcome.gcs, welcome.gcs_publish
        agent = _spawn(session, "agent.log", env, [
            "-m", "zray.node.boot", "--session", session, "--endpoint",
            f"ipc://{session}/agent.sock", "--gcs", ",".join(gcs), "--gcs-publish",
            ",".join(publish), "--store-path", arena.path, "--store-size",
            str(options.store_size), "--resources", json.dumps(options.resources),
            "--listen", address, "--token-file", tokens, "--cluster", welcome_cluster,
            "--ready-file", os.path.join(session, "node.json"), "--end-session",
            *(["--supervisor-pid", str(started[0])] if options.head else [])])
        started.append(agent)
        add_processes(session, started)
        ready = _await_file(os.path.join(session, "node.json"), agent, config,
                            "the node agent", os.path.join(session, "agent.log"))
        hand_over(session, started)
    except BaseException:  # nothing of it stays: its processes, arena and files go
        for pid in reversed(started):
            stop_process(pid, config.shutdown_timeout_s)
        if os.path.exists(arena.path):
            os.unlink(arena.path)
        if options.head:
            _unlink(token_path(address))
        end_session(session, config.kept_sessions)
        raise
    if options.head:
        ClusterRecord(address, gcs, publish, time.time()).save()
    node = NodeRecord(address, welcome_cluster, ready["node_id"], session,
                      f"ipc://{session}/agent.sock", options.head, NodeRecord.identity(agent),
                      [NodeRecord.identity(pid) for pid in started[:-1]])
    node.save()
    return node


def stop_nodes(config: Config, force: bool = False) -> list[NodeRecord]:
    """Stop every node this user started on this machine (``force``: SIGKILL, as a crash);
    the nodes stopped. The heads go last: the others send their last rows to its GCS."""
    nodes = [n for n in nodes_here() if n.alive()]
    for heads in (False, True):
        stop_node_group([n for n in nodes if n.head == heads], config, force)
    for node in nodes_here():  # (dead ones' records, and what they left)
        stop_node_group([node], config, force=True)
    return nodes


def stop_node_group(nodes: list[NodeRecord], config: Config, force: bool = False) -> None:
    """Stop these nodes together: SIGTERM (a clean stop: each agent stops its workers and
    a head's GCS after it, and ends its session) or SIGKILL; then forget them, and end
    the sessions of those killed."""
    signum = signal.SIGKILL if force else signal.SIGTERM
    for node in nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.agent[0], signum)
    wait_for_exit([n.agent[0] for n in nodes], config.shutdown_timeout_s * 2)
    for node in nodes:
        for pid, started in [node.agent, *node.others]:
            if process_alive(pid, started):
                stop_process(pid, config.shutdown_timeout_s, signum)
        node.forget()
        if node.head:
            for path in (token_path(node.address), cluster_file(node.address)):
                _unlink(path)
    reap_dead_sessions(config.kept_sessions)


def _join(peers: list[str], token_file: str, config: Config) -> p.Welcome:
    credentials = load_credentials(token_file, config.encrypt_loopback)
    errors = []
    for peer in peers:
        try:
            return hello(peer, credentials, config.join_timeout_s)
        except ZrayError as exc:
            errors.append(str(exc))
    raise ZrayError("could not join the cluster: " + "; ".join(errors))


def _token_file_for(options: NodeOptions, session: str) -> str:
    """The token of the cluster the peers belong to: --token-file, ZRAY_TOKEN (copied to
    a 0600 file in the node's session), or the record of the cluster on this machine."""
    if options.token_file:
        read_token(options.token_file)  # (checked now: a clear error, not a failed join)
        return options.token_file
    given = os.environ.get("ZRAY_TOKEN")
    if given:
        path = os.path.join(session, "cluster.token")
        write_token(path, given.strip())
        read_token(path)
        return path
    try:
        return find_cluster(options.peers[0]).token_path()
    except ConnectionError as exc:
        raise ZrayError(f"{exc}; for a cluster whose head is on another machine, pass "
                        "--token-file (a copy of the head's token) or set ZRAY_TOKEN") from exc


def _new_cluster_token(address: str) -> str:
    path = token_path(address)
    _unlink(path)  # (a stopped cluster's, at this address: each cluster has a new one)
    write_token(path, new_token())
    return path


def _spawn(session: str, log_name: str, env: dict[str, str], args: list[str]) -> int:
    with open(os.path.join(session, log_name), "ab") as log_file:
        proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # (not stopped by the terminal's ^C)
    return proc.pid


def _await_file(path: str, pid: int, config: Config, what: str, log_path: str) -> dict:
    """The JSON file ``path`` once the process writes it; an error naming the process and
    the end of its log if it exits first, or takes longer than the startup timeout."""
    deadline = time.monotonic() + config.startup_timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        ended = _exited(pid)
        if ended is not None:
            raise ZrayError(f"{what} (pid {pid}) {describe_exit(ended)} while starting; the "
                            f"end of its log {log_path}:\n{tail(log_path)}")
        time.sleep(0.02)
    raise ZrayError(f"{what} (pid {pid}) did not start within {config.startup_timeout_s:.0f}s; "
                    f"the end of its log {log_path}:\n{tail(log_path)}")


def _exited(pid: int) -> int | None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status) if done else None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port(options: NodeOptions) -> int:
    """The port asked for, if it is free now: else an error at once, naming it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((options.host, options.port))
        except OSError as exc:
            raise ZrayError(f"port {options.port} on {options.host} is in use ({exc.strerror}); "
                            "stop what uses it, or pass another --port (0: a free one)") from exc
    return options.port


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

