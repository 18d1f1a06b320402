"""Where a session's GCS lives: the shards' sockets and files in the session directory.

Kept apart from the shard and its supervisor (light to import): the driver and the agent
need the names, not the code behind them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (not imported at run time: this module is light)
    from zray.mesh.auth import Credentials


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


def gcs_file(session: str) -> str:
    """Where a head's GCS supervisor writes its shards' endpoints once all serve."""
    return os.path.join(session, "gcs.json")


@dataclass(frozen=True)
class GcsAddress:
    """Where a cluster's GCS is: its shards' ROUTER and PUB endpoints, in shard order, and
    the credentials its TCP sockets ask for (None for a private cluster's ipc sockets)."""
    shards: list[str]
    publish: list[str]
    credentials: Credentials | None = field(default=None, repr=False)


def gcs_address(session: str, shards: int, encrypt_loopback: bool = False) -> GcsAddress:
    """The GCS of the cluster whose session (a private cluster's, or a head's) this is."""
    try:
        with open(gcs_file(session)) as f:
            where = json.load(f)
    except FileNotFoundError:
        return GcsAddress(endpoints(session, shards),
                          [publish_endpoint(session, i) for i in range(shards)])
    from zray.mesh.auth import load_credentials

    token_file = where.get("token_file")  # (none for a private cluster's ipc shards)
    return GcsAddress(where["gcs"], where["gcs_publish"],
                      load_credentials(token_file, encrypt_loopback) if token_file else None)
