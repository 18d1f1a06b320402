"""Pure tests of the broker's tables: no sockets, no files."""

from __future__ import annotations

import zlib

import pytest

from zray.broker.tables import TABLES, Tables, check_row, merge_newest, shard_of


def keys(tables: Tables, table: str, limit: int | None = None) -> list[bytes]:
    return [row[0] for row in tables.rows(table, limit)]


def rows(tables: Tables, table: str) -> list[tuple[bytes, str, bytes | None]]:
    """(key, fields_json, blob) of each row, oldest first (without the time stored)."""
    return [row[:3] for row in tables.rows(table)]


@pytest.mark.timeout(10)
def test_upsert_then_delete() -> None:
    tables = Tables()
    tables.apply([("nodes", b"n1", '{"cpu": 4}', None), ("nodes", b"n2", "{}", b"blob")], 0.0)
    tables.apply([("nodes", b"n1", '{"cpu": 8}', None)], 0.0)
    assert rows(tables, "nodes") == [(b"n1", '{"cpu": 8}', None), (b"n2", "{}", b"blob")]
    tables.apply([("nodes", b"n1", None, None), ("nodes", b"absent", None, None)], 0.0)
    assert rows(tables, "nodes") == [(b"n2", "{}", b"blob")]
    assert tables.count("nodes") == 1 and len(tables) == 1


@pytest.mark.timeout(10)
def test_tables_are_separate() -> None:
    tables = Tables()
    tables.apply([(name, b"k", f'{{"t": "{name}"}}', None) for name in TABLES], 0.0)
    for name in TABLES:
        assert rows(tables, name) == [(b"k", f'{{"t": "{name}"}}', None)]
    assert len(tables) == len(TABLES)


@pytest.mark.timeout(10)
def test_insertion_order_spans_partitions() -> None:
    tables = Tables(partitions=4)
    order = [bytes([i]) * 3 for i in range(40)]
    # The keys really do land in different partitions, so order has to be merged.
    assert len({zlib.crc32(k) % 4 for k in order}) == 4
    tables.apply([("objects", k, "{}", None) for k in order], 0.0)
    assert keys(tables, "objects") == order


@pytest.mark.timeout(10)
def test_update_keeps_position_and_reinsert_moves_to_end() -> None:
    tables = Tables(partitions=3)
    tables.apply([("actors", k, "{}", None) for k in (b"a", b"b", b"c")], 0.0)
    tables.apply([("actors", b"a", '{"state": "ALIVE"}', None)], 0.0)
    assert keys(tables, "actors") == [b"a", b"b", b"c"]
    tables.apply([("actors", b"a", None, None), ("actors", b"a", "{}", None)], 0.0)
    assert keys(tables, "actors") == [b"b", b"c", b"a"]


@pytest.mark.timeout(10)
def test_limit_gives_newest_oldest_first() -> None:
    tables = Tables()
    order = [str(i).encode() for i in range(10)]
    tables.apply([("jobs", k, "{}", None) for k in order], 0.0)
    assert keys(tables, "jobs", limit=3) == order[-3:]
    assert keys(tables, "jobs", limit=100) == order
    assert keys(tables, "jobs", limit=0) == []


@pytest.mark.timeout(10)
def test_task_history_is_bounded_oldest_first() -> None:
    tables = Tables(partitions=4, max_task_history=5)
    tables.apply([("tasks", str(i).encode(), "{}", None) for i in range(5)], 0.0)
    tables.apply([("tasks", b"0", '{"state": "FINISHED"}', None)], 0.0)  # keeps its place
    tables.apply([("tasks", str(i).encode(), "{}", None) for i in range(5, 8)], 0.0)
    assert keys(tables, "tasks") == [b"3", b"4", b"5", b"6", b"7"]
    assert tables.count("tasks") == 5


@pytest.mark.timeout(10)
def test_other_tables_are_not_bounded() -> None:
    tables = Tables(max_task_history=2)
    tables.apply([("objects", str(i).encode(), "{}", None) for i in range(10)], 0.0)
    assert tables.count("objects") == 10


@pytest.mark.timeout(10)
def test_snapshot_rebuilds_the_same_tables() -> None:
    tables = Tables(max_task_history=3)
    tables.apply([("tasks", str(i).encode(), "{}", None) for i in range(6)], 0.0)
    tables.apply([("nodes", b"n", '{"alive": true}', b"x"), ("nodes", b"gone", "{}", None)], 0.0)
    tables.apply([("nodes", b"gone", None, None)], 0.0)
    copy = Tables(max_task_history=3)
    for row, at in tables.snapshot():
        copy.apply([row], at)
    assert all(copy.rows(name) == tables.rows(name) for name in TABLES)
    assert all(row[2] is not None for row, _ in tables.snapshot())


@pytest.mark.timeout(10)
def test_unknown_table_is_named() -> None:
    tables = Tables()
    with pytest.raises(ValueError, match="'bogus'"):
        tables.apply([("bogus", b"k", "{}", None)], 0.0)
    with pytest.raises(ValueError, match="'bogus'"):
        tables.rows("bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        tables.count("bogus")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "row",
    [
        "not a row",
        ("tasks", b"k", "{}"),
        ("nope", b"k", "{}", None),
        ("tasks", "str key", "{}", None),
        ("tasks", b"k", {"not": "json text"}, None),
        ("tasks", b"k", "{}", "not bytes"),
    ],
)
def test_check_row_refuses_malformed_rows(row: object) -> None:
    with pytest.raises(ValueError):
        check_row(row)


@pytest.mark.timeout(10)
def test_check_row_accepts_lists() -> None:
    assert check_row(["tasks", b"k", None, None]) == ("tasks", b"k", None, None)


@pytest.mark.timeout(10)
def test_shard_of_is_crc32_mod_k_and_spreads_keys() -> None:
    import os

    keys_ = [os.urandom(16) for _ in range(2000)]
    assert all(shard_of(k, 3) == zlib.crc32(k) % 3 for k in keys_)
    share = sum(shard_of(k, 2) == 0 for k in keys_) / len(keys_)
    assert 0.4 < share < 0.6


@pytest.mark.timeout(10)
def test_merge_newest_orders_shards_rows_by_time_first_stored() -> None:
    first = Tables()
    second = Tables()
    first.apply([("tasks", b"a", "{}", None)], 1.0)
    second.apply([("tasks", b"b", "{}", None)], 2.0)
    first.apply([("tasks", b"c", "{}", None)], 3.0)
    first.apply([("tasks", b"a", '{"state": "FINISHED"}', None)], 4.0)  # an update: stays first
    replies = [first.rows("tasks"), second.rows("tasks")]
    assert [row[0] for row in merge_newest(replies, None)] == [b"a", b"b", b"c"]
    assert [row[0] for row in merge_newest(replies, 2)] == [b"b", b"c"]
    assert first.get("tasks", b"a") == (b"a", '{"state": "FINISHED"}', None, 1.0)
