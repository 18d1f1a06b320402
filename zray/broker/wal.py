"""The write-ahead log of one broker shard: an SQLite file of rows in append order.

The shard appends the batches of each pass of its loop in one transaction (a group commit)
before it acknowledges them, so an acknowledged row survives the shard's death and comes
back on replay. SQLite runs in WAL
journal mode with ``synchronous=NORMAL``: a commit survives the process being killed (the
case we guard against), though not necessarily a power cut.

Compaction replaces the whole log by a snapshot of the live rows in one transaction, so a
reader sees either the old log or the new one, never a mix.

The file carries its schema version (``PRAGMA user_version``) and is checked on open
(``PRAGMA quick_check``): a damaged or unknown file is refused with a ZrayError naming it,
never half-read; a row that does not check is skipped and counted, with a warning naming it.
Every sqlite3.Error is turned into a ZrayError that names the file, with the cause chained.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import pickle
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from zray.broker.tables import Row, Tables, check_row
from zray.exceptions import ZrayError
from zray.protocol import plain_loads

__all__ = ["SCHEMA_VERSION", "MemoryLog", "WriteAheadLog", "read_tables"]

log = logging.getLogger("zray.broker.wal")

# PRAGMA user_version of a log this code writes. 0: the first layout (a SQL row per table
# row, without times or batches), still read post-mortem.
SCHEMA_VERSION = 2
# A log entry holds a whole batch: one INSERT per batch, not per row, so the log costs the
# shard little (one row each cost as much as the rest of its handling).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rows BLOB NOT NULL,  -- pickle (plain data only) of [(table, key, fields_json, blob, time)]
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (node BLOB PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value);
"""
_INSERT = "INSERT INTO log (rows, count) VALUES (?, ?)"
_SELECT = {SCHEMA_VERSION: "SELECT id, rows FROM log ORDER BY id",
           0: "SELECT id, tbl, key, fields, blob FROM log ORDER BY id"}
_COUNT = "SELECT COALESCE(SUM(count), 0) FROM log"
_APPLIED = "INSERT OR REPLACE INTO batches (node, seq) VALUES (?, ?)"
_DROPPED = "INSERT OR REPLACE INTO meta (name, value) VALUES ('dropped_tasks', ?)"
_CHUNK_ROWS = 1000  # rows per log entry when compaction rewrites the log


