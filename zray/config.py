"""Every tunable of zray in one frozen dataclass.

Each field can be overridden from the environment as ``ZRAY_<FIELD NAME IN CAPS>``
(e.g. ``ZRAY_INLINE_OBJECT_MAX_BYTES=4096``). Tests shorten intervals through the
environment, never by patching internals. The driver passes its config to the processes
it starts, so one cluster runs with one config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    # Values up to this size travel inline in messages; bigger ones go to the mmap store.
    inline_object_max_bytes: int = 100 * 1024
    # ...except a leased task's arguments, which travel in its message up to this size.
    direct_arg_max_bytes: int = 8 * 1024 * 1024
    # Default store size when init() does not say: this fraction of total memory.
    object_store_fraction: float = 0.3
    # How long init() waits for the agent to answer before giving up.
    startup_timeout_s: float = 30.0
    # How long shutdown() waits for processes to exit before killing them.
    shutdown_timeout_s: float = 5.0
    # Idle poll period of every process loop: bounds how late batched work is flushed.
    poll_interval_ms: int = 20
    # Table updates are sent to the GCS this often (a row updated meanwhile goes once)...
    gcs_flush_ms: int = 20
    # ...in batches of at most this many rows...
    broker_batch_rows: int = 512
    # ...and resent if not acknowledged within this time (Lazy Pirate).
    broker_ack_timeout_s: float = 2.0
    # Messages a shard queues for one subscriber to its changes before it drops some (the
    # subscriber sees the gap and takes a fresh snapshot): bounds a shard's memory.
    gcs_publish_queue: int = 10_000
    # The broker keeps this many finished tasks; older ones are dropped (bounded history).
    max_task_history: int = 10_000
    # The write-ahead log is compacted into a snapshot once it holds this many rows.
    wal_compact_rows: int = 50_000
    # Calls sent ahead to an actor's worker beyond those it may run at once: the worker
    # runs them in mailbox order, so this only saves a round trip per call.
    actor_pipeline_depth: int = 32
    # Workers beyond num_cpus (started while tasks blocked in get) are stopped once they
    # have been idle for about this long.
    idle_worker_timeout_s: float = 10.0
    # Messages the agent need not see at once (a direct task's notice, a worker's report of
    # it) are sent together, at most this late: fewer, bigger messages for the agent.
    batch_window_ms: float = 2.0
    # An owner gives a leased worker back once it has had no task for this long (a new
    # task within it skips asking the agent); sooner if the agent has work waiting.
    lease_idle_ms: int = 20
    # Retries for a task whose worker died, unless the task says otherwise.
    default_max_retries: int = 3
    # What an owner keeps of its finished tasks (their arguments, mostly) to run them again
    # when a node that held their only result dies; the oldest go first past this (Ray's
    # RAY_max_lineage_bytes, with its default).
    max_lineage_bytes: int = 1 << 30
    # Where objects go when the store is full (zray/node/spilling.py); "": the session
    # directory, or ZRAY_HOME/spill/ if that is on tmpfs (memory, the very thing spilling
    # frees). At most object_spill_max_bytes there; 0: until its disk is 95% full (Ray's
    # local_fs_capacity_threshold).
    object_spill_dir: str = ""
    object_spill_max_bytes: int = 0
    # Ended sessions whose logs stay in ZRAY_HOME (zray/node/sessions.py), newest first.
    kept_sessions: int = 10
    # Whether the GCS shards write their tables to their SQLite logs (off: in memory only,
    # lost with the shard; for measuring what the log costs).
    gcs_log: bool = True
    # The largest frame a zray socket takes: a peer sending a bigger one is cut off before
    # it is read into memory. Senders split bigger messages or refuse them first. The
    # largest legitimate frames are a function's pickled code (max_function_bytes: refused
    # above it, with a hint; Ray refuses functions over 100 MB) and a leased task's arguments.
    max_frame_bytes: int = 64 * 1024 * 1024
    # TCP between a cluster's processes is encrypted (CURVE) beyond loopback; on loopback
    # only a token-derived password is checked (PLAIN), unless this is set.
    encrypt_loopback: bool = False
    # A node publishes its free resources (for peers to choose where work goes) at most
    # this often.
    load_report_ms: int = 100
    # Messages a node may have in flight to another, each way on each connection (credit
    # windows, zray/mesh/window.py); below the mesh sockets' high-water mark of 1000.
    mesh_window: int = 512
    # A cluster's node records its row (its heartbeat) at least this often; the GCS declares
    # a node silent for node_timeout_s dead (a DEAD row, final: zray/broker/liveness.py).
    # Ray's default is about as long (health checks every 3 s, 5 missed).
    node_heartbeat_s: float = 1.0
    node_timeout_s: float = 15.0
    # How long joining a node (``node start --peers``, ``init(address=)``) waits for it.
    join_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.node_timeout_s < 3 * self.node_heartbeat_s:
            raise ValueError(f"node_timeout_s={self.node_timeout_s} must be at least three "
                             f"heartbeats (node_heartbeat_s={self.node_heartbeat_s})")
        if not 2 <= self.mesh_window <= 900:
            raise ValueError(f"mesh_window={self.mesh_window} must be between 2 and 900 (below "
                             "the mesh sockets' high-water mark of 1000)")
        floor = 4 * max(self.inline_object_max_bytes, self.direct_arg_max_bytes, 256 * 1024)
        if self.max_frame_bytes < floor:
            raise ValueError(
                f"max_frame_bytes={self.max_frame_bytes} must be at least {floor}: four times "
                "inline_object_max_bytes and direct_arg_max_bytes (and at least 1 MiB)")

    @property
    def message_budget(self) -> int:
        """The bytes of values one message may carry inline (a task's results, its
        arguments' values, table rows): a quarter of a frame, the rest left for the
        fields around them."""
        return self.max_frame_bytes // 4

    @property
    def max_function_bytes(self) -> int:
        """The largest function or class (pickled) a cluster takes: its code goes in a
        frame of its own, or with a few fields in a GCS row."""
        return self.max_frame_bytes - 64 * 1024

    @property
    def max_refs_per_value(self) -> int:
        """Refs one value (or a task's arguments) may hold: the message that hands it over
        lists each (about 40 bytes), so its holder pins it."""
        return self.max_frame_bytes // 48

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> Config:
        """Defaults, overridden by ``ZRAY_*`` environment variables (bad values raise)."""
        overrides: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get("ZRAY_" + field.name.upper())
            if raw is None:
                continue
            kind: type = type(field.default)
            try:
                overrides[field.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(
                    f"environment variable ZRAY_{field.name.upper()}={raw!r} is not a valid "
                    f"{kind.__name__}; unset it or give "
                    f"{'1 or 0' if kind is bool else 'a number'}"
                ) from exc
        return cls(**overrides)  # type: ignore[arg-type]


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
