"""Which nodes are alive: the GCS declares a node dead, once, for everyone.

Each node's agent records its row in the ``nodes`` table at least every
``node_heartbeat_s``. The shard that holds a node's row notes when it last stored it (by
its own clock: nodes' clocks may differ); a node silent for ``node_timeout_s`` gets a DEAD
row (``died``: when, ``death``: why), published like any row, so every follower (each
agent's Membership, ``zray status``, ``inspect nodes``) sees the same verdict. The verdict
is final: every row a dead node sends later is dropped, and so is any later row about it
(fencing: a node that was stopped, not dead, learns it from its own row and exits; a
replacement gets a new id).
A shard that restarts gives every live node a whole timeout again. No I/O.
"""

from __future__ import annotations

import json
import time

from zray.broker.tables import Row, Tables


class Liveness:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._seen: dict[bytes, float] = {}  # node -> when its row was last stored (monotonic)

    def admit(self, rows: list[Row], tables: Tables, sender: bytes) -> list[Row]:
        """``rows`` from node ``sender``: none if it is dead, else without rows about
        nodes already dead."""
        if _is_dead(tables, sender):
            return []
        return [row for row in rows if not (row[0] == "nodes" and _is_dead(tables, row[1]))]

    def stored(self, rows: list[Row], now: float) -> None:
        for table, key, fields, _ in rows:
            if table == "nodes":
                if fields is not None and _heartbeating(fields):
                    self._seen[key] = now
                else:
                    self._seen.pop(key, None)

    def replayed(self, tables: Tables, now: float) -> None:
        """After a restart: every node the table says is alive has a whole timeout."""
        for key, fields, _, _ in tables.rows("nodes"):
            if _heartbeating(fields):
                self._seen[key] = now

    def expired(self, tables: Tables, now: float) -> list[Row]:
        """DEAD rows for the nodes silent too long."""
        dead: list[Row] = []
        for key, seen in list(self._seen.items()):
            if now - seen < self.timeout_s:
                continue
            del self._seen[key]
            row = tables.get("nodes", key)
            if row is None:
                continue
            fields = json.loads(row[1])
            fields.update(state="DEAD", died=time.time(), death=(
                f"no heartbeat for {now - seen:.1f}s (node_timeout_s={self.timeout_s:g})"))
            dead.append(("nodes", key, json.dumps(fields), row[2]))
        return dead

    def not_declared(self, rows: list[Row], now: float) -> None:
        """Their DEAD rows could not be stored: declared again at the next check."""
        for _, key, _, _ in rows:
            self._seen[key] = now - self.timeout_s


def _heartbeating(fields_json: str) -> bool:
    """An ALIVE node of a cluster (one with an address: a private cluster's single
    node records no heartbeats, and lives and dies with its driver)."""
    try:
        fields = json.loads(fields_json)
        return fields.get("state") == "ALIVE" and bool(fields.get("address"))
    except (ValueError, AttributeError):
        return False


def _state(fields_json: str) -> str:
    try:
        return str(json.loads(fields_json).get("state", ""))
    except (ValueError, AttributeError):
        return ""


def _is_dead(tables: Tables, key: bytes) -> bool:
    row = tables.get("nodes", key)
    return row is not None and _state(row[1]) == "DEAD"
