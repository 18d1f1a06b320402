"""The node agent's entry point: its first workers are on their way before it imports.

A worker takes about as long to start (interpreter, imports) as the agent itself, so the
agent starts them first, with nothing but the standard library loaded, and only then imports
the rest; the workers connect as soon as the agent's socket is bound. This is what keeps
``init`` + first task short.

    python -m zray.node.boot --session DIR --endpoint ipc://... (see --help)
"""

from __future__ import annotations

import argparse
import json
import os

from zray.node.worker_pool import WorkerPool


def main() -> None:
    parser = argparse.ArgumentParser(description="zray node agent (started by zray.init)")
    parser.add_argument("--session", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--gcs", required=True, help="the GCS shards' endpoints, in shard "
                        "order, comma-separated")
    parser.add_argument("--store-path", required=True)
    parser.add_argument("--store-size", type=int, required=True)
    parser.add_argument("--resources", required=True, help='JSON, e.g. {"CPU": 2}')
    parser.add_argument("--owner-pid", type=int, default=0,
                        help="a private cluster's driver: stop the cluster when it exits")
    args = parser.parse_args()
    pool = WorkerPool(["-m", "zray.node.worker", "--endpoint", args.endpoint,
                       "--agent-pid", str(os.getpid())],
                      dict(os.environ, PYTHONUNBUFFERED="1"))
    for _ in range(max(1, int(json.loads(args.resources).get("CPU", 1)))):
        pool.start()

    from zray.node.agent import run_agent  # the heavy imports, while the workers start

    run_agent(args, pool)


if __name__ == "__main__":
    main()
