"""The ``zray`` command.

``zray inspect tasks|objects|actors|nodes|jobs|functions`` lists a GCS table, and ``zray
inspect task ID`` shows one task's history (cli/inspect.py): live from the shards of a
running cluster, or post-mortem from their write-ahead logs when it is down. ``zray
microbenchmark`` runs zray/bench.py's workloads (``python -m zray.bench --backend ray`` runs
the same ones on an installed Ray); ``--gcs``: zray/bench_gcs.py; ``--nodes N``:
zray/bench_cluster.py; ``--breakdown``: zray/bench_breakdown.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from zray_cli import inspect as table_view
from zray_cli import node as node_command

from zray.broker.layout import GcsAddress
from zray.broker.reader import TableView, read_live, read_session, read_wal, shard_count
from zray.config import Config
from zray.exceptions import ZrayError
from zray.node.sessions import (
    ended_path,
    ended_sessions,
    given_run_id,
    live_sessions,
    newest,
)
from zray.version import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray", description="zray cluster tools")
    parser.add_argument("--version", action="version", version=f"zray {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="list a GCS table (live, or from the logs)",
                             description=table_view.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    table_view.add_arguments(inspect)
    where = inspect.add_mutually_exclusive_group()
    where.add_argument("--session", help="session directory (default: the newest running "
                       "cluster's, else the newest ended one's in ZRAY_HOME)")
    where.add_argument("--wal", help="read this write-ahead log file (post-mortem)")
    where.add_argument("--address", help="a node of a running cluster (HOST:PORT): read "
                       "its GCS over the network (elsewhere: set ZRAY_TOKEN)")
    timeline = sub.add_parser("timeline", help="write the tasks of a session as a Chrome "
                              "trace (open it in Perfetto)")
    timeline.add_argument("-o", "--output", default="timeline.json", help="the trace file")
    timeline.add_argument("--session", help="session directory (default: the newest running "
                          "cluster's, else the newest ended one's)")
    status = sub.add_parser("status", help="a running cluster's node now: resources, store, "
                            "workers, tasks")
    status.add_argument("--session", help="a private cluster's session directory")
    status.add_argument("--address", help="a node of the cluster (default: the newest "
                        "cluster started with `zray node start`, else the newest private one)")
    status.add_argument("--json", action="store_true")
    node = sub.add_parser("node", help="start or stop the nodes of a cluster on this machine",
                          description=node_command.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    node_command.add_arguments(node)
    bench = sub.add_parser("microbenchmark", help="measure zray on a private local cluster")
    bench.add_argument("--quick", action="store_true", help="a tenth of the work, one run")
    bench.add_argument("--json", action="store_true", help="one JSON object per workload")
    bench.add_argument("--gcs", action="store_true", help="instead: what the GCS costs "
                       "(its logs on and off) and how far behind it runs")
    bench.add_argument("--shards", type=int, default=2, help="with --gcs: GCS shards")
    bench.add_argument("--nodes", type=int, help="instead: round trips and transfers "
                       "across N nodes of this machine, beside the same on one")
    bench.add_argument("--breakdown", action="store_true", help="instead: where one round "
                       "trip's time goes, by process and step")
    args = parser.parse_args(argv)
    if args.command == "microbenchmark" and args.nodes:
        from zray import bench_cluster

        return bench_cluster.main(["--nodes", str(args.nodes)] + ["--quick"] * args.quick
                                  + ["--json"] * args.json)
    if args.command == "microbenchmark" and args.breakdown:
        from zray import bench_breakdown

        return bench_breakdown.main(["--calls", "200" if args.quick else "2000"]
                                    + ["--json"] * args.json)
    if args.command == "microbenchmark" and args.gcs:
        from zray import bench_gcs

        return bench_gcs.main(["--shards", str(args.shards)] + ["--quick"] * args.quick
                              + ["--json"] * args.json)
    if args.command == "microbenchmark":
        from zray import bench as zray_bench

        return zray_bench.main(["--backend", "zray"] + ["--quick"] * args.quick
                               + ["--json"] * args.json)
    if args.command == "node":
        return node_command.run(args)
    if args.command == "timeline":
        return _timeline(args)
    if args.command == "status":
        return _status(args)
    return _inspect(args, inspect)


def _status(args: argparse.Namespace) -> int:
    """A cluster started with `zray node start` (the newest, or --address), else the
    newest private cluster's node."""
    from zray_cli import status

    from zray.mesh.records import live_clusters

    if args.address or (args.session is None and live_clusters()):
        return status.run_cluster(args.address or "auto", args.json)
    session = args.session or newest(live_sessions(given_run_id() or "*"))
    if session is None:
        print("zray status: no running cluster on this machine (zray inspect reads ended "
              "ones)", file=sys.stderr)
        return 1
    return status.run(session, args.json)


