"""Where lease requests and actors go (zray/node/placement.py): pure decisions, no cluster."""

from __future__ import annotations

from collections import Counter

from zray.node.membership import NodeInfo
from zray.node.placement import choose_peer, place

HERE = b"h" * 8


def node(name: bytes, total: dict[str, float], free: dict[str, float] | None = None,
         alive: bool = True) -> NodeInfo:
    return NodeInfo(name * 8, f"127.0.0.{name[0] % 200}:1", total,
                    dict(total) if free is None else free, alive)


def test_a_request_stays_while_it_fits_here_else_goes_to_the_roomiest_peer() -> None:
    a, b = node(b"a", {"CPU": 4}, {"CPU": 1}), node(b"b", {"CPU": 4}, {"CPU": 3})
    assert choose_peer({"CPU": 1}, True, True, [a, b], Counter()) is None
    assert choose_peer({"CPU": 1}, False, True, [a, b], Counter()) is b
    # requests already sent count against a peer's room
    assert choose_peer({"CPU": 1}, False, True, [a, b], Counter({b.node_id: 3})) is a
    assert choose_peer({"CPU": 1}, False, True, [a, b],
                       Counter({a.node_id: 1, b.node_id: 3})) is None


def test_what_cannot_run_here_waits_on_a_peer_that_could() -> None:
    busy = node(b"g", {"CPU": 1, "GPU": 1}, {"CPU": 0, "GPU": 0})
    assert choose_peer({"GPU": 1}, False, False, [busy], Counter()) is busy
    assert choose_peer({"TPU": 1}, False, False, [busy], Counter()) is None


def test_strategies_place_by_node_and_in_turn() -> None:
    a, b = node(b"a", {"CPU": 1}), node(b"b", {"CPU": 1})
    dead = node(b"d", {"CPU": 1}, alive=False)
    nodes = {n.node_id: n for n in (a, b, dead)}
    assert place({"node": a.node_id.hex(), "soft": False}, {"CPU": 1}, HERE, {"CPU": 1},
                 nodes, 0) == ("peer", a)
    assert place({"node": HERE.hex(), "soft": False}, {}, HERE, {}, nodes, 0) == ("here", None)
    where, why = place({"node": dead.node_id.hex(), "soft": False}, {}, HERE, {}, nodes, 0)
    assert where == "refuse" and "dead" in why
    where, why = place({"node": "ff" * 8, "soft": False}, {}, HERE, {}, nodes, 0)
    assert where == "refuse" and "not a node" in why
    assert place({"node": "ff" * 8, "soft": True}, {}, HERE, {}, nodes, 0) == ("here", None)
    turns = [place({"spread": True}, {"CPU": 1}, HERE, {"CPU": 1}, nodes, turn)
             for turn in range(6)]
    assert [where for where, _ in turns] == ["here", "peer", "peer"] * 2
    assert {what.node_id for where, what in turns if where == "peer"} == {a.node_id, b.node_id}
