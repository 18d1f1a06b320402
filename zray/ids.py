"""Typed identifiers, derived from lineage.

A task id is a hash of its parent task's id and the parent's submission counter, and an
object id is the id of the task that makes it plus a return index (``put`` objects set the
top bit of the index). Re-running a task therefore re-creates the same ids, which is what
retries, lineage reconstruction and log replay stand on.

The ids are ``bytes`` at run time (hashable, cheap, wire-ready); the ``NewType`` wrappers keep
them apart for the type checker.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import NewType

JobID = NewType("JobID", bytes)  # 4 random bytes per driver
TaskID = NewType("TaskID", bytes)  # 16 bytes
ObjectID = NewType("ObjectID", bytes)  # TaskID + 4-byte index
WorkerID = NewType("WorkerID", bytes)  # 8 random bytes per process that talks to an agent
NodeID = NewType("NodeID", bytes)  # 8 random bytes per node agent

TASK_ID_BYTES = 16
OBJECT_ID_BYTES = TASK_ID_BYTES + 4
_PUT_BIT = 0x8000_0000
PUT_ATTEMPT_SHIFT = 20  # a task's puts in attempt k are numbered from k << 20
_INDEX = struct.Struct(">I")


def new_job_id() -> JobID:
    return JobID(os.urandom(4))


def new_worker_id() -> WorkerID:
    return WorkerID(os.urandom(8))


def new_node_id() -> NodeID:
    return NodeID(os.urandom(8))


def driver_task_id(job_id: JobID) -> TaskID:
    """The root of a job's lineage: the driver acts as a task with this id."""
    return TaskID(hashlib.blake2b(b"driver" + job_id, digest_size=TASK_ID_BYTES).digest())


def child_task_id(parent: bytes, counter: int) -> TaskID:
    return TaskID(
        hashlib.blake2b(parent + counter.to_bytes(8, "big"), digest_size=TASK_ID_BYTES).digest()
    )


def return_object_id(task: bytes, index: int) -> ObjectID:
    return ObjectID(task + _INDEX.pack(index))


def put_object_id(task: bytes, counter: int) -> ObjectID:
    return ObjectID(task + _INDEX.pack(_PUT_BIT | counter))


def task_of(object_id: bytes) -> TaskID:
    return TaskID(object_id[:TASK_ID_BYTES])


def is_put_object(object_id: bytes) -> bool:
    return bool(_INDEX.unpack_from(object_id, TASK_ID_BYTES)[0] & _PUT_BIT)


def short(any_id: bytes) -> str:
    """A short hex form for logs and error messages."""
    return any_id.hex()[:12]