def _timeline(args: argparse.Namespace) -> int:
    from zray import tracing as timeline

    try:
        session, what = _session(args.session)
        events = timeline.events(session, Config.from_env().max_task_history)
    except ZrayError as exc:
        print(f"zray timeline: {exc}", file=sys.stderr)
        return 1
    timeline.write(events, args.output)
    slices = sum(event["ph"] == "X" for event in events)
    print(f"zray timeline: {slices} tasks of {what} {session} written to {args.output}",
          file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.table == "task") != (args.id is not None):
        parser.error("`zray inspect task ID` takes an id; a table takes none")
    table = "tasks" if args.table == "task" else args.table
    try:
        view = _read(args, table)
        rows = table_view.select(view, args)
    except (ZrayError, ValueError) as exc:
        print(f"zray inspect: {exc}", file=sys.stderr)
        return 1
    for note in view.notes:  # (stdout stays parseable)
        print(f"zray inspect: {note}", file=sys.stderr)
    if args.follow:
        if args.table == "task" or view.gcs is None:
            print("zray inspect: --follow follows a table of a running session",
                  file=sys.stderr)
            return 1
        return table_view.follow(view.gcs, table, args)
    if args.table == "task":
        code = table_view.print_task(rows, args.id, args.json)
    elif args.json:
        table_view.print_json(rows, table)
        code = 0
    else:
        table_view.print_table(rows, table, args.wide)
        code = 0
    if table == "tasks" and view.dropped_tasks:
        print(f"zray inspect: {view.dropped_tasks} older tasks not kept (max_task_history)",
              file=sys.stderr)
    if view.bad_rows:
        print(f"zray inspect: {view.bad_rows} damaged rows of the logs skipped (see the "
              "shards' log, gcs.log)", file=sys.stderr)
    if view.unread:
        print(f"zray inspect: the rows of {view.unread} shards are missing (above: why)",
              file=sys.stderr)
        return 2
    return code


def _read(args: argparse.Namespace, table: str) -> TableView:
    """The table from, in order: --wal, --session, the newest running session, the newest
    ended one (of this run, if ``ZRAY_RUN_ID`` names one)."""
    history = Config.from_env().max_task_history
    filtered = any((args.state, args.name, args.node, args.job, args.since, args.filter))
    limit = args.limit if args.limit and not filtered and args.table != "task" else None
    if args.wal:
        return read_wal(args.wal, table, limit, history)
    if args.address:
        return read_live(_cluster_gcs(args.address), table, limit, args.address)
    session, what = _session(args.session)
    view = read_session(session, table, limit, history)
    view.notes.insert(0, f"read {what} {session}")
    return view


def _cluster_gcs(address: str) -> GcsAddress:
    """Where the GCS of the cluster at ``address`` is: from this machine's records, else
    from the node itself (a Hello, with the token of ZRAY_TOKEN)."""
    from zray.mesh.auth import Credentials, check_token
    from zray.mesh.join import hello
    from zray.mesh.records import find_cluster

    config = Config.from_env()
    try:
        cluster = find_cluster(address)
    except ConnectionError:
        token = os.environ.get("ZRAY_TOKEN", "").strip()
        if not token:
            raise ZrayError(f"no cluster of this machine's has a node at {address}; to read a "
                            "cluster elsewhere, set ZRAY_TOKEN to its token") from None
        check_token(token, "ZRAY_TOKEN")
        credentials = Credentials.from_token(token, config.encrypt_loopback)
        welcome = hello(address, credentials, config.join_timeout_s)
        return GcsAddress(welcome.gcs, welcome.gcs_publish, credentials)
    return cluster.gcs_address(config.encrypt_loopback)


def _session(given: str | None) -> tuple[str, str]:
    """The session to read, and which it is: ``given``, else the newest running one, else
    the newest ended one (of this run, if ``ZRAY_RUN_ID`` names one)."""
    if given is not None:
        if not os.path.exists(given) and os.path.exists(ended_path(given)):
            return ended_path(given), "the ended session"  # (its logs moved when it ended)
        return given, "the session"
    run = given_run_id() or "*"
    # (a node that joined a cluster has no GCS of its own: its head's session has it)
    session = newest([s for s in live_sessions(run) if shard_count(s)])
    if session is not None:
        return session, "the running session"
    session = newest(ended_sessions(run))
    if session is not None:
        return session, "the ended session"
    raise ZrayError("no zray session found, running or ended; start a cluster, or pass "
                    "--session or --wal")


if __name__ == "__main__":
    sys.exit(main())
