"""``zray inspect``: a GCS table as an aligned table or JSON Lines, and one task's history.

Rows come from zray/broker/reader.py (each shard live, else its log). Filters apply in
order: ``--state``, ``--name`` (a glob), ``--node`` and ``--job`` (id prefixes), ``--since``
(5m, 2h, 30s; by when the task was submitted, or the row first stored), ``--filter
FIELD=VALUE``; then ``--limit`` keeps the newest. Tables show ids shortened to their first
8 hex digits (``--wide``: whole), sizes in KiB/MiB, times on the local clock, durations.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import time
from typing import Any

from zray.broker.layout import GcsAddress
from zray.broker.reader import TableView

TABLES = ("tasks", "objects", "actors", "nodes", "jobs", "functions", "placement_groups")
COLUMNS = {
    "tasks": ("task_id", "name", "state", "attempt", "submitted", "duration", "node_id",
              "worker_pid", "error_type"),
    "objects": ("object_id", "size", "where", "is_error", "job_id", "node_id"),
    "actors": ("actor_id", "class_name", "name", "state", "pid", "restarts_left"),
    "nodes": ("node_id", "state", "address", "pid", "resources", "started", "died",
              "tasks_recorded"),
    "jobs": ("job_id", "state", "driver_pid", "namespace", "start_time", "end_time"),
    "functions": ("key", "name"),
    "placement_groups": ("placement_group_id", "name", "strategy", "state", "bundles",
                         "pending_reason"),
}
_IDS = {"task_id", "object_id", "actor_id", "node_id", "job_id", "parent_task_id", "key",
        "placement_group_id"}
_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", choices=TABLES + ("task",),
                        help="a table, or `task ID` for one task's history")
    parser.add_argument("id", nargs="?", help="with `task`: its id, or a unique prefix")
    parser.add_argument("--state", help="only rows in this state (e.g. RUNNING)")
    parser.add_argument("--name", help="only rows whose name matches this glob")
    parser.add_argument("--node", help="only rows of the node whose id starts so")
    parser.add_argument("--job", help="only rows of the job whose id starts so")
    parser.add_argument("--since", help="only rows newer than this: 30s, 5m, 2h, 1d")
    parser.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep rows whose FIELD equals VALUE (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="only the newest N rows")
    parser.add_argument("--json", action="store_true", help="JSON Lines: one object a row")
    parser.add_argument("--wide", action="store_true", help="whole ids, uncut cells")
    parser.add_argument("--follow", action="store_true", help="then print each change as "
                        "it happens, until Ctrl-C (a running session)")
    parser.add_argument("--for", dest="follow_for", type=float, default=0.0,
                        metavar="SECONDS", help="with --follow: stop after this long")


def select(view: TableView, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The view's rows that pass the filters, newest ``--limit`` last."""
    since = time.time() - _seconds(args.since) if args.since else None
    rows = []
    for key, fields, stored in view.rows:
        row = {"key": key.hex(), **fields}
        if args.state and row.get("state") != args.state.upper():
            continue
        name = row.get("name") or row.get("class_name") or ""
        if args.name and not fnmatch.fnmatchcase(str(name), args.name):
            continue
        if args.node and not str(row.get("node_id", "")).startswith(args.node):
            continue
        if args.job and not str(row.get("job_id", "")).startswith(args.job):
            continue
        if since is not None and row.get("submitted", stored) < since:
            continue
        if not all(str(row.get(f)) == v for f, _, v in (i.partition("=") for i in args.filter)):
            continue
        rows.append(row)
    return rows[-args.limit:] if args.limit else rows


