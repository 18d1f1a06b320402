"""The SQLite write-ahead log, on real files in tmp_path."""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zray.broker.tables import Row, Tables
from zray.broker.wal import SCHEMA_VERSION, WriteAheadLog, read_tables
from zray.exceptions import ZrayError


def task(i: int, state: str = "RUNNING") -> Row:
    return ("tasks", f"t{i}".encode(), f'{{"state": "{state}"}}', None)


def keys(tables: Tables, table: str) -> list[bytes]:
    return [row[0] for row in tables.rows(table)]


@pytest.mark.timeout(30)
def test_replay_after_reopen_in_append_order_with_the_batches_stored(tmp_path: Path) -> None:
    path = tmp_path / "shard.wal"
    wal = WriteAheadLog(path)
    first = [task(1), ("objects", b"o1", "{}", b"\x00\x01")]
    second = [task(1, "FINISHED"), ("objects", b"o1", None, None), task(2)]
    wal.append([(first, 10.0, b"node-a", 1), (second, 11.0, b"node-a", 2)])
    wal.append([([task(3)], 12.0, b"node-b", 1)])
    assert wal.row_count() == 6 and wal.applied == {b"node-a": 2, b"node-b": 1}
    wal.close()
    wal = WriteAheadLog(path)
    try:
        tables = Tables()
        assert wal.replay(tables) == 0
        assert wal.applied == {b"node-a": 2, b"node-b": 1}
        assert tables.rows("tasks") == [(b"t1", '{"state": "FINISHED"}', None, 10.0),
                                        (b"t2", '{"state": "RUNNING"}', None, 11.0),
                                        (b"t3", '{"state": "RUNNING"}', None, 12.0)]
        assert tables.rows("objects") == [] and wal.row_count() == 6
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_compaction_keeps_the_state_the_times_and_the_dropped_count(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "shard.wal")
    tables = Tables(max_task_history=4)
    for i in range(10):
        batch = [task(i), task(i, "FINISHED"), ("nodes", b"n", f'{{"beat": {i}}}', None)]
        wal.append([(batch, float(i), b"node", i + 1)])
        tables.apply(batch, float(i))
    assert tables.dropped_tasks == 6
    wal.compact(tables.snapshot(), tables.dropped_tasks)
    assert wal.row_count() == 5
    wal.append([([task(10)], 10.0, b"node", 11)])
    wal.close()
    wal = WriteAheadLog(tmp_path / "shard.wal")
    try:
        replayed = Tables(max_task_history=4)
        wal.replay(replayed)
        assert keys(replayed, "tasks") == [b"t7", b"t8", b"t9", b"t10"]
        assert replayed.rows("tasks")[0][3] == 7.0  # the time t7 was first stored
        assert replayed.rows("nodes") == [(b"n", '{"beat": 9}', None, 0.0)]
        assert replayed.dropped_tasks == 7 and wal.applied == {b"node": 11}
        assert wal.row_count() == 6
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_read_tables_post_mortem_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "shard.wal"
    wal = WriteAheadLog(path)
    wal.append([([task(i) for i in range(5)] + [("actors", b"a", '{"name": "x"}', None)],
                 1.0, b"n", 1)])
    wal.close()
    path.chmod(stat.S_IRUSR)  # a writer would fail now; a reader must not
    try:
        tables = read_tables(path, max_task_history=3)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert keys(tables, "tasks") == [b"t2", b"t3", b"t4"] and tables.dropped_tasks == 2
    assert tables.rows("actors") == [(b"a", '{"name": "x"}', None, 1.0)]


@pytest.mark.timeout(30)
def test_read_tables_sees_a_log_still_open(tmp_path: Path) -> None:
    """What a killed shard leaves: committed rows still in SQLite's -wal file."""
    wal = WriteAheadLog(tmp_path / "shard.wal")
    try:
        wal.append([([task(1)], 1.0, b"n", 1)])
        assert keys(read_tables(wal.path, 10), "tasks") == [b"t1"]
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wal"
    with pytest.raises(ZrayError, match="missing.wal"):
        read_tables(missing, 10)
    assert not missing.exists()  # read-only open must not create it
    garbage = tmp_path / "garbage.wal"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ZrayError, match="garbage.wal") as info:
        WriteAheadLog(garbage)
    assert info.value.__cause__ is not None
    with pytest.raises(ZrayError, match="garbage.wal"):
        read_tables(garbage, 10)