@contextlib.contextmanager
def _converted(path: str, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise ZrayError(
            f"write-ahead log {path}: {action} failed: {exc}; check that the disk has room, "
            "that the file is writable and that no other broker shard uses it"
        ) from exc


Batch = tuple[list[Row], float, bytes, int]  # (rows, time, sender node, its batch seq)


class WriteAheadLog:
    """An append-only log of table rows, replayed at start and compacted when long.

    With each batch of rows it records the batch's sequence number from its node, in the
    same transaction: after a restart the shard knows which batches it has (``applied``)
    and acknowledges a resent one without applying it twice."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        check_wal_file(self.path)  # before SQLite reads (and folds in) what it can of it
        with _converted(self.path, "open"):
            # Autocommit mode: every transaction below is an explicit BEGIN ... COMMIT.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            try:
                self._rows: int = self._open()
            except BaseException:  # (its lock and half a transaction go with it)
                self._db.close()
                raise
        self.applied: dict[bytes, int] = {}  # node -> the last batch seq stored from it

    def _open(self) -> int:
        """Check the file, or make it a new log; the number of rows it holds."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = _version(self._db, self.path)
        if version is None:  # (tables and version in one transaction: a shard killed while
            # it creates its log leaves a new, empty file, never tables without their
            # version, which no later start would accept)
            self._db.executescript(
                f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        elif version != SCHEMA_VERSION:
            raise ZrayError(
                f"write-ahead log {self.path} has schema version {version}; this zray "
                f"writes version {SCHEMA_VERSION}: read it with zray inspect --wal")
        rows: int = self._db.execute(_COUNT).fetchone()[0]
        return rows

    def replay(self, tables: Tables) -> int:
        """Apply every row to ``tables``, in append order; learn ``applied``. Returns the
        number of bad rows skipped (each named in a warning)."""
        with _converted(self.path, "replay"):
            bad = _load(self._db, SCHEMA_VERSION, tables, self.path)
            self.applied = dict(self._db.execute("SELECT node, seq FROM batches"))
        return bad

    def append(self, batches: list[Batch]) -> None:
        """Append the batches' rows and seqs in one transaction, committed when this
        returns (a group commit: one per pass of the shard's loop)."""
        with _converted(self.path, "append"), self._transaction():
            for rows, at, node, seq in batches:
                if rows:
                    self._db.execute(_INSERT, _entry([(*row, at) for row in rows]))
                self._db.execute(_APPLIED, (node, seq))
                self._rows += len(rows)
        for _, _, node, seq in batches:
            self.applied[node] = seq

    def row_count(self) -> int:
        return self._rows

    def compact(self, rows: Iterable[tuple[Row, float]], dropped_tasks: int) -> None:
        """Replace the whole log by ``rows`` (each with its time), atomically."""
        stamped = [(*row, at) for row, at in rows]
        with _converted(self.path, "compact"):
            with self._transaction():
                self._db.execute("DELETE FROM log")
                self._db.executemany(_INSERT, [_entry(stamped[i : i + _CHUNK_ROWS])
                                               for i in range(0, len(stamped), _CHUNK_ROWS)])
                self._db.execute(_DROPPED, (dropped_tasks,))
            # Fold the big transaction into the main file so the -wal file shrinks again.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._rows = len(stamped)

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


class MemoryLog:
    """The log switched off (``gcs_log`` false): batches are acknowledged unwritten, and a
    restarted shard starts empty."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = f"{path} (not written: gcs_log is off)"
        self.applied: dict[bytes, int] = {}

    def replay(self, tables: Tables) -> int:
        return 0

    def append(self, batches: list[Batch]) -> None:
        for _, _, node, seq in batches:
            self.applied[node] = seq

    def row_count(self) -> int:
        return 0

    def compact(self, rows: Iterable[tuple[Row, float]], dropped_tasks: int) -> None:
        pass

    def close(self) -> None:
        pass


def read_tables(path: str | os.PathLike[str], max_task_history: int) -> Tables:
    """The tables a shard's log holds, read without writing: post-mortem ``zray inspect``.
    A log of an older schema is read as it was written; a newer one is refused."""
    if not os.path.exists(path):
        raise ZrayError(f"no write-ahead log at {path}")
    check_wal_file(str(path))
    uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro"
    tables = Tables(max_task_history=max_task_history)
    with _converted(str(path), "read-only open"):
        db = sqlite3.connect(uri, uri=True)
        try:
            version = _version(db, str(path))
            if version is None:
                return tables
            if version not in _SELECT:
                raise ZrayError(
                    f"write-ahead log {path} has schema version {version}, which this zray "
                    f"cannot read (it reads {sorted(_SELECT)}); use the zray that wrote it")
            _load(db, version, tables, str(path))
        finally:
            db.close()
    return tables


def check_wal_file(path: str) -> None:
    """Raise ZrayError if the log's ``-wal`` file (what a killed shard leaves: committed
    transactions not yet folded into the main file) is damaged. SQLite reads such a file up
    to its first bad frame and silently ignores the rest, committed or not: the log would
    come back older than what was acknowledged. Damage is: a bad header; a frame that fails
    its checksum with frames of the same generation after it; or fewer good frames than the
    wal-index (``-shm``) says were committed and not yet copied into the main file. A frame
    left half-written by a kill (the file's end) is no damage: it was never committed."""
    try:
        with open(path + "-wal", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return
    if len(data) < _WAL_HEADER.size:
        return  # empty (or never written past a partial header): nothing committed
    magic, _, page_size, _, salt1, salt2, sum1, sum2 = _WAL_HEADER.unpack_from(data)
    if magic not in (0x377F0682, 0x377F0683) or not 512 <= page_size <= 65536:
        raise ZrayError(f"write-ahead log {path}: its -wal file has no valid header; "
                        f"{_DAMAGED_HINT.format(path=path)}")
    order = ">" if magic & 1 else "<"
    if _checksum(data[:24], order, (0, 0)) != (sum1, sum2):
        raise ZrayError(f"write-ahead log {path}: the -wal file's header fails its "
                        f"checksum; {_DAMAGED_HINT.format(path=path)}")
    frame_size = _FRAME_HEADER.size + page_size
    frames = (len(data) - _WAL_HEADER.size) // frame_size
    sums, good, committed = (sum1, sum2), 0, 0
    for i in range(frames):
        at = _WAL_HEADER.size + i * frame_size
        _, commit, fsalt1, fsalt2, fsum1, fsum2 = _FRAME_HEADER.unpack_from(data, at)
        if (fsalt1, fsalt2) != (salt1, salt2):
            break  # a frame of an earlier generation: the log ends before it
        sums = _checksum(data[at : at + 8] + data[at + 24 : at + frame_size], order, sums)
        if sums != (fsum1, fsum2):
            later = [j for j in range(i + 1, frames) if _FRAME_HEADER.unpack_from(
                data, _WAL_HEADER.size + j * frame_size)[2:4] == (salt1, salt2)]
            if later:
                raise ZrayError(
                    f"write-ahead log {path}: frame {i + 1} of its -wal file fails its "
                    f"checksum and {len(later)} frames of the log follow it; "
                    f"{_DAMAGED_HINT.format(path=path)}")
            break
        good = i + 1
        if commit:
            committed = good
    index = _committed_per_index(path + "-shm", data[16:24])
    if index is not None and index > committed:
        raise ZrayError(
            f"write-ahead log {path}: its -wal file holds {committed} committed frames, "
            f"its index says {index} (the file was cut short); "
            f"{_DAMAGED_HINT.format(path=path)}")


_WAL_HEADER = struct.Struct(">8I")
_FRAME_HEADER = struct.Struct(">6I")
_DAMAGED_HINT = ("SQLite would silently read an older state. To read what the main file "
                 "holds, move the damaged part aside: mv {path}-wal {path}-wal.damaged")


def _checksum(data: bytes, order: str, sums: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing ``sums``."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    s1, s2 = sums
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def _committed_per_index(shm: str, salts: bytes) -> int | None:
    """The last committed frame not yet copied into the main file, as the wal-index
    says (its header is in the machine's byte order, the salts copied as they are in the
    -wal file's header); None if it has no say."""
    try:
        with open(shm, "rb") as f:
            head = f.read(100)
    except OSError:
        return None
    if len(head) < 100 or head[:48] != head[48:96]:
        return None  # being changed when its writer died: not to be trusted
    fields = struct.unpack("=3IBBH2I6I", head[:48])
    is_init, max_frame = fields[3], fields[6]
    backfilled = struct.unpack_from("=I", head, 96)[0]
    if not is_init or head[32:40] != salts or max_frame <= backfilled:
        return None
    return int(max_frame)


def _version(db: sqlite3.Connection, path: str) -> int | None:
    """The log's schema version, None for a new, empty file; checks the file's integrity
    first (a damaged file is named, never half-read)."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise ZrayError(f"write-ahead log {path} is damaged: {'; '.join(problems)}")
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'log'").fetchone() is None:
        return None
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def _entry(rows: list[tuple[Any, ...]]) -> tuple[bytes, int]:
    return pickle.dumps(rows, protocol=5), len(rows)


def _load(db: sqlite3.Connection, version: int, tables: Tables, path: str) -> int:
    """Apply the log's rows to ``tables``; bad rows are skipped, counted and named (by
    log entry, and row within it)."""
    if version >= 2:
        for (dropped,) in db.execute("SELECT value FROM meta WHERE name = 'dropped_tasks'"):
            tables.dropped_tasks = int(dropped)
    bad = 0

    def skip(where: str, exc: Exception) -> None:
        nonlocal bad
        bad += 1
        tables.bad_rows += 1
        if bad <= 10:
            log.warning("write-ahead log %s: skipped bad row %s: %s", path, where, exc)

    for entry_id, *columns in db.execute(_SELECT[version]):
        if version == 0:
            entries = [(f"{entry_id}", (*columns, 0.0))]
        else:
            try:
                rows = plain_loads(columns[0])
                if type(rows) is not list:
                    raise ValueError(f"a log entry is a list of rows, not {type(rows).__name__}")
            except ValueError as exc:
                skip(f"entry {entry_id} (all of it)", exc)
                continue
            entries = [(f"{i + 1} of entry {entry_id}", row) for i, row in enumerate(rows)]
        for where, row in entries:
            try:
                if type(row) is not tuple or len(row) != 5 or type(row[4]) is not float:
                    raise ValueError("a logged row is (table, key, fields_json, blob, time)")
                tables.apply([check_row(row[:4])], row[4])
            except (ValueError, TypeError) as exc:
                skip(where, exc)
    if bad:
        log.warning("write-ahead log %s: skipped %d bad rows in all", path, bad)
    return bad
