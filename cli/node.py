"""``zray node start --head | --peers HOST:PORT[,...]`` and ``zray node stop [--force]``.

``start`` returns once the node accepts work, with exit 0 and the node's address alone on
the last line of stdout (``HOST:PORT``; messages go to stderr); ``--block`` stays in the
foreground and stops the node on Ctrl-C. ``stop`` stops every node this user started on
this machine. See zray/node/start.py for what runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from zray.config import Config
from zray.exceptions import ZrayError
from zray.mesh.join import parse_address
from zray.node.resources import default_store_size, node_resources
from zray.node.start import NodeOptions, start_node, stop_node_group, stop_nodes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start a node: the head of a new cluster, or one "
                           "joining a cluster through any of its nodes")
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start a new cluster (its GCS too)")
    role.add_argument("--peers", help="HOST:PORT[,...] of running nodes to join through")
    start.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    start.add_argument("--port", type=int, default=None,
                       help="the port (a head's default 6380; others a free one; 0: free)")
    start.add_argument("--shards", type=int, default=2, help="GCS shards (--head)")
    start.add_argument("--num-cpus", type=int, default=None)
    start.add_argument("--num-gpus", type=int, default=None)
    start.add_argument("--resources", default=None, help='custom resources, JSON: {"a": 1}')
    start.add_argument("--object-store-memory", type=int, default=None, help="bytes")
    start.add_argument("--token-file", default="", help="the cluster's token (when its head "
                       "runs on another machine; or set ZRAY_TOKEN)")
    start.add_argument("--block", action="store_true", help="stay in the foreground; Ctrl-C "
                       "stops the node")
    stop = sub.add_parser("stop", help="stop every node this user started on this machine")
    stop.add_argument("--force", action="store_true", help="kill them (SIGKILL), as a crash")


def run(args: argparse.Namespace) -> int:
    config = Config.from_env()
    if args.action == "stop":
        stopped = stop_nodes(config, args.force)
        print(f"zray node stop: stopped {len(stopped)} node(s)", file=sys.stderr)
        return 0
    try:
        options = _options(args, config)
        node = start_node(options, config)
    except (ZrayError, ValueError) as exc:
        print(f"zray node start: {exc}", file=sys.stderr)
        return 1
    role = "head of a new cluster" if options.head else f"joined the cluster of {node.cluster}"
    print(f"zray node start: node {node.node_id[:8]} at {node.address}, {role}; its logs in "
          f"{node.session}; `zray node stop` stops it", file=sys.stderr)
    print(node.address, flush=True)
    if args.block:
        _block_until_interrupted()
        stop_node_group([node], config)  # (this node: others started here run on)
    return 0


def _options(args: argparse.Namespace, config: Config) -> NodeOptions:
    custom = json.loads(args.resources) if args.resources else None
    if custom is not None and not isinstance(custom, dict):
        raise ValueError(f"--resources must be a JSON object, got {args.resources!r}")
    peers = [p.strip() for p in (args.peers or "").split(",") if p.strip()]
    for peer in peers:
        parse_address(peer)
    if args.shards < 1:
        raise ValueError(f"--shards must be at least 1, got {args.shards}")
    port = args.port if args.port is not None else (6380 if args.head else 0)
    store_size = args.object_store_memory or default_store_size(config)
    return NodeOptions(head=args.head, host=args.host, port=port, peers=peers,
                       shards=args.shards,
                       resources=node_resources(args.num_cpus, args.num_gpus, custom,
                                                "zray node start", store_size),
                       store_size=store_size, token_file=args.token_file)


def _block_until_interrupted() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
