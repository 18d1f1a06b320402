"""``zray status``: a running cluster's node, as its agent sees it now.

The command registers with the agent as an ``observer`` (a client that only asks; it
starts no job) on the session's socket, asks for the node's status, and leaves. It also
names the GCS shards the supervisor gave up on. Clusters of several nodes grow this.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import zmq

from zray import protocol as p
from zray.broker.reader import given_up
from zray.exceptions import ZrayError
from zray.ids import new_worker_id


def node_status(session: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The agent's answer to "status", asked over the session's socket."""
    sock_path = os.path.join(session, "agent.sock")
    if not os.path.exists(sock_path):
        raise ZrayError(f"no running cluster in {session} (its agent socket is gone)")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    client_id = new_worker_id()
    sock.setsockopt(zmq.IDENTITY, client_id + b"r")
    sock.setsockopt(zmq.LINGER, 500)
    try:
        sock.connect(f"ipc://{sock_path}")
        sock.send_multipart(p.encode(p.Register(client_id, os.getpid(), "observer", b"",
                                                False, "")))
        _answer(sock, p.Registered, timeout_s)
        sock.send_multipart(p.encode(p.QueryAgent(1, "status", {})))
        body = json.loads(_answer(sock, p.AgentReply, timeout_s).body_json)
        sock.send_multipart(p.encode(p.Disconnect(False)))
    finally:
        sock.close()
        context.term()
    if "error" in body:
        raise ZrayError(f"the agent did not answer the status query: {body['error']}")
    body["given_up_shards"] = given_up(session)
    return body


def _answer(sock: zmq.Socket, kind: type[p.Message], timeout_s: float) -> Any:
    while sock.poll(int(timeout_s * 1000)):
        msg = p.decode(sock.recv_multipart())
        if isinstance(msg, kind):
            return msg
        if isinstance(msg, p.Rejected):
            raise ZrayError(f"the agent refused: {msg.reason}")
    raise ZrayError(f"the agent did not answer within {timeout_s:.0f}s")


def print_status(status: dict[str, Any], session: str) -> None:
    used = {name: status["resources"]["total"][name] - status["resources"]["available"][name]
            for name in status["resources"]["total"]}
    resources = ", ".join(f"{name} {used[name]:g}/{total:g}"
                          for name, total in status["resources"]["total"].items())
    store, workers, tasks = status["store"], status["workers"], status["tasks"]
    print(f"node {status['node_id'][:8]}  (agent pid {status['pid']}, session {session})")
    print(f"  resources used: {resources}")
    print(f"  object store:   {store['bytes_in_use'] / 2**20:.1f} MiB of "
          f"{store['capacity'] / 2**20:.0f} MiB, {store['objects']} objects")
    print(f"  workers:        {workers['processes']} processes, {workers['busy']} busy, "
          f"{workers['actors']} actors")
    print(f"  tasks:          {tasks['running']} running, {tasks['queued']} queued, "
          f"{tasks['waiting_for_arguments']} waiting for arguments")
    if tasks["infeasible_shapes"]:
        print(f"  ! {tasks['infeasible_shapes']} kinds of task ask for more than this node has: "
              "they stay pending (see the warning their driver printed)")
    links = status["gcs"]
    behind = sum(link["queued"] for link in links)
    print(f"  GCS:            {len(links)} shards, {behind} rows not yet sent")
    for reason in status["given_up_shards"]:
        print(f"  ! {reason}")


def run(session: str, as_json: bool) -> int:
    try:
        status = node_status(session)
    except ZrayError as exc:
        print(f"zray status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status))
    else:
        print_status(status, session)
    return 0
