"""What a node knows of the others: the GCS's nodes table, followed (the Clone pattern).

::

    agent --record_node (its load, at most every load_report_ms)--> GCS shard of its key
    GCS shards --PUB "nodes"--> Follower (in the agent's loop) --> Membership.nodes

Each node's row carries its address, total and available resources; every agent keeps a
live copy and chooses peers by it (zray/node/placement.py). No I/O here but the follower's
sockets, which the agent polls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zmq

from zray.broker.follow import Follower
from zray.broker.layout import GcsAddress


@dataclass
class NodeInfo:
    node_id: bytes
    address: str
    total: dict[str, float]
    available: dict[str, float]
    alive: bool


class Membership:
    def __init__(self, context: zmq.Context, gcs: GcsAddress, node_id: bytes) -> None:
        self.node_id = node_id
        self.follower = Follower(gcs, "nodes", context=context)
        self.nodes: dict[bytes, NodeInfo] = {}

    @property
    def sockets(self) -> list[zmq.Socket]:
        return self.follower.sockets

    def on_readable(self, sock: zmq.Socket) -> None:
        snapshots = self.follower.snapshots
        if self.follower.on_readable(sock) or self.follower.snapshots != snapshots:
            self.nodes = {node.node_id: node for node in
                          (_node(fields) for fields in self.follower.rows().values())
                          if node is not None}

    def tick(self) -> None:
        self.follower.tick()

    @property
    def fenced(self) -> bool:
        """Whether the GCS declared this node dead (it was silent too long): it must stop,
        whatever it is doing (zray/broker/liveness.py)."""
        own = self.nodes.get(self.node_id)
        return own is not None and not own.alive

    def peers(self) -> list[NodeInfo]:
        """The other nodes alive, with an address to reach them at."""
        return [n for n in self.nodes.values()
                if n.alive and n.address and n.node_id != self.node_id]

    def totals(self, own: dict[str, float], which: str = "total") -> dict[str, float]:
        """The cluster's resources (``which``: "total" or "available"): ``own`` (this
        node's) and every live peer's."""
        totals = dict(own)
        for node in self.peers():
            for name, amount in getattr(node, which).items():
                totals[name] = totals.get(name, 0.0) + amount
        return totals

    def close(self) -> None:
        self.follower.close()


def _node(fields: dict[str, Any]) -> NodeInfo | None:
    try:
        return NodeInfo(bytes.fromhex(fields["node_id"]), str(fields.get("address", "")),
                        {k: float(v) for k, v in fields.get("resources", {}).items()},
                        {k: float(v) for k, v in fields.get("available", {}).items()},
                        fields.get("state") == "ALIVE")
    except (KeyError, ValueError, TypeError, AttributeError):
        return None  # (a row of another version, or damaged: not a peer to use)
