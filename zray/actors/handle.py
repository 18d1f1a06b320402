"""``@zray.remote`` on a class: ``Cls.remote(...)`` makes an actor, ``h.method.remote(...)``
calls it. Handles are plain values: pass them to tasks and actors, return them, store them.

A handle counts as a reference to its actor, like an ObjectRef to its object: when every
handle in every process is gone, the agent stops the actor (unless it is named or detached).
"""

from __future__ import annotations

import inspect
from typing import Any

from zray.core import current_counter
from zray.exported import export_blob
from zray.generators import ObjectRefGenerator, is_generator
from zray.objects.refs import ObjectRef
from zray.objects.serialization import record_contained_ref
from zray.options import resolved, validate
from zray.remote_function import task_options
from zray.specs import FunctionDescriptor, TaskOptions

_NUM_RETURNS_ATTR = "__zray_num_returns__"
GROUP_ATTR = "__zray_concurrency_group__"  # (on a method: @zray.method's)


# Every actor answers this (Ray's built-in): True once its __init__ has run.
READY_METHOD = "__ray_ready__"


def method(*, num_returns: int | str | None = None,
           concurrency_group: str | None = None) -> Any:
    """``@zray.method(num_returns=2, concurrency_group="io")`` on an actor method: its
    calls run in that group of the actor's ``concurrency_groups``."""
    if num_returns is not None:
        validate({"num_returns": num_returns}, for_actor=False, where="@zray.method")
    if concurrency_group is not None and not isinstance(concurrency_group, str):
        raise TypeError(f"@zray.method: concurrency_group must be a str, got "
                        f"{concurrency_group!r}")

    def mark(fn: Any) -> Any:
        if num_returns is not None:
            setattr(fn, _NUM_RETURNS_ATTR, num_returns)
        if concurrency_group is not None:
            setattr(fn, GROUP_ATTR, concurrency_group)
        return fn

    return mark


