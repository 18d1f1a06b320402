"""Reading a GCS table of a session, live or post-mortem: what ``zray inspect`` shows.

Each shard is asked over its socket while it runs; a shard that does not answer (stopped,
restarting, given up on, or the whole session ended) is read from its write-ahead log
instead, read-only. The shards' rows are merged oldest first by the time each key was
first stored; ``limit`` keeps the newest overall. What was read, and anything a reader
should know (a shard given up on, damaged rows skipped), comes back in ``notes``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from zray.broker.layout import GcsAddress, failed_path, gcs_address, wal_path
from zray.broker.link import query
from zray.broker.tables import StoredRow, merge_newest
from zray.broker.wal import read_tables
from zray.exceptions import ZrayError

_SHARD_FILE = re.compile(r"broker-(\d+)\.(?:wal|sock)$")


@dataclass
class TableView:
    rows: list[tuple[bytes, dict[str, Any], float]]  # (key, fields, first stored), oldest first
    dropped_tasks: int = 0  # older tasks the history bound did not keep
    bad_rows: int = 0  # rows of a log that did not check (skipped)
    notes: list[str] = field(default_factory=list)
    unread: int = 0  # shards neither running nor readable from their log: rows missing
    kept_tasks: int = 0  # rows of the tasks table, all of them (``rows`` may be limited)
    session: str = ""  # where it was read from (a session directory), and its shards
    shards: int = 0
    gcs: GcsAddress | None = None  # a live GCS read (what --follow follows)


def shard_count(session: str) -> int:
    """How many shards the session's GCS has (from the files they leave)."""
    indexes = [int(m.group(1)) for path in glob.glob(os.path.join(session, "broker-*"))
               if (m := _SHARD_FILE.search(path))]
    return max(indexes) + 1 if indexes else 0


def read_session(session: str, table: str, limit: int | None,
                 max_task_history: int) -> TableView:
    shards = shard_count(session)
    if not shards:
        if os.path.exists(os.path.join(session, "agent.sock")):
            return TableView([], notes=["the session's GCS is still starting: nothing yet"])
        raise ZrayError(f"no write-ahead log in {session}: is it a zray session directory?")
    gcs = gcs_address(session, shards)
    view = TableView([], session=session, shards=shards, gcs=gcs)
    replies = [_read_shard(session, gcs, index, table, limit, max_task_history, view)
               for index in range(shards)]
    view.notes += given_up(session)
    view.rows = _decoded(merge_newest(replies, limit), table)
    if table == "tasks":  # those the agents' queues dropped count too: tasks the nodes
        # recorded, less those the shards hold (once all is stored, exact)
        nodes = read_session(session, "nodes", None, max_task_history)
        recorded = sum(int(fields.get("tasks_recorded", 0)) for _, fields, _ in nodes.rows)
        view.dropped_tasks = max(view.dropped_tasks, recorded - view.kept_tasks)
    return view


def read_live(gcs: GcsAddress, table: str, limit: int | None, where: str) -> TableView:
    """The table from a running GCS over its sockets alone (a cluster whose head runs on
    another machine: no session directory, no logs here)."""
    reply = query(gcs.shards, table, limit, timeout_s=5.0, credentials=gcs.credentials)
    view = TableView(_decoded(reply.rows, table), dropped_tasks=reply.dropped_tasks,
                     bad_rows=reply.bad_rows, shards=len(gcs.shards), gcs=gcs,
                     notes=[f"read the running GCS of the cluster at {where}"])
    view.unread = len(reply.unanswered)
    view.notes += [f"no answer from {why}" for why in reply.unanswered]
    return view


def given_up(session: str) -> list[str]:
    """Why the supervisor gave up on each shard it gave up on (zray/broker/supervisor.py)."""
    reasons = []
    for index in range(shard_count(session)):
        try:
            with open(failed_path(session, index)) as f:
                reasons.append(f.read().strip())
        except FileNotFoundError:
            continue
    return reasons


def read_wal(path: str, table: str, limit: int | None, max_task_history: int) -> TableView:
    tables = read_tables(path, max_task_history)
    rows = tables.rows(table, limit)
    return TableView(_decoded(rows, table), dropped_tasks=tables.dropped_tasks,
                     bad_rows=tables.bad_rows, notes=[f"read the write-ahead log {path}"])


def _read_shard(session: str, gcs: GcsAddress, index: int, table: str, limit: int | None,
                max_task_history: int, view: TableView) -> list[StoredRow]:
    sock, shards = gcs.shards[index], len(gcs.shards)
    why = "its session has ended"
    if os.path.exists(failed_path(session, index)):  # (nobody serves there: asking would
        why = "the supervisor gave up on it"  # only wait out the timeout)
    elif not sock.startswith("ipc://") or os.path.exists(sock.removeprefix("ipc://")):
        try:
            reply = query([sock], table, limit, timeout_s=2.0, credentials=gcs.credentials)
        except ZrayError as exc:
            why = str(exc)
        else:
            if not reply.unanswered:
                view.dropped_tasks += reply.dropped_tasks
                view.bad_rows += reply.bad_rows
                view.kept_tasks += sum(int(s.get("tasks", 0)) for s in reply.stats.values())
                return reply.rows
            why = reply.unanswered[0]
    wal = wal_path(session, index)
    try:
        tables = read_tables(wal, max(1, max_task_history // shards))
    except ZrayError as exc:  # its rows are missing from the view, and it says so
        view.notes.append(f"shard {index} of {shards}: no answer ({why}); {exc}")
        view.unread += 1
        return []
    view.dropped_tasks += tables.dropped_tasks
    view.bad_rows += tables.bad_rows
    view.kept_tasks += tables.count("tasks")
    if why != "its session has ended":
        view.notes.append(f"shard {index} of {shards} did not answer ({why}); read its log")
    return tables.rows(table, limit)


def _decoded(rows: list[StoredRow], table: str) -> list[tuple[bytes, dict[str, Any], float]]:
    try:
        return [(row[0], json.loads(row[1]), row[3]) for row in rows]
    except (ValueError, TypeError) as exc:
        raise ZrayError(f"the {table} table holds a row that is not JSON: {exc}") from exc
