"""The ``zray`` command.

``zray inspect tasks|objects|actors|nodes|functions`` lists a GCS table: live from the
broker shard of a running cluster, or post-mortem from its write-ahead log when it is down.
``zray microbenchmark`` runs zray/bench.py's workloads (``python -m zray.bench --backend ray``
runs the same ones on an installed Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from zray.broker.link import query
from zray.broker.wal import read_tables
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
    args = parser.parse_args(argv)
    if args.command == "microbenchmark":
        from zray import bench as zray_bench

        return zray_bench.main(["--backend", "zray"] + ["--quick"] * args.quick
                               + ["--json"] * args.json)
    try:
        rows = _rows(args)
    except ZrayError as exc:
        print(f"zray inspect: {exc}", file=sys.stderr)
        return 1
    rows = [r for r in rows if _matches(r, args.filter)]
    if args.limit:
        rows = rows[-args.limit:]
    _print(rows, args.table, args.json)
    return 0


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.wal:
        return _from_wal(args.wal, args.table)
    session = args.session or _newest_session()
    endpoint = f"ipc://{session}/broker-0.sock"
    if os.path.exists(endpoint[len("ipc://"):]):
        try:
            return [_row(key, fields) for key, fields, _ in query(endpoint, args.table)]
        except ZrayError:
            pass  # the socket file outlived its shard: read the log instead
    return _from_wal(os.path.join(session, "broker-0.wal"), args.table)


def _from_wal(path: str, table: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        raise ZrayError(f"no write-ahead log at {path}")
    tables = read_tables(path, Config.from_env().max_task_history)
    return [_row(key, json.loads(fields)) for key, fields, _ in tables.rows(table)]


def _row(key: bytes, fields: dict[str, Any]) -> dict[str, Any]:
    return {"key": key.hex(), **fields}


def _newest_session() -> str:
    """The newest running session, else the newest ended one (of this run, if
    ``ZRAY_RUN_ID`` names one)."""
    run = given_run_id() or "*"
    session = newest(live_sessions(run)) or newest(ended_sessions(run))
    if session is None:
        raise ZrayError("no zray session found, running or ended; start a cluster, or pass "
                        "--session or --wal")
    return session


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
