"""The ``zray`` command.

``zray inspect tasks|objects|actors|nodes|functions`` lists a GCS table: live from the
broker shard of a running cluster, or post-mortem from its write-ahead log when it is down.
``zray microbenchmark`` runs zray/bench.py's workloads (``python -m zray.bench --backend ray``
runs the same ones on an installed Ray).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from zray.broker.reader import TableView, read_session, read_wal
from zray.config import Config
from zray.exceptions import ZrayError
from zray.node.sessions import ended_sessions, given_run_id, live_sessions, newest

TABLES = ("tasks", "objects", "actors", "nodes", "functions")
COLUMNS = {
    "tasks": ("task_id", "name", "state", "attempt", "pid", "job_id"),
    "objects": ("object_id", "size", "where", "is_error", "job_id"),
    "actors": ("actor_id", "class_name", "name", "state", "pid", "restarts_left"),
    "nodes": ("node_id", "state", "pid", "resources"),
    "functions": ("key", "name"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray", description="zray cluster tools")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="list a GCS table (live, or from the log)")
    inspect.add_argument("table", choices=TABLES)
    where = inspect.add_mutually_exclusive_group()
    where.add_argument("--session", help="session directory (default: the newest running "
                       "cluster's, else the newest ended one's in ZRAY_HOME)")
    where.add_argument("--wal", help="read this write-ahead log file (post-mortem)")
    inspect.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                         help="keep rows whose FIELD equals VALUE (repeatable)")
    inspect.add_argument("--limit", type=int, default=0, help="only the newest N rows")
    inspect.add_argument("--json", action="store_true", help="one JSON object per line")
    bench = sub.add_parser("microbenchmark", help="measure zray on a private local cluster")
    bench.add_argument("--quick", action="store_true", help="a tenth of the work, one run")
    bench.add_argument("--json", action="store_true", help="one JSON object per workload")
    bench.add_argument("--gcs", action="store_true", help="instead: what the GCS costs "
                       "(its logs on and off) and how far behind it runs")
    bench.add_argument("--shards", type=int, default=2, help="with --gcs: GCS shards")
    args = parser.parse_args(argv)
    if args.command == "microbenchmark" and args.gcs:
        from zray import bench_gcs

        return bench_gcs.main(["--shards", str(args.shards)] + ["--quick"] * args.quick
                              + ["--json"] * args.json)
    if args.command == "microbenchmark":
        from zray import bench as zray_bench

        return zray_bench.main(["--backend", "zray"] + ["--quick"] * args.quick
                               + ["--json"] * args.json)
    try:
        view = _read(args)
    except ZrayError as exc:
        print(f"zray inspect: {exc}", file=sys.stderr)
        return 1
    for note in view.notes:  # (stdout stays parseable)
        print(f"zray inspect: {note}", file=sys.stderr)
    rows = [_row(key, fields) for key, fields in view.rows]
    rows = [r for r in rows if _matches(r, args.filter)]
    if args.limit:
        rows = rows[-args.limit:]
    _print(rows, args.table, args.json)
    if args.table == "tasks" and view.dropped_tasks:
        print(f"zray inspect: {view.dropped_tasks} older tasks not kept (max_task_history)",
              file=sys.stderr)
    if view.bad_rows:
        print(f"zray inspect: {view.bad_rows} damaged rows of the logs skipped (see the "
              "shards' log, gcs.log)", file=sys.stderr)
    if view.unread:
        print(f"zray inspect: the rows of {view.unread} shards are missing (above: why)",
              file=sys.stderr)
        return 2
    return 0


def _read(args: argparse.Namespace) -> TableView:
    """The table from, in order: --wal, --session, the newest running session, the newest
    ended one (of this run, if ``ZRAY_RUN_ID`` names one)."""
    history = Config.from_env().max_task_history
    limit = args.limit if args.limit and not args.filter else None  # (filters come after)
    if args.wal:
        return read_wal(args.wal, args.table, limit, history)
    session, what = args.session, "the session"
    if session is None:
        run = given_run_id() or "*"
        session, what = newest(live_sessions(run)), "the running session"
        if session is None:
            session, what = newest(ended_sessions(run)), "the ended session"
    if session is None:
        raise ZrayError("no zray session found, running or ended; start a cluster, or pass "
                        "--session or --wal")
    view = read_session(session, args.table, limit, history)
    view.notes.insert(0, f"read {what} {session}")
    return view


def _row(key: bytes, fields: dict[str, Any]) -> dict[str, Any]:
    return {"key": key.hex(), **fields}


def _matches(row: dict[str, Any], filters: list[str]) -> bool:
    for item in filters:
        field, _, value = item.partition("=")
        if str(row.get(field)) != value:
            return False
    return True


def _print(rows: list[dict[str, Any]], table: str, as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = COLUMNS[table]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"({len(rows)} {table})")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = json.dumps(value) if isinstance(value, dict) else str(value)
    return text[:40]


if __name__ == "__main__":
    sys.exit(main())
