"""``zray.get_runtime_context()``: where the calling code runs, by Ray's names."""

from __future__ import annotations

from typing import Any

from zray.core import CoreClient


class RuntimeContext:
    """What the driver, task or actor calling it is: ids as hex strings, as in Ray."""

    def __init__(self, client: CoreClient) -> None:
        self._client = client

    def get_node_id(self) -> str:
        return self._client.node_id.hex()

    def get_job_id(self) -> str:
        return self._client.context.job_id.hex()

    def get_task_id(self) -> str | None:
        """The running task's id; None in a driver."""
        if self._client.kind == "driver":
            return None
        return self._client.context.task_id.hex()

    def get_actor_id(self) -> str | None:
        """The actor whose method runs; None outside an actor."""
        actor_id = self._client.context.actor_id
        return actor_id.hex() if actor_id else None

    def get_worker_id(self) -> str:
        return self._client.worker_id.hex()

    def get_assigned_resources(self) -> dict[str, Any]:
        """The GPUs the running task holds (zray does not tell a task its CPU share)."""
        gpus = self._client.context.gpu_ids
        return {"GPU": float(len(gpus))} if gpus else {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """Ray's form of the accelerators the running task holds: {"GPU": ["0", ...]}."""
        return {"GPU": [str(i) for i in self._client.context.gpu_ids]}

    def is_canceled(self) -> bool:
        """Whether the running task or actor call was cancelled (``zray.cancel``): a
        running call of a sync actor is not interrupted, and may check this."""
        if self._client.kind == "driver":
            raise RuntimeError("is_canceled() is for a task or actor call, not a driver")
        return self._client.context.task_id in self._client.cancelled

    @property
    def namespace(self) -> str:
        return self._client.namespace

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The runtime_env this process's work runs in, resolved: env_vars as given,
        directories and a pickled hook as the content hashes of their packages."""
        return self._client.runtime_envs.fields()

    def get(self) -> dict[str, Any]:
        """Ray's older form: the ids in one dict."""
        return {"node_id": self.get_node_id(), "job_id": self.get_job_id(),
                "task_id": self.get_task_id(), "actor_id": self.get_actor_id(),
                "namespace": self.namespace}
