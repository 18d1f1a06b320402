"""Ray's lazy DAG API: build a graph of calls with ``.bind(...)``, run it with ``.execute()``.

::

    with InputNode() as inp:
        dag = g.bind(f.bind(inp[0]), inp.scale)       # FunctionNode(s)
    zray.get(dag.execute(2, scale=3))                   # submits f, then g: an ObjectRef

    counter = Counter.bind(10)                          # ClassNode: an actor per execute
    dag = MultiOutputNode([counter.add.bind(inp), counter.get.bind()])

``execute(*args, **kwargs)`` submits every node the output depends on, once each, in an
order where a node's inputs are submitted before it: its arguments that are nodes become
the refs (or, for a ClassNode, the actor handle) they produced, anywhere inside lists,
tuples and dicts. ``InputNode()`` stands for the arguments of ``execute``: itself when
there is one positional argument, else ``inp[i]`` / ``inp["key"]`` / ``inp.key``.
Nothing is submitted before ``execute``. Ray's compiled graphs
(``experimental_compile``) are not built: they raise, naming the way that works.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DAGNode", "FunctionNode", "ClassNode", "ClassMethodNode", "InputNode",
           "InputAttributeNode", "MultiOutputNode"]


class DAGNode:
    """A call not made yet: ``execute`` makes it, and every call it depends on."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._bound_args = args
        self._bound_kwargs = kwargs

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the graph this node ends; returns this node's result (refs, a handle)."""
        return _Execution(args, kwargs).value_of(self)

    def experimental_compile(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "compiled graphs (experimental_compile) are not supported by zray; call "
            ".execute() on the DAG instead: it submits the same tasks and actor calls")

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_describe(self)})"


class FunctionNode(DAGNode):
    def __init__(self, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._function = function  # a RemoteFunction, or one with .options()

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        return self._function.remote(*args, **kwargs)


class ClassNode(DAGNode):
    """An actor made at each ``execute``; ``node.method.bind(...)`` calls it."""

    def __init__(self, actor_class: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._actor_class = actor_class

    def __getattr__(self, name: str) -> _MethodBinder:
        if name.startswith("_"):
            raise AttributeError(name)
        return _MethodBinder(self, name)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        return self._actor_class.remote(*args, **kwargs)


class _MethodBinder:
    def __init__(self, actor: Any, name: str, options: dict[str, Any] | None = None) -> None:
        self._actor, self._name, self._options = actor, name, options or {}

    def options(self, **options: Any) -> _MethodBinder:
        return _MethodBinder(self._actor, self._name, {**self._options, **options})

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        return ClassMethodNode(self._actor, self._name, self._options, args, kwargs)


class ClassMethodNode(DAGNode):
    """A call of a method of a ClassNode's actor, or of an actor handle's."""

    def __init__(self, actor: Any, name: str, options: dict[str, Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._actor, self._name, self._options = actor, name, options

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        handle = execution.value_of(self._actor) if isinstance(self._actor, DAGNode) \
            else self._actor
        method = getattr(handle, self._name)
        if self._options:
            method = method.options(**self._options)
        return method.remote(*args, **kwargs)


class InputNode(DAGNode):
    """The arguments ``execute`` is given (use as ``with InputNode() as inp:``)."""

    def __init__(self) -> None:
        super().__init__((), {})

    def __enter__(self) -> InputNode:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        return InputAttributeNode(key)

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(name)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        given = execution.args
        if len(given) == 1 and not execution.kwargs:
            return given[0]
        raise ValueError(f"the DAG uses its InputNode whole, so execute() takes exactly one "
                         f"positional argument, got {len(given)} and {len(execution.kwargs)} "
                         "keyword ones; use inp[i] or inp.name for one of several")


class InputAttributeNode(DAGNode):
    """``inp[i]``: the i-th positional argument of ``execute``; ``inp["k"]``/``inp.k``: its
    keyword argument k (or, with one positional argument, that argument's item k)."""

    def __init__(self, key: int | str) -> None:
        super().__init__((), {})
        self._key = key

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        key, given, named = self._key, execution.args, execution.kwargs
        if isinstance(key, int) and key < len(given):
            return given[key]
        if isinstance(key, str) and key in named:
            return named[key]
        if len(given) == 1 and not isinstance(given[0], (str, bytes)):
            try:
                return given[0][key]
            except (LookupError, TypeError):
                pass
        raise ValueError(f"the DAG reads input {key!r}, which execute() was not given "
                         f"({len(given)} positional arguments, keywords {sorted(named)})")


class MultiOutputNode(DAGNode):
    """Several outputs at once: ``execute`` returns the list of their results."""

    def __init__(self, outputs: list[DAGNode]) -> None:
        super().__init__((list(outputs),), {})

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             execution: _Execution) -> Any:
        return args[0]


class _Execution:
    """One ``execute``: each node's result, made once."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs
        self._results: dict[int, Any] = {}
        self._running: set[int] = set()

    def value_of(self, node: DAGNode) -> Any:
        key = id(node)
        if key not in self._results:
            if key in self._running:
                raise ValueError(f"the DAG has a cycle through {node!r}")
            self._running.add(key)
            args = self._resolve(node._bound_args)
            kwargs = self._resolve(node._bound_kwargs)
            self._results[key] = node._run(args, kwargs, self)
            self._running.discard(key)
        return self._results[key]

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, DAGNode):
            return self.value_of(value)
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        if isinstance(value, tuple):
            items = [self._resolve(v) for v in value]
            return tuple(items) if type(value) is tuple else type(value)(*items)
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        return value


def _describe(node: DAGNode) -> str:
    for name in ("_function", "_actor_class", "_name", "_key"):
        value = node.__dict__.get(name)
        if value is not None:
            return str(getattr(value, "_name", value))
    return ""
