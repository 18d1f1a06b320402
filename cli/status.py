"""``zray status``: a running cluster's nodes, as their agents see them now.

For a cluster started with ``zray node start``: every node the GCS's nodes table lists,
each live one asked over the mesh (with the cluster token's credentials), with its
message counts by type. For a private cluster: the command registers with its agent as an
``observer`` (a client that only asks; it starts no job) on the session's socket. Both name
the GCS shards the supervisor gave up on.
"""

from __future__ import annotations

import json
import os
import sys
import time
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
    print(f"node {status['node_id'][:8]}  (agent pid {status['pid']}, {session})")
    print(f"  resources used: {resources}")
    print(f"  object store:   {store['bytes_in_use'] / 2**20:.1f} MiB of "
          f"{store['capacity'] / 2**20:.0f} MiB, {store['objects']} objects")
    print(f"  spilled:        {store.get('spilled_bytes', 0) / 2**20:.1f} MiB in "
          f"{store.get('spilled_objects', 0)} objects on disk ({store.get('spill_dir')}); "
          f"{store.get('objects_restored', 0)} read back")
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
    for reason in status.get("given_up_shards", []):
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
        print_status(status, f"session {session}")
    return 0


def cluster_status(address: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Every node of the cluster (``address``: "auto" or a node's), from the GCS's nodes
    table; each live one asked over the mesh how it is now."""
    from zray.broker.link import query
    from zray.config import Config
    from zray.mesh.records import find_cluster, nodes_here

    cluster = find_cluster(address)
    gcs = cluster.gcs_address(Config.from_env().encrypt_loopback)
    credentials = gcs.credentials
    rows = query(gcs.shards, "nodes", timeout_s=timeout_s, credentials=credentials).rows
    nodes = []
    for _, fields_json, _, _ in rows:
        row = json.loads(fields_json)
        if row.get("state") == "ALIVE" and row.get("address"):
            try:
                row = _ask_node(row["address"], credentials, timeout_s)
            except ZrayError as exc:
                row = {**row, "state": "NOT ANSWERING", "error": str(exc)}
        nodes.append(row)
    heads = [n.session for n in nodes_here() if n.cluster == cluster.address and n.head]
    return {"cluster": cluster.address, "nodes": nodes,
            "given_up_shards": given_up(heads[0]) if heads else []}


def _ask_node(address: str, credentials: Any, timeout_s: float) -> dict[str, Any]:
    from zray.mesh.auth import secure_dealer

    context = zmq.Context()
    sock = secure_dealer(context, f"tcp://{address}", credentials)
    try:
        sock.send_multipart(p.encode(p.QueryAgent(1, "status", {})))
        return dict(json.loads(_answer(sock, p.AgentReply, timeout_s).body_json))
    finally:
        sock.close()
        context.term()


def print_cluster(status: dict[str, Any]) -> None:
    nodes = status["nodes"]
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    print(f"cluster {status['cluster']}: {len(alive)} nodes alive, "
          f"{len(nodes) - len(alive)} gone")
    for node in nodes:
        if node.get("state") != "ALIVE" or "store" not in node:
            died = node.get("died") or node.get("end_time")
            when = (" since " + time.strftime("%H:%M:%S", time.localtime(float(died)))
                    if isinstance(died, (int, float)) else "")
            why = node.get("error") or node.get("death") or ""
            print(f"node {node.get('node_id', '?')[:8]}  {node.get('address', '')}  "
                  f"{node.get('state')}{when}  {why}".rstrip())
            continue
        print_status(node, f"at {node['address']}")
        messages = ", ".join(f"{name} {count}" for name, count in sorted(
            node["messages"].items(), key=lambda kv: -kv[1])[:8])
        print(f"  messages:       {messages or 'none yet'}")
        if node["relayed"]:
            print("  relayed:        " + ", ".join(f"{k} {v}" for k, v in node["relayed"].items()))
        moved = node.get("transfers") or {}
        if moved.get("pulls_started") or moved.get("objects_sent"):
            print(f"  objects moved:  {moved.get('bytes_received', 0) / 2**20:,.1f} MiB in "
                  f"({moved.get('objects_received', 0)} objects), "
                  f"{moved.get('bytes_sent', 0) / 2**20:,.1f} MiB out "
                  f"({moved.get('objects_sent', 0)}), {moved.get('pulling', 0)} pulling")
    for reason in status["given_up_shards"]:
        print(f"! {reason}")


def run_cluster(address: str, as_json: bool) -> int:
    try:
        status = cluster_status(address)
    except (ZrayError, ConnectionError) as exc:
        print(f"zray status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status))
    else:
        print_cluster(status)
    return 0
