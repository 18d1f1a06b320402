"""``zray_dask_get``: a Dask scheduler that runs the graph's tasks on zray, as Ray's
``ray.util.dask.ray_dask_get``::

    import dask
    with dask.config.set(scheduler=zray_dask_get):   # (or ray_dask_get)
        x.sum().compute()

Dask's own local scheduler walks the graph (``dask.local.get_async``: order, caching,
errors, callbacks), and each of its batches of tasks runs as a zray task (named
``dask_tasks``), with the values it needs passed in. Needs dask >= 2024.1.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import zray

__all__ = ["zray_dask_get", "ray_dask_get"]


def dask_tasks(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """In a worker: one batch of Dask tasks (dask's ``batch_execute_tasks``)."""
    return fn(*args, **kwargs)


_run = zray.remote(dask_tasks)


def _submit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
    return _run.remote(fn, *args, **kwargs).future()


def zray_dask_get(dsk: Any, keys: Any, num_workers: int | None = None, **kwargs: Any) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` on zray (a private cluster is started
    if this process has not called ``zray.init``)."""
    from dask.local import get_async

    if not zray.is_initialized():
        zray.init()
    if num_workers is None:
        num_workers = max(1, int(zray.cluster_resources().get("CPU", 1)))
    return get_async(_submit, num_workers, dsk, keys, **kwargs)


ray_dask_get = zray_dask_get  # (Ray's name)