@pytest.mark.timeout(30)
def test_bad_rows_are_skipped_counted_and_named(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "shard.wal"
    wal = WriteAheadLog(path)
    wal.append([([task(1), task(2)], 1.0, b"n", 1)])
    wal.close()
    db = sqlite3.connect(path)
    rows = [("nope", b"\x00", "{}", None, 2.0), ("tasks", "text key", "{}", None, 2.0),
            ("tasks", b"t3", "{}", None, 2.0)]
    db.execute("INSERT INTO log (rows, count) VALUES (?, 3)", (pickle.dumps(rows),))
    db.execute("INSERT INTO log (rows, count) VALUES (?, 1)",  # names a global: refused
               (pickle.dumps([("tasks", b"t4", "{}", None, ValueError("x"))]),))
    db.commit()
    db.close()
    tables = read_tables(path, 10)
    assert keys(tables, "tasks") == [b"t1", b"t2", b"t3"] and tables.bad_rows == 3
    assert "bad row 1 of entry 2" in caplog.text and "bad row 2 of entry 2" in caplog.text
    assert "bad row entry 3 (all of it)" in caplog.text
    wal = WriteAheadLog(path)
    try:
        assert wal.replay(Tables()) == 3
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_the_schema_version_is_kept_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "shard.wal"
    WriteAheadLog(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(ZrayError, match="schema version 99"):
        WriteAheadLog(path)
    with pytest.raises(ZrayError, match="schema version 99"):
        read_tables(path, 10)
    old = tmp_path / "old.wal"  # the first layout (version 0): still read post-mortem
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, "
               "key BLOB NOT NULL, fields TEXT, blob BLOB)")
    db.execute("INSERT INTO log (tbl, key, fields, blob) VALUES ('tasks', x'01', '{}', NULL)")
    db.commit()
    db.close()
    assert keys(read_tables(old, 10), "tasks") == [b"\x01"]


_KILLED_WRITER = """
import os, sys
from zray.broker.wal import WriteAheadLog
wal = WriteAheadLog(sys.argv[1])
for i in range(40):
    rows = [("tasks", f"t{i}-{j}".encode(), '{"state": "FINISHED"}', b"x" * 300)
            for j in range(6)]
    wal.append([(rows, float(i), b"node", i + 1)])
os._exit(0)  # as SIGKILL would: no checkpoint, the -wal and -shm files stay
"""


def killed_writers_log(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], check=True, timeout=60)
    assert (tmp_path / f"{name}-wal").stat().st_size > 40 * 4096
    return path


@pytest.mark.timeout(60)
def test_a_killed_writers_log_reads_whole(tmp_path: Path) -> None:
    path = killed_writers_log(tmp_path, "whole.wal")
    assert len(read_tables(path, 10_000).rows("tasks")) == 240


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["cut", "garbled", "header"])
def test_a_damaged_wal_file_is_named_never_half_read(tmp_path: Path, damage: str) -> None:
    """Cut short, one frame garbled in the middle, or a bad header: SQLite alone would read
    an older state and say nothing (12 FINISHED instead of 234, in the issue)."""
    path = killed_writers_log(tmp_path, "damaged.wal")
    wal_file = tmp_path / "damaged.wal-wal"
    data = bytearray(wal_file.read_bytes())
    frame = 24 + 4096
    if damage == "cut":
        data = data[: 32 + 10 * frame + 100]
    elif damage == "garbled":
        data[32 + 5 * frame + 24 + 1000 : 32 + 5 * frame + 24 + 1010] = b"\xff" * 10
    else:
        data[0:4] = b"\x00\x00\x00\x00"
    wal_file.write_bytes(bytes(data))
    expected = {"cut": "cut short", "garbled": "frame 6 .* fails its checksum",
                "header": "no valid header"}[damage]
    with pytest.raises(ZrayError, match=f"damaged.wal.*{expected}.*mv .*damaged.wal-wal"):
        read_tables(path, 10_000)
    with pytest.raises(ZrayError, match=expected):
        WriteAheadLog(path)
    wal_file.rename(tmp_path / "damaged.wal-wal.damaged")  # as the error says: then the
    (tmp_path / "damaged.wal-shm").unlink()  # main file reads, older but whole
    read_tables(path, 10_000)


@pytest.mark.timeout(60)
def test_a_log_whose_creation_was_cut_short_anywhere_opens(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A shard killed while it creates its log (CI: SIGKILLed twice within 0.2 s of a
    restart) leaves a file its restart must open: never tables without their schema
    version, which no later start accepts. SQLite is interrupted after each number of
    its steps in turn, as a kill would stop it; the file must then open."""
    import zray.broker.wal as wal

    connect = sqlite3.connect

    def cut_after(steps: int) -> Any:
        """sqlite3.connect, whose connection SQLite interrupts after ``steps`` steps."""
        left = [steps]

        def tick() -> int:
            left[0] -= 1
            return 1 if left[0] <= 0 else 0  # (non-zero: SQLite interrupts)

        def connect_cut(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            db = connect(*args, **kwargs)
            db.set_progress_handler(tick, 1)
            return db
        return connect_cut

    for steps in range(1, 10_000):
        path = tmp_path / f"cut-{steps}.wal"
        monkeypatch.setattr(wal.sqlite3, "connect", cut_after(steps))
        try:
            WriteAheadLog(path).close()
            created = True
        except ZrayError:
            created = False
        monkeypatch.setattr(wal.sqlite3, "connect", connect)
        log = WriteAheadLog(path)  # (raises if the cut left a file it refuses)
        log.close()
        if created:
            break  # (every step before the end was cut once)
    else:
        pytest.fail("creating a log never finished")
