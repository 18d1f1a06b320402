"""What this machine knows of the clusters its user runs: files in ZRAY_HOME.

::

    ZRAY_HOME/clusters/HOST_PORT.json    a cluster (by its head's address): its GCS's
    ZRAY_HOME/clusters/HOST_PORT.token   endpoints; its token (0600), made by the head
    ZRAY_HOME/nodes/HOST_PORT.json       a node started here: its address, its cluster,
                                         its session, its processes (pid + start time)

``zray node start --peers``, ``init(address=...)`` and ``zray node stop`` read them: a node
on this machine is found by its address or its cluster's, and is alive while its agent
is (a pid is checked with its start time, so a reused pid is not taken for it). A node's
session directory and sockets may be invisible from here (a node in its own mount
namespace); the files here are all that is shared.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from zray.node.sessions import process_alive, process_identity, zray_home

if TYPE_CHECKING:
    from zray.broker.layout import GcsAddress

__all__ = ["ClusterRecord", "NodeRecord", "find_cluster", "local_node", "nodes_here",
           "token_path"]


@dataclass
class ClusterRecord:
    address: str  # the head's HOST:PORT
    gcs: list[str]  # the shards' ROUTER endpoints, in shard order
    gcs_publish: list[str]  # their PUB endpoints
    started: float

    def save(self) -> None:
        _write_json(cluster_file(self.address), asdict(self))

    def token_path(self) -> str:
        return token_path(self.address)

    def gcs_address(self, encrypt_loopback: bool = False) -> GcsAddress:
        """Where its GCS is, with the credentials of its token."""
        from zray.broker.layout import GcsAddress
        from zray.mesh.auth import load_credentials

        return GcsAddress(self.gcs, self.gcs_publish,
                          load_credentials(self.token_path(), encrypt_loopback))


@dataclass
class NodeRecord:
    address: str  # HOST:PORT of its mesh socket
    cluster: str  # its head's address
    node_id: str
    session: str
    endpoint: str  # its agent's ipc socket, for drivers on this machine
    head: bool
    agent: list[int]  # pid and start time
    others: list[list[int]] = field(default_factory=list)  # (the head's GCS supervisor)

    def save(self) -> None:
        _write_json(_path("nodes", self.address, ".json"), asdict(self))

    def alive(self) -> bool:
        return process_alive(*self.agent)

    def forget(self) -> None:
        try:
            os.unlink(_path("nodes", self.address, ".json"))
        except FileNotFoundError:
            pass

    @staticmethod
    def identity(pid: int) -> list[int]:
        return process_identity(pid)


def token_path(cluster_address: str) -> str:
    return _path("clusters", cluster_address, ".token")


def cluster_file(cluster_address: str) -> str:
    return _path("clusters", cluster_address, ".json")


def nodes_here() -> list[NodeRecord]:
    """Every node record of this user on this machine, alive or not."""
    records = []
    for path in glob.glob(os.path.join(zray_home(), "nodes", "*.json")):
        raw = _read_json(path)
        try:
            records.append(NodeRecord(**raw))
        except TypeError:
            continue  # (a damaged or older file: not ours to read)
    return records


def live_clusters() -> list[ClusterRecord]:
    """The clusters with a live node on this machine, newest first."""
    alive = {node.cluster for node in nodes_here() if node.alive()}
    records = []
    for path in glob.glob(os.path.join(zray_home(), "clusters", "*.json")):
        try:
            record = ClusterRecord(**_read_json(path))
        except TypeError:
            continue
        if record.address in alive:
            records.append(record)
    return sorted(records, key=lambda r: r.started, reverse=True)


def find_cluster(address: str) -> ClusterRecord:
    """The cluster that ``address`` names: ``"auto"`` (the newest with a live node here;
    named on stderr when several run), a head's address or any of its nodes'."""
    clusters = live_clusters()
    if address == "auto":
        if not clusters:
            raise ConnectionError(
                "no zray cluster runs on this machine (address='auto'); start one with "
                "`zray node start --head`, or call zray.init() without an address for a "
                "private one")
        if len(clusters) > 1:
            print(f"zray: {len(clusters)} clusters run here; joining the newest, "
                  f"{clusters[0].address} (pass its address to choose)", file=sys.stderr)
        return clusters[0]
    by_node = {n.address: n.cluster for n in nodes_here() if n.alive()}
    wanted = by_node.get(address, address)
    for record in clusters:
        if record.address == wanted:
            return record
    raise ConnectionError(f"no zray node runs on this machine at {address}; the running "
                          f"ones: {', '.join(sorted(by_node)) or 'none'}")


def local_node(cluster: ClusterRecord, address: str = "") -> NodeRecord:
    """A live node of ``cluster`` on this machine, for a driver to connect to: the one at
    ``address`` if it runs here, else the head's, if it runs here."""
    nodes = [n for n in nodes_here() if n.cluster == cluster.address and n.alive()]
    if not nodes:
        raise ConnectionError(f"no node of the cluster at {cluster.address} runs on this "
                              "machine; start one with `zray node start --peers "
                              f"{cluster.address}`")
    return min(nodes, key=lambda n: (n.address != address, not n.head))


def _path(kind: str, address: str, suffix: str) -> str:
    folder = os.path.join(zray_home(), kind)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, address.replace(":", "_").replace("/", "_") + suffix)


def _write_json(path: str, value: object) -> None:
    with os.fdopen(os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                   "w") as f:
        json.dump(value, f)
    os.replace(path + ".new", path)


def _read_json(path: str) -> dict:
    """The file's object; {} for one gone, damaged or not ours to read."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
