"""The GCS's verdict on nodes (zray/broker/liveness.py), on a real Tables, by a given clock."""

from __future__ import annotations

import json

import pytest

from zray.broker.liveness import Liveness
from zray.broker.tables import Row, Tables

pytestmark = pytest.mark.timeout(10)


def row(key: bytes, state: str, address: str = "127.0.0.2:1") -> Row:
    return ("nodes", key, json.dumps({"state": state, "address": address}), None)


def test_silent_nodes_die_once_and_stay_dead() -> None:
    tables, live = Tables(), Liveness(3.0)
    rows = [row(b"a", "ALIVE"), row(b"b", "ALIVE"), row(b"p", "ALIVE", address="")]
    tables.apply(rows, 0.0)
    live.stored(rows, now=100.0)
    live.stored([row(b"b", "ALIVE")], now=102.0)
    assert live.expired(tables, now=102.5) == []
    (dead,) = live.expired(tables, now=103.5)  # (b spoke at 102; p, private, is not judged)
    assert dead[1] == b"a" and json.loads(dead[2])["state"] == "DEAD"
    tables.apply([dead], 103.5)
    assert live.expired(tables, now=104.0) == []  # (once)
    assert live.admit([row(b"a", "ALIVE"), row(b"b", "ALIVE")], tables, b"b") == [
        row(b"b", "ALIVE")]  # (no row brings it back)
    assert live.admit([row(b"b", "ALIVE")], tables, b"a") == []  # (nor any from it)


def test_a_death_not_stored_is_declared_again_and_no_other() -> None:
    tables, live = Tables(), Liveness(3.0)
    rows = [row(b"a", "ALIVE"), row(b"b", "ALIVE")]
    tables.apply(rows, 0.0)
    live.stored(rows[:1], now=100.0)
    live.stored(rows[1:], now=103.0)
    dead = live.expired(tables, now=103.5)
    assert [r[1] for r in dead] == [b"a"]
    live.not_declared(dead, now=104.0)
    assert [r[1] for r in live.expired(tables, now=104.5)] == [b"a"]  # (b: not yet)
