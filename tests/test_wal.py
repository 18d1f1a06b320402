"""The SQLite write-ahead log, on real files in tmp_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zray.broker.tables import Tables
from zray.broker.wal import WriteAheadLog, read_tables
from zray.exceptions import ZrayError


def task(i: int, state: str = "RUNNING") -> tuple[str, bytes, str, None]:
    return ("tasks", f"t{i}".encode(), f'{{"state": "{state}"}}', None)


@pytest.mark.timeout(30)
def test_replay_after_reopen_in_append_order(tmp_path: Path) -> None:
    path = tmp_path / "shard.wal"
    wal = WriteAheadLog(path)
    first = [task(1), ("objects", b"o1", "{}", b"\x00\x01")]
    second = [task(1, "FINISHED"), ("objects", b"o1", None, None)]
    wal.append(first)
    wal.append(second)
    assert wal.row_count() == 4
    wal.close()
    wal = WriteAheadLog(path)
    try:
        assert list(wal.replay()) == first + second
        assert wal.row_count() == 4
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_compaction_keeps_the_state(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "shard.wal")
    tables = Tables(max_task_history=4)
    for i in range(10):
        batch = [task(i), task(i, "FINISHED"), ("nodes", b"n", f'{{"beat": {i}}}', None)]
        wal.append(batch)
        tables.apply(batch)
    wal.compact(tables.snapshot())
    assert wal.row_count() == 5
    wal.append([task(10)])
    wal.close()
    wal = WriteAheadLog(tmp_path / "shard.wal")
    try:
        replayed = Tables(max_task_history=4)
        replayed.apply(wal.replay())
        assert [k for k, _, _ in replayed.rows("tasks")] == [b"t7", b"t8", b"t9", b"t10"]
        assert replayed.rows("nodes") == [(b"n", '{"beat": 9}', None)]
        assert wal.row_count() == 6
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_read_tables_post_mortem_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "shard.wal"
    wal = WriteAheadLog(path)
    wal.append([task(i) for i in range(5)] + [("actors", b"a", '{"name": "x"}', None)])
    wal.close()
    path.chmod(stat.S_IRUSR)  # a writer would fail now; a reader must not
    try:
        tables = read_tables(path, max_task_history=3)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert [k for k, _, _ in tables.rows("tasks")] == [b"t2", b"t3", b"t4"]
    assert tables.rows("actors") == [(b"a", '{"name": "x"}', None)]


@pytest.mark.timeout(30)
def test_read_tables_sees_a_log_still_open(tmp_path: Path) -> None:
    """What a killed shard leaves: committed rows still in SQLite's -wal file."""
    wal = WriteAheadLog(tmp_path / "shard.wal")
    try:
        wal.append([task(1)])
        assert [k for k, _, _ in read_tables(wal.path, 10).rows("tasks")] == [b"t1"]
    finally:
        wal.close()


@pytest.mark.timeout(30)
def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wal"
    with pytest.raises(ZrayError, match="missing.wal") as info:
        read_tables(missing, 10)
    assert info.value.__cause__ is not None
    assert not missing.exists()  # read-only open must not create it
    garbage = tmp_path / "garbage.wal"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ZrayError, match="garbage.wal"):
        WriteAheadLog(garbage)
