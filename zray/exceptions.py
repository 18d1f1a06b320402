"""The whole zray exception hierarchy, with Ray's names as aliases for ported code.

``TaskError`` is what ``get`` raises for a task that raised: its ``as_instanceof_cause()``
builds an exception that is an instance of both ``TaskError`` and the user's class, so
``except ValueError`` in the caller still works, and its message is the remote traceback
with zray's own frames taken out.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ZrayError",
    "TaskError",
    "WorkerCrashedError",
    "ActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "GetTimeoutError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectStoreFullError",
    "TaskCancelledError",
    "NodeDiedError",
    "AuthenticationError",
    "RuntimeEnvSetupError",
    "RayError",
    "RayTaskError",
    "RayActorError",
]


class ZrayError(Exception):
    """Base of every error zray raises on its own account."""


class TaskError(ZrayError):
    """A task raised: carries the remote traceback and the original exception as ``cause``."""

    def __init__(
        self, cause: BaseException | None, function_name: str, traceback_text: str, pid: int
    ) -> None:
        # Not super(): in the dual class the next __init__ would be the user's class's.
        Exception.__init__(self, function_name, traceback_text, pid)
        self.cause = cause
        self.function_name = function_name
        self.traceback_text = traceback_text
        self.pid = pid
        if cause is not None:
            self.__cause__ = cause

    def __str__(self) -> str:
        return f"{self.function_name}() failed in pid={self.pid}:\n{self.traceback_text}"

    def __reduce__(self) -> tuple[Any, ...]:
        cause = None if self.cause is None else (type(self.cause), self.cause.args,
                                                 dict(vars(self.cause)))
        return (_rebuild_task_error, (cause, self.function_name, self.traceback_text, self.pid))

    def as_instanceof_cause(self) -> TaskError:
        """This error as an instance of both ``TaskError`` and the cause's class."""
        if self.cause is None or isinstance(self.cause, TaskError):
            return self
        dual = _dual_class(type(self.cause))
        if dual is None:
            return self
        try:
            err = dual(self.cause, self.function_name, self.traceback_text, self.pid)
        except Exception:
            return self
        for key, value in vars(self.cause).items():
            err.__dict__.setdefault(key, value)
        return err


def _rebuild_task_error(cause_state: tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]
                        | None, function_name: str, traceback_text: str, pid: int) -> TaskError:
    """Unpickle a TaskError. The cause is rebuilt without calling its ``__init__``, which
    may take arguments that ``args`` does not hold (a common reason exceptions fail to
    unpickle); if even that fails, the error keeps only the remote traceback's text."""
    cause: BaseException | None = None
    if cause_state is not None:
        try:
            cls, args, attributes = cause_state
            cause = cls.__new__(cls)
            cause.args = args
            cause.__dict__.update(attributes)
        except Exception:
            cause = None
    return TaskError(cause, function_name, traceback_text, pid)


_DUAL_CLASSES: dict[type, type[TaskError] | None] = {}


def _dual_class(cause_class: type[BaseException]) -> type[TaskError] | None:
    """``class TaskError(ValueError)(TaskError, ValueError)``, cached; None if impossible."""
    if cause_class not in _DUAL_CLASSES:
        try:
            dual: type[TaskError] | None = type(
                f"TaskError({cause_class.__name__})",
                (TaskError, cause_class),
                {
                    "__init__": TaskError.__init__,
                    "__str__": TaskError.__str__,
                    "__reduce__": TaskError.__reduce__,
                    "__module__": cause_class.__module__,
                },
            )
        except TypeError:  # e.g. an instance lay-out conflict with a C exception class
            dual = None
        _DUAL_CLASSES[cause_class] = dual
    return _DUAL_CLASSES[cause_class]


class WorkerCrashedError(ZrayError):
    """The worker process running a task died (segfault, os._exit, OOM kill) too often."""


class ActorError(ZrayError):
    """Base of the errors about an actor rather than about one of its methods."""


class ActorDiedError(ActorError):
    """The actor is dead and will not come back."""


class ActorUnavailableError(ActorError):
    """The actor is restarting; the call may succeed if tried again."""


class GetTimeoutError(ZrayError, TimeoutError):
    """``get`` or ``wait`` ran out of time before the objects were ready."""


class ObjectLostError(ZrayError):
    """An object's value is gone and cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that submitted the task making this object died before it finished."""


class ObjectReconstructionFailedError(ObjectLostError):
    """An object whose only copy was lost could not be rebuilt from its lineage."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """Rebuilding it would run its task more often than its ``max_retries`` allow."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """Its task's lineage was dropped to keep the owner's lineage under
    ``max_lineage_bytes``."""


class ObjectStoreFullError(ZrayError):
    """The object store has no room for a new object, even after freeing what it could."""


class TaskCancelledError(ZrayError):
    """The task was cancelled with ``zray.cancel``."""


class NodeDiedError(ZrayError):
    """The node that held a task or object stopped answering."""


class TaskUnschedulableError(ZrayError):
    """The task can run on no node its scheduling strategy allows (an affinity to a node
    that is dead or unknown)."""


class ActorUnschedulableError(ActorError):
    """The actor can be placed on no node its scheduling strategy allows."""


class AuthenticationError(ZrayError):
    """A peer could not prove it holds the cluster's token."""


class RuntimeEnvSetupError(ZrayError):
    """A worker could not set up its work's runtime_env (a package could not be fetched or
    unpacked, or the setup hook raised): the work never ran."""


# Ray's names, so `import zray as ray` ports code unchanged.
RayError = ZrayError
RayTaskError = TaskError
RayActorError = ActorError
