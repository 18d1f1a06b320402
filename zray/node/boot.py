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

from zray.node.worker_env import CACHE_VARIABLE
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
    # A node of a cluster (zray node start):
    parser.add_argument("--listen", default="", help="HOST:PORT of its mesh socket")
    parser.add_argument("--token-file", default="", help="the cluster's token")
    parser.add_argument("--cluster", default="", help="the head's HOST:PORT (not for a head)")
    parser.add_argument("--gcs-publish", default="", help="the shards' PUB endpoints")
    parser.add_argument("--supervisor-pid", type=int, default=0,
                        help="a head's GCS supervisor, stopped after the agent")
    parser.add_argument("--ready-file", default="", help="written once the node serves")
    parser.add_argument("--end-session", action="store_true",
                        help="end the session (keep its logs, remove the rest) at exit")
    args = parser.parse_args()
    pool = WorkerPool(["-m", "zray.node.worker", "--endpoint", args.endpoint,
                       "--agent-pid", str(os.getpid())],
                      dict(os.environ, PYTHONUNBUFFERED="1",
                           **{CACHE_VARIABLE: os.path.join(args.session, "runtime_env")}))
    for _ in range(max(1, int(json.loads(args.resources).get("CPU", 1)))):
        pool.start()

    from zray.node.agent import run_agent  # the heavy imports, while the workers start

    run_agent(args, pool)


if __name__ == "__main__":
    main()