class ActorClass:
    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._name = cls.__qualname__
        self._options = validate(options, for_actor=True, where=f"@zray.remote on {self._name}")
        members = inspect.getmembers(cls, callable)
        self._methods = {name: getattr(fn, _NUM_RETURNS_ATTR, _default_returns(fn))
                         for name, fn in members if not name.startswith("__")}
        self._methods[READY_METHOD] = 1
        self._is_async = any(is_async(fn) for _, fn in members)
        self._groups_used = {name: getattr(fn, GROUP_ATTR) for name, fn in members
                             if hasattr(fn, GROUP_ATTR)}
        self._descriptor: FunctionDescriptor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._name} cannot be instantiated directly: use "
                        f"{self._name}.remote(...) instead of {self._name}(...)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorClass, (self._cls, self._options))

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._create(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy actor, for a DAG (zray.dag): made by each ``execute``."""
        from zray.dag import ClassNode

        return ClassNode(self, args, kwargs)

    def options(self, **options: Any) -> _BoundActorClass:
        merged = {**self._options,
                  **validate(options, for_actor=True, where=f"{self._name}.options()")}
        return _BoundActorClass(self, merged)

    def _create(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                options: dict[str, Any]) -> ActorHandle:
        from zray.api import client_for_call

        client = client_for_call()
        if self._descriptor is None:
            self._descriptor = FunctionDescriptor.of(export_blob(self._cls), self._name)
        task = task_options({**options, "num_cpus": options.get("num_cpus", 0)})
        groups = options.get("concurrency_groups") or {}
        for method_name, group in self._groups_used.items():
            if group not in groups:
                raise ValueError(
                    f"{self._name}.{method_name} is in concurrency group {group!r}, which "
                    f"the actor's concurrency_groups ({sorted(groups) or 'none'}) does not "
                    "declare; pass concurrency_groups={...} to @zray.remote or .options()")
        actor_options = {
            "class_name": self._name, "methods": self._methods,
            "name": options.get("name") or "", "namespace": options.get("namespace") or "",
            "lifetime": options.get("lifetime") or "",
            "max_restarts": _unlimited(resolved(options, "max_restarts")),
            "max_task_retries": _unlimited(resolved(options, "max_task_retries")),
            "max_concurrency": resolved(options, "max_concurrency")
            or (1000 if self._is_async else 1),
            "concurrency_groups": groups,
            "strategy": task.strategy,
        }
        actor_id, _ = client.submit(self._descriptor, f"{self._name}.__init__", args, kwargs,
                                    TaskOptions(0, task.resources, 0, b"",
                                                placement=task.placement,
                                                runtime_env=task.runtime_env),
                                    actor_options=actor_options)
        handle = ActorHandle(actor_id, self._name, self._methods, created=True)
        if actor_options["name"]:  # a taken name fails here, at the call site, as in Ray
            error = client.query("actor_created", actor_id=actor_id.hex())["error"]
            if error:
                raise ValueError(error)
        return handle


class _BoundActorClass:
    def __init__(self, actor_class: ActorClass, options: dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._actor_class._create(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from zray.dag import ClassNode

        return ClassNode(self, args, kwargs)


class ActorHandle:
    """A reference to an actor; ``h.method.remote(...)`` calls it."""

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int | str],
                 created: bool = False) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._counter = current_counter()
        if self._counter is not None:
            if created:
                self._counter.created(actor_id)
            else:
                self._counter.borrowed(actor_id)

    def __del__(self) -> None:
        if getattr(self, "_counter", None) is not None:
            self._counter.dropped(self._actor_id)  # type: ignore[union-attr]

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name not in methods:
            raise AttributeError(f"actor {self.__dict__.get('_class_name')} has no method "
                                 f"{name!r}")
        return ActorMethod(self, name, methods[name])

    def __reduce__(self) -> tuple[Any, ...]:
        record_contained_ref(self._actor_id)
        return (ActorHandle, (self._actor_id, self._class_name, self._methods))

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    @property
    def actor_id(self) -> bytes:
        return self._actor_id


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int | str) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self._name} cannot be called directly: use "
                        f"handle.{self._name}.remote(...)")

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(args, kwargs, self._num_returns)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy call of this actor's method, for a DAG (zray.dag)."""
        from zray.dag import ClassMethodNode

        return ClassMethodNode(self._handle, self._name, {}, args, kwargs)

    def options(self, **options: Any) -> _BoundMethod:
        validate(options, for_actor=False, where=f"{self._name}.options()")
        return _BoundMethod(self, options.get("num_returns", self._num_returns))

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any],
              num_returns: int | str) -> Any:
        from zray.api import client_for_call

        if num_returns == "dynamic":
            raise NotImplementedError(
                f"actor method {self._name}: num_returns=\"dynamic\" is not supported for "
                "actor methods by zray; a generator method streams its values (the default, "
                "num_returns=\"streaming\")")
        client = client_for_call()
        _, refs = client.submit(
            None, self._name, args, kwargs,
            TaskOptions(1 if num_returns == "streaming" else int(num_returns), {}, 0, b""),
            actor_id=self._handle.actor_id)
        if num_returns == "streaming":
            return ObjectRefGenerator(refs[0], client)
        return refs[0] if num_returns == 1 else refs


class _BoundMethod:
    def __init__(self, method: ActorMethod, num_returns: int | str) -> None:
        self._method = method
        self._num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef]:
        return self._method._call(args, kwargs, self._num_returns)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from zray.dag import ClassMethodNode

        return ClassMethodNode(self._method._handle, self._method._name,
                               {"num_returns": self._num_returns}, args, kwargs)


def is_async(fn: Any) -> bool:
    """Whether an actor's method runs on its event loop (``async def``, with or without
    ``yield``): a class with one is an async actor."""
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _default_returns(fn: Any) -> int | str:
    """A method's num_returns when not given: a generator streams, as in Ray."""
    return "streaming" if is_generator(fn) else 1


def _unlimited(value: int) -> int:
    return 2**31 if value == -1 else value
