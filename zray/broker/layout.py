"""Where a session's GCS lives: the shards' sockets and files in the session directory.

Kept apart from the shard and its supervisor (light to import): the driver and the agent
need the names, not the code behind them.
"""

from __future__ import annotations

import os


def endpoint(session: str, index: int) -> str:
    return f"ipc://{session}/broker-{index}.sock"


def endpoints(session: str, shards: int) -> list[str]:
    """The endpoints of a session's K shards, in shard order (see zray.broker.tables)."""
    return [endpoint(session, i) for i in range(shards)]


def publish_endpoint(session: str, index: int) -> str:
    """Where shard ``index`` publishes its rows as they change (zray/broker/follow.py)."""
    return f"ipc://{session}/broker-{index}.pub"


def wal_path(session: str, index: int) -> str:
    return os.path.join(session, f"broker-{index}.wal")


def failed_path(session: str, index: int) -> str:
    """Why the supervisor gave up on shard ``index``, if it did."""
    return os.path.join(session, f"broker-{index}.failed")
