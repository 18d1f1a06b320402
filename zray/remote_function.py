"""``@zray.remote`` on a function: ``f.remote(...)`` submits a task and returns refs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from zray.exported import export_blob
from zray.generators import ObjectRefGenerator, is_generator, run_dynamic
from zray.objects.serialization import dumps
from zray.options import resolved, validate
from zray.specs import FunctionDescriptor, TaskOptions
from zray.util.placement_group import captured_group, placed, placement_of, strategy_of


class RemoteFunction:
    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self._fn = fn
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "task"))
        self._options = validate(options, for_actor=False, where=f"@zray.remote on {self._name}")
        if "num_returns" not in options and is_generator(fn):
            self._options["num_returns"] = "streaming"  # (Ray's default for a generator)
        self._dynamic: FunctionDescriptor | None = None  # its num_returns="dynamic" form
        self._descriptor: FunctionDescriptor | None = None
        self._task_options: TaskOptions | None = None
        self._options_for = ""  # the captured placement group they were made in (if any)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._name} cannot be called directly: use "
                        f"{self._name}.remote(...) instead of {self._name}(...), then zray.get() "
                        "the ref it returns")

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteFunction, (self._fn, self._options))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        group = captured_group()  # (a task whose group captures its children: theirs)
        if self._task_options is None or self._options_for != group:
            self._task_options, self._options_for = task_options(self._options), group
        return self._submit(args, kwargs, self._task_options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy call, for a DAG (zray.dag): submitted by ``execute``."""
        from zray.dag import FunctionNode

        return FunctionNode(self, args, kwargs)

    def options(self, **options: Any) -> _OptionsBound:
        merged = {**self._options,
                  **validate(options, for_actor=False, where=f"{self._name}.options()")}
        return _OptionsBound(self, task_options(merged))

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], opts: TaskOptions) -> Any:
        from zray.api import client_for_call

        client = client_for_call()
        if opts.generator == "dynamic":
            if self._dynamic is None:
                self._dynamic = FunctionDescriptor.of(export_blob(run_dynamic(self._fn)),
                                                      self._name)
            descriptor = self._dynamic
        else:
            if self._descriptor is None:
                self._descriptor = FunctionDescriptor.of(export_blob(self._fn), self._name)
            descriptor = self._descriptor
        _, refs = client.submit(descriptor, self._name, args, kwargs, opts)
        if opts.generator == "streaming":
            return ObjectRefGenerator(refs[0], client)
        return refs[0] if opts.num_returns == 1 else refs


class _OptionsBound:
    def __init__(self, function: RemoteFunction, opts: TaskOptions) -> None:
        self._function = function
        self._opts = opts

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._submit(args, kwargs, self._opts)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from zray.dag import FunctionNode

        return FunctionNode(self, args, kwargs)


def task_options(options: dict[str, Any]) -> TaskOptions:
    from zray.api import default_max_retries
    from zray.util.scheduling_strategies import as_wire

    resources = {"CPU": float(resolved(options, "num_cpus")),
                 "GPU": float(resolved(options, "num_gpus")),
                 "memory": float(options.get("memory") or 0)}
    resources.update({k: float(v) for k, v in (resolved(options, "resources") or {}).items()})
    retry = resolved(options, "retry_exceptions")
    retry_filter = b"*" if retry is True else b"" if not retry else dumps(tuple(retry))
    max_retries = resolved(options, "max_retries")
    strategy = strategy_of(options)
    num_returns = resolved(options, "num_returns")
    return TaskOptions(
        num_returns=1 if isinstance(num_returns, str) else num_returns,
        resources=placed({k: v for k, v in resources.items() if v > 0}, strategy,
                         "a task"),
        max_retries=default_max_retries() if max_retries is None else
        (2**31 if max_retries == -1 else max_retries),
        retry_filter=retry_filter,
        strategy=as_wire(strategy),
        placement=placement_of(strategy),
        runtime_env=options.get("runtime_env"),
        generator=num_returns if isinstance(num_returns, str) else "",
    )
