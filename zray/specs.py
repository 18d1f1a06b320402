"""What describes a task: the function it runs, its options, and the context it runs in."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from zray.ids import PUT_ATTEMPT_SHIFT, TaskID


@dataclass
class TaskContext:
    """Where new ids come from: the running task (or the driver's root task)."""

    task_id: TaskID
    name: str = "driver"
    job_id: bytes = b""
    gpu_ids: list[int] = field(default_factory=list)
    attempt: int = 0
    actor_id: bytes = b""  # the actor whose method (or creation) runs
    placement: dict[str, Any] = field(default_factory=dict)  # its placement group's, if any
    submitted: Iterator[int] = field(default_factory=itertools.count)
    puts: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        # A retry re-creates its children's ids (lineage: the agent merges the duplicates)
        # but must not reuse its puts' ids: a put cannot be rebuilt, and the first
        # attempt's objects may still be alive.
        self.puts = itertools.count(self.attempt << PUT_ATTEMPT_SHIFT)


@dataclass(frozen=True)
class FunctionDescriptor:
    function_id: bytes
    name: str
    blob: bytes

    @classmethod
    def of(cls, blob: bytes, name: str) -> FunctionDescriptor:
        return cls(hashlib.blake2b(blob, digest_size=16).digest(), name, blob)


@dataclass(frozen=True)
class TaskOptions:
    num_returns: int
    resources: dict[str, float]
    max_retries: int
    retry_filter: bytes
    strategy: dict[str, Any] = field(default_factory=dict)  # (scheduling_strategies.as_wire)
    placement: dict[str, Any] = field(default_factory=dict)  # (placement_group.placement_of)
    runtime_env: dict[str, Any] | None = None  # as given (None: its submitter's); checked
    generator: str = ""  # "streaming" or "dynamic": num_returns given so (zray/generators.py)
