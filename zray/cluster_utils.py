"""Ray's ``cluster_utils.Cluster``: several real nodes on this machine, for tests and demos.

Each node is started as ``zray node start`` starts one (zray/node/start.py): its own
processes, session directory, store, and loopback address (the head on 127.0.0.1, the
others on 127.0.0.2, 127.0.0.3, ...), all on free ports. ``remove_node(node,
allow_graceful=False)`` kills its agent as a crash would.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from zray.config import Config
from zray.exceptions import ZrayError
from zray.mesh.records import NodeRecord
from zray.node.resources import node_resources
from zray.node.start import NodeOptions, start_node, stop_node_group

__all__ = ["Cluster", "ClusterNode"]

_DEFAULT_STORE = 150 * 2**20  # Ray's cluster_utils nodes get a small store too


class ClusterNode:
    """A node of a Cluster: ``node_id`` (hex), ``address`` (HOST:PORT)."""

    def __init__(self, record: NodeRecord) -> None:
        self.record = record
        self.node_id = record.node_id
        self.address = record.address

    def __repr__(self) -> str:
        return f"ClusterNode({self.node_id[:8]} at {self.address})"


class Cluster:
    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict[str, Any] | None = None, shards: int = 1) -> None:
        """``shards``: the head's GCS shards (zray's; one keeps a test cluster small)."""
        self.config = Config.from_env()
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self._shards = shards
        self._hosts = (f"127.0.0.{i}" for i in itertools.count(2))
        self._connected = False
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        elif connect:
            raise ValueError("connect=True needs initialize_head=True (a head to connect to)")

    @property
    def address(self) -> str:
        if self.head_node is None:
            raise ZrayError("this Cluster has no head node yet; add_node() starts one")
        return self.head_node.address

    def add_node(self, wait: bool = True, num_cpus: int = 1, num_gpus: int = 0,
                 resources: dict[str, float] | None = None,
                 object_store_memory: int = _DEFAULT_STORE, **ray_kwargs: Any) -> ClusterNode:
        """Start a node: the head if there is none yet, else one that joins it. It
        accepts work when this returns (``wait`` is kept for Ray's signature)."""
        head = self.head_node is None
        options = NodeOptions(
            head=head, host="127.0.0.1" if head else next(self._hosts), port=0,
            peers=[] if head else [self.address], shards=self._shards,
            resources=node_resources(num_cpus, num_gpus, resources, "Cluster.add_node",
                                     object_store_memory),
            store_size=object_store_memory)
        node = ClusterNode(start_node(options, self.config))
        if head:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop the node (``allow_graceful=False``: SIGKILL its agent, as a crash)."""
        stop_node_group([node.record], self.config, force=not allow_graceful)
        if node is self.head_node:
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)

    def list_all_nodes(self) -> list[ClusterNode]:
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Return once every node added is alive in the GCS; TimeoutError if not."""
        from zray.broker.link import query
        from zray.mesh.records import find_cluster

        gcs = find_cluster(self.address).gcs_address(self.config.encrypt_loopback)
        wanted = {node.node_id for node in self.list_all_nodes()}
        deadline = time.monotonic() + timeout
        while True:
            rows = query(gcs.shards, "nodes", timeout_s=2.0, credentials=gcs.credentials).rows
            alive = {key.hex() for key, fields, _, _ in rows
                     if json.loads(fields).get("state") == "ALIVE"}
            if wanted <= alive:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(wanted - alive)} did not come up within "
                                   f"{timeout}s")
            time.sleep(0.05)

    def connect(self, namespace: str | None = None) -> None:
        import zray

        zray.init(address=self.address, namespace=namespace)
        self._connected = True

    def shutdown(self) -> None:
        """Disconnect this driver if it connected, and stop every node (the head last)."""
        import zray

        if self._connected:
            zray.shutdown()
            self._connected = False
        stop_node_group([n.record for n in self.worker_nodes], self.config)
        if self.head_node is not None:
            stop_node_group([self.head_node.record], self.config)
        self.head_node, self.worker_nodes = None, []
