"""Where a lease request that cannot be granted here goes: bottom-up scheduling.

A request is granted on its submitter's node first; it spills to a peer only when this
node cannot grant it now (every CPU in use) or ever (a resource it lacks), and a peer can:
the one with the most room by its last published load, less the requests already sent to
it and not answered. One that no node could ever run stays here, and its owner is told.
No I/O: the agent asks, and acts on the answer.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from zray.node.membership import NodeInfo

# Where a request with a strategy goes: ("here", None), ("peer", node), ("refuse", why).
Placement = tuple[str, Any]

_EPSILON = 1e-9


def fits(demand: dict[str, float], have: dict[str, float]) -> bool:
    return all(amount <= have.get(name, 0.0) + _EPSILON
               for name, amount in demand.items() if amount > 0)


def choose_peer(demand: dict[str, float], here_now: bool, here_ever: bool,
                peers: list[NodeInfo], asked: Counter[bytes]) -> NodeInfo | None:
    """The peer to send a lease request to, or None to keep it here. ``here_now``: this
    node could grant it at once; ``here_ever``: its resources could ever fit here;
    ``asked``: requests sent to each peer and not answered yet."""
    if here_now:
        return None
    able = [node for node in peers if fits(demand, node.total)]
    roomy = [node for node in able if fits(demand, _room(node, demand, asked))]
    if roomy:
        return max(roomy, key=lambda node: _room(node, demand, asked).get("CPU", 0.0))
    if not here_ever and able:  # it waits somewhere it can run: the least asked of
        return min(able, key=lambda node: asked[node.node_id])
    return None


def _room(node: NodeInfo, demand: dict[str, float], asked: Counter[bytes]) -> dict[str, float]:
    """What the node has free, less what our unanswered requests to it would take."""
    pending = asked[node.node_id]
    return {name: amount - pending * demand.get(name, 0.0)
            for name, amount in node.available.items()}


def place(strategy: dict[str, Any], demand: dict[str, float], here: bytes,
          here_total: dict[str, float], nodes: dict[bytes, NodeInfo], turn: int) -> Placement:
    """Where a lease request goes by its scheduling strategy (zray.util.
    scheduling_strategies): ``nodes``, every node the cluster has had (this one too);
    ``turn`` counts SPREAD's requests. Without a strategy: here (spilling comes later)."""
    if "node" in strategy:
        target = bytes.fromhex(strategy["node"])
        known = nodes.get(target)
        if target == here:
            return ("here", None)
        if known is not None and known.alive and known.address:
            return ("peer", known)
        if strategy.get("soft"):
            return ("here", None)
        state = "dead" if known is not None else "not a node of this cluster"
        return ("refuse", f"its NodeAffinitySchedulingStrategy names node "
                          f"{strategy['node'][:16]}, which is {state} (soft=True would run it "
                          "elsewhere)")
    if strategy.get("spread"):
        peers = sorted((n for n in nodes.values() if n.alive and n.address
                        and n.node_id != here and fits(demand, n.total)),
                       key=lambda n: n.node_id)
        able: list[NodeInfo | None] = [None] if fits(demand, here_total) else []
        able += peers
        if not able:
            return ("here", None)  # (no node fits it: it waits here, and its owner is told)
        chosen = able[turn % len(able)]
        return ("here", None) if chosen is None else ("peer", chosen)
    return ("here", None)
