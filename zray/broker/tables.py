"""The GCS tables of one broker shard: partitioned in-memory dicts, no I/O.

A row is ``(table, key, fields_json, blob)``; ``fields_json`` None deletes the key. The
shard appends every batch of rows to its write-ahead log and then applies it here, so the
tables are always what replaying the log gives.

A key belongs to shard ``shard_of(key, K)`` = ``crc32(key) % K`` of a GCS of K shards (the
same in every process and every run): its writers and readers go to that shard only.
Within a shard each table is split into ``partitions`` dicts by the same hash. Every live
row carries an insertion number and the time (the shard's clock) its key was first
inserted: the number gives ``rows`` and ``snapshot`` their oldest-first order across
partitions, the time merges the rows of several shards (``merge_newest``). A dict keeps a
re-assigned key in place, so an update keeps its position and a delete followed by an
insert moves the key to the end. The "tasks" table is bounded: past ``max_task_history``
rows, the oldest-inserted task is dropped, and counted (``dropped_tasks``).
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["TABLES", "Row", "StoredRow", "Tables", "check_row", "merge_newest", "shard_of"]

TABLES = ("nodes", "jobs", "functions", "tasks", "objects", "actors", "placement_groups")
BOUNDED_TABLE = "tasks"

Row = tuple[str, bytes, str | None, bytes | None]  # (table, key, fields_json, blob)
StoredRow = tuple[bytes, str, bytes | None, float]  # (key, fields_json, blob, first inserted)
_Entry = tuple[int, float, str, bytes | None]  # (insertion number, time, fields_json, blob)
_Partition = dict[bytes, _Entry]


def shard_of(key: bytes, shards: int) -> int:
    """The shard of a GCS of ``shards`` shards that holds ``key`` (a node, job, function,
    task, object or actor id)."""
    return zlib.crc32(key) % shards


def merge_newest(replies: Iterable[list[StoredRow]], limit: int | None) -> list[StoredRow]:
    """Rows of one table from several shards, oldest first by the time each key was first
    inserted; with ``limit``, the newest ``limit`` of them overall."""
    merged = sorted((row for rows in replies for row in rows), key=lambda row: row[3])
    return merged[-limit:] if limit else merged


def check_row(row: Any) -> Row:
    """``row`` as a Row; raises ValueError saying what is wrong (rows come off the wire)."""
    if not isinstance(row, tuple | list) or len(row) != 4:
        raise ValueError(f"a row is (table, key, fields_json, blob), got {type(row).__name__}")
    table, key, fields, blob = row
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    if not isinstance(key, bytes):
        raise ValueError(f"{table}: key must be bytes, got {type(key).__name__}")
    if fields is not None and not isinstance(fields, str):
        raise ValueError(f"{table}: fields_json must be str or None, got {type(fields).__name__}")
    if fields is not None:
        fields.encode()  # UnicodeEncodeError (a ValueError) for text SQLite cannot store
    if blob is not None and not isinstance(blob, bytes):
        raise ValueError(f"{table}: blob must be bytes or None, got {type(blob).__name__}")
    return (table, key, fields, blob)


class Tables:
    """Every table of one shard; ``apply`` rows in, ``rows``/``snapshot`` out."""

    def __init__(self, partitions: int = 8, max_task_history: int = 10_000) -> None:
        if partitions < 1 or max_task_history < 1:
            raise ValueError("partitions and max_task_history must be at least 1")
        self.partitions = partitions
        self.max_task_history = max_task_history
        self._tables = {name: [_Partition() for _ in range(partitions)] for name in TABLES}
        self._counts = dict.fromkeys(TABLES, 0)
        self._inserted = 0  # the next insertion number
        self.dropped_tasks = 0  # task rows dropped by the history bound
        self.bad_rows = 0  # rows of a replayed log that did not check (skipped)

    def apply(self, rows: Iterable[Row], at: float) -> None:
        """Upsert or delete each row, in order, at time ``at``; an unknown table raises
        ValueError."""
        for table, key, fields, blob in rows:
            if fields is None:
                self._delete(table, key)
            else:
                self._upsert(table, key, fields, blob, at)

    def rows(self, table: str, limit: int | None = None) -> list[StoredRow]:
        """The table's rows oldest first; with ``limit``, only the newest ``limit`` of them."""
        parts = self._partitions_of(table)
        if limit is None:
            merged = heapq.merge(*(p.items() for p in parts), key=_insertion)
            return [(key, fields, blob, at) for key, (_, at, fields, blob) in merged]
        # Walk newest first so a small limit on a big table stays cheap.
        newest = heapq.merge(*(reversed(p.items()) for p in parts), key=_insertion, reverse=True)
        picked = [(key, fields, blob, at)
                  for key, (_, at, fields, blob) in itertools.islice(newest, limit)]
        picked.reverse()
        return picked

    def get(self, table: str, key: bytes) -> StoredRow | None:
        entry = self._partition(table, key).get(key)
        return None if entry is None else (key, entry[2], entry[3], entry[1])

    def snapshot(self) -> Iterator[tuple[Row, float]]:
        """Every live row as an upsert with its time, each table oldest first: what
        compaction writes."""
        for table in TABLES:
            for key, fields, blob, at in self.rows(table):
                yield (table, key, fields, blob), at

    def count(self, table: str) -> int:
        self._partitions_of(table)
        return self._counts[table]

    def __len__(self) -> int:
        return sum(self._counts.values())

    def _upsert(self, table: str, key: bytes, fields: str, blob: bytes | None,
                at: float) -> None:
        part = self._partition(table, key)
        old = part.get(key)
        if old is not None:
            part[key] = (old[0], old[1], fields, blob)
            return
        part[key] = (self._inserted, at, fields, blob)
        self._inserted += 1
        self._counts[table] += 1
        if table == BOUNDED_TABLE and self._counts[table] > self.max_task_history:
            self._drop_oldest(table)

    def _delete(self, table: str, key: bytes) -> None:
        if self._partition(table, key).pop(key, None) is not None:
            self._counts[table] -= 1

    def _drop_oldest(self, table: str) -> None:
        heads = [(next(iter(p.values()))[0], p) for p in self._tables[table] if p]
        _, oldest = min(heads, key=lambda head: head[0])
        del oldest[next(iter(oldest))]
        self._counts[table] -= 1
        self.dropped_tasks += 1

    def _partition(self, table: str, key: bytes) -> _Partition:
        return self._partitions_of(table)[zlib.crc32(key) % self.partitions]

    def _partitions_of(self, table: str) -> list[_Partition]:
        try:
            return self._tables[table]
        except KeyError:
            raise ValueError(
                f"unknown table {table!r}; the tables are {', '.join(TABLES)}"
            ) from None


def _insertion(item: tuple[bytes, _Entry]) -> int:
    return item[1][0]