def print_table(rows: list[dict[str, Any]], table: str, wide: bool) -> None:
    columns = COLUMNS[table]
    cells = [[_cell(column, row, wide) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    noun = table.removesuffix("s") if len(rows) == 1 else table  # "1 task", "2 tasks"
    print(f"({len(rows)} {noun})")


def print_json(rows: list[dict[str, Any]], table: str) -> None:
    """One object a row, with the keys the README lists (``key`` only for functions: the
    other tables' rows name themselves)."""
    for row in rows:
        if table != "functions":
            row.pop("key", None)
        print(json.dumps(row))


def print_task(rows: list[dict[str, Any]], prefix: str, as_json: bool) -> int:
    """One task's history, found by a unique prefix of its id."""
    found = [row for row in rows if str(row.get("task_id", "")).startswith(prefix.lower())]
    if len(found) != 1:
        what = "no task" if not found else f"{len(found)} tasks"
        print(f"zray inspect: {what} with an id starting {prefix!r}; give more of it",
              file=sys.stderr)
        return 1
    task = found[0]
    if as_json:
        task.pop("key", None)
        print(json.dumps(task))
        return 0
    print(f"task {task['task_id']}  {task.get('name')}  {task.get('state')}  "
          f"attempt {task.get('attempt', 0)}")
    print(f"  job {task.get('job_id')}  node {task.get('node_id')}  worker pid "
          f"{task.get('worker_pid', '-')}  submitted by task {task.get('parent_task_id')}")
    submitted = float(task.get("submitted", 0.0))
    for state, us in sorted(task.get("times", {}).items(), key=lambda item: item[1]):
        print(f"  {_clock(submitted + us / 1e6)}  +{_duration(us / 1e6):>8}  {state}")
    if task.get("arg_ids"):
        print(f"  arguments: {', '.join(task['arg_ids'])}")
    if task.get("pending_reason"):
        print(f"  pending: {task['pending_reason']}")
    if task.get("error_type"):
        print(f"  error: {task['error_type']}: {task.get('error_message', '')}")
        for line in task.get("traceback", "").rstrip().splitlines():
            print(f"    {line}")
    return 0


def follow(gcs: GcsAddress, table: str, args: argparse.Namespace) -> int:
    """Print each change of ``table`` as the shards publish it (zray/broker/follow.py): a
    line per row changed, with the columns of the table."""
    from zray.broker.follow import Follower

    shards = len(gcs.shards)
    follower = Follower(gcs, table)
    until = time.monotonic() + args.follow_for if args.follow_for else None
    said = False
    try:
        while until is None or time.monotonic() < until:
            changes = follower.poll(0.2)
            if not said and follower.ready():
                said = True  # (from here on no change is missed: scripts may wait for it)
                print(f"zray inspect: following the {table} of {shards} shards "
                      "(Ctrl-C stops)", file=sys.stderr, flush=True)
            for key, fields, _ in changes:
                if fields is None:
                    print(f"{key.hex()[:8]}  (deleted)", flush=True)
                    continue
                row = {"key": key.hex(), **json.loads(fields)}
                print("  ".join(_cell(c, row, args.wide) for c in COLUMNS[table]), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
    return 0


def _cell(column: str, row: dict[str, Any], wide: bool) -> str:
    if column == "duration":
        times = row.get("times", {})
        start = times.get("RUNNING")
        end = times.get("FINISHED", times.get("FAILED"))
        return "-" if start is None or end is None else _duration((end - start) / 1e6)
    value = row.get(column)
    if value is None or value == "":
        return "-"
    if column in ("submitted", "started", "start_time", "end_time", "died"):
        return _clock(float(value))
    if column == "size":
        return _size(int(value))
    if column in _IDS and isinstance(value, str) and not wide:
        return value[:8]
    text = json.dumps(value) if isinstance(value, dict) else str(value)
    return text if wide else text[:40]


def _clock(seconds: float) -> str:
    """Local clock time, with the date if not today."""
    local = time.localtime(seconds)
    today = time.localtime()
    day = "" if local[:3] == today[:3] else time.strftime("%Y-%m-%d ", local)
    return day + time.strftime("%H:%M:%S", local) + f".{int(seconds % 1 * 1000):03d}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _size(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def _seconds(text: str) -> float:
    match = _SINCE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--since {text!r}: give a number and a unit, e.g. 30s, 5m, 2h, 1d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]
