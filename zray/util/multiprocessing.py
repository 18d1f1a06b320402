"""``Pool``: a drop-in for ``multiprocessing.Pool`` whose work runs on zray, as Ray's
``ray.util.multiprocessing.Pool``.

    with Pool() as pool:                       # one actor per CPU of the cluster
        pool.map(f, range(100))                # [f(0), f(1), ...]
        for y in pool.imap_unordered(f, xs):   # as they finish
            ...

Each of its ``processes`` is an actor (``initializer(*initargs)`` runs there first); work
goes out in chunks (``chunksize``), one chunk a call, spread over the actors. A function's
exception is raised where its result is read, as multiprocessing does.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zray
from zray.objects.refs import ObjectRef

__all__ = ["Pool", "AsyncResult"]


class _PoolCore:
    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run(self, func: Callable[..., Any], chunk: list[Any], star: bool) -> list[Any]:
        return [func(*item) if star else func(item) for item in chunk]


_PoolProcess: Any = zray.remote(num_cpus=1)(_PoolCore)  # (Any: an actor class)


class AsyncResult:
    """A result of ``apply_async``/``map_async``, as multiprocessing's. Its callbacks run
    on zray's futures thread (no thread of its own): like multiprocessing's, they must
    return quickly."""

    def __init__(self, refs: list[ObjectRef], single: bool,
                 callback: Callable[[Any], Any] | None = None,
                 error_callback: Callable[[BaseException], Any] | None = None) -> None:
        self._single = single
        self._callbacks = callback, error_callback
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._futures = [ref.future() for ref in refs]
        self._left = len(self._futures)
        self._lock = threading.Lock()
        for future in self._futures:
            future.add_done_callback(self._one_done)

    def _one_done(self, _: object) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        try:
            chunks = [future.result() for future in self._futures]
            values = [value for chunk in chunks for value in chunk]
            self._value = values[0] if self._single else values
        except BaseException as exc:  # (the function's error)
            self._error = exc
        callback, error_callback = self._callbacks
        try:  # (before it is ready, as multiprocessing's: whoever waited sees its effect)
            if self._error is None and callback is not None:
                callback(self._value)
            elif self._error is not None and error_callback is not None:
                error_callback(self._error)
        finally:
            self._done.set()

    def get(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"the result was not ready within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def ready(self) -> bool:
        return self._done.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError("the result is not ready yet")
        return self._error is None


class Pool:
    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., Any] | None = None,
                 initargs: Iterable[Any] | None = None, maxtasksperchild: int | None = None,
                 context: Any = None, ray_address: str | None = None) -> None:
        if not zray.is_initialized():
            zray.init(address=ray_address)
        if processes is None:
            processes = max(1, int(zray.cluster_resources().get("CPU", 1)))
        if not isinstance(processes, int) or processes < 1:
            raise ValueError(f"Pool: processes must be an int >= 1, got {processes!r}")
        self._processes = processes
        self._actors = [_PoolProcess.remote(initializer, tuple(initargs or ()))
                        for _ in range(processes)]
        self._turn = itertools.count()
        self._closed = False

    # --- one call --------------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
                    kwds: dict[str, Any] | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None
                    ) -> AsyncResult:
        self._check_open()
        kwds = kwds or {}
        ref = self._send(lambda *a: func(*a, **kwds), [tuple(args)], star=True)
        return AsyncResult([ref], True, callback, error_callback)

    # --- many ------------------------------------------------------------------------

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[Any]:
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  chunksize: int | None = None, callback: Callable[[Any], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None
                  ) -> AsyncResult:
        return AsyncResult(self._chunks(func, list(iterable), chunksize, False), False,
                           callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[Any], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None
                      ) -> AsyncResult:
        items = [tuple(args) for args in iterable]
        return AsyncResult(self._chunks(func, items, chunksize, True), False, callback,
                           error_callback)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int = 1) -> Iterator[Any]:
        """Results in order, each as soon as it and those before it are done."""
        for ref in self._chunks(func, list(iterable), chunksize, False):
            yield from zray.get(ref)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> Iterator[Any]:
        """Results as they finish."""
        pending = self._chunks(func, list(iterable), chunksize, False)
        while pending:
            ready, pending = zray.wait(pending, num_returns=1)
            yield from zray.get(ready[0])

    # --- the pool's life -------------------------------------------------------------

    def close(self) -> None:
        """No more work: what was submitted still runs."""
        self._closed = True

    def terminate(self) -> None:
        """Stop the pool's processes now."""
        self._closed = True
        for actor in self._actors:
            zray.kill(actor)
        self._actors = []

    def join(self) -> None:
        if not self._closed:
            raise ValueError("Pool.join() needs close() or terminate() first")

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def _chunks(self, func: Callable[..., Any], items: list[Any], chunksize: int | None,
                star: bool) -> list[ObjectRef]:
        self._check_open()
        if chunksize is None:  # (as multiprocessing: about four chunks a process)
            chunksize = max(1, math.ceil(len(items) / (self._processes * 4)))
        return [self._send(func, items[i : i + chunksize], star)
                for i in range(0, len(items), chunksize)]

    def _send(self, func: Callable[..., Any], chunk: list[Any], star: bool) -> ObjectRef:
        actor = self._actors[next(self._turn) % len(self._actors)]
        return actor.run.remote(func, chunk, star)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")
