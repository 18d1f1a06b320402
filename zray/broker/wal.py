"""The write-ahead log of one broker shard: an SQLite file of rows in append order.

The shard appends each batch in one transaction before it acknowledges the batch, so an
acknowledged row survives the shard's death and comes back on replay. SQLite runs in WAL
journal mode with ``synchronous=NORMAL``: a commit survives the process being killed (the
case we guard against), though not necessarily a power cut.

Compaction replaces the whole log by a snapshot of the live rows in one transaction, so a
reader sees either the old log or the new one, never a mix.

Every sqlite3.Error is turned into a ZrayError that names the file, with the cause chained.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
from collections.abc import Iterable, Iterator

from zray.broker.tables import Row, Tables
from zray.exceptions import ZrayError

__all__ = ["WriteAheadLog", "read_tables"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    key BLOB NOT NULL,
    fields TEXT,
    blob BLOB
)
"""
_INSERT = "INSERT INTO log (tbl, key, fields, blob) VALUES (?, ?, ?, ?)"
_SELECT = "SELECT tbl, key, fields, blob FROM log ORDER BY id"


@contextlib.contextmanager
def _converted(path: str, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise ZrayError(
            f"write-ahead log {path}: {action} failed: {exc}; check that the disk has room, "
            "that the file is writable and that no other broker shard uses it"
        ) from exc


class WriteAheadLog:
    """An append-only log of table rows, replayed at start and compacted when long."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        with _converted(self.path, "open"):
            # Autocommit mode: every transaction below is an explicit BEGIN ... COMMIT.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._rows: int = self._db.execute("SELECT COUNT(*) FROM log").fetchone()[0]

    def append(self, rows: Iterable[Row]) -> None:
        """Append rows in one transaction, committed when this returns."""
        rows = list(rows)
        with _converted(self.path, "append"), self._transaction():
            self._db.executemany(_INSERT, rows)
        self._rows += len(rows)

    def replay(self) -> Iterator[Row]:
        """Every row, in append order."""
        with _converted(self.path, "replay"):
            yield from self._db.execute(_SELECT)

    def row_count(self) -> int:
        return self._rows

    def compact(self, rows: Iterable[Row]) -> None:
        """Replace the whole log by ``rows``, atomically."""
        rows = list(rows)
        with _converted(self.path, "compact"):
            with self._transaction():
                self._db.execute("DELETE FROM log")
                self._db.executemany(_INSERT, rows)
            # Fold the big transaction into the main file so the -wal file shrinks again.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._rows = len(rows)

    def close(self) -> None:
        with _converted(self.path, "close"):
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite has already rolled back after some errors
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def read_tables(path: str | os.PathLike[str], max_task_history: int) -> Tables:
    """The tables a shard's log holds, read without writing: post-mortem ``zray inspect``."""
    uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro"
    tables = Tables(max_task_history=max_task_history)
    with _converted(str(path), "read-only open"):
        db = sqlite3.connect(uri, uri=True)
        try:
            tables.apply(db.execute(_SELECT))
        finally:
            db.close()
    return tables
