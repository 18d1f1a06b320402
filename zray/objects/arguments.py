"""A task's arguments on the wire: serialised once, top-level refs as placeholders.

Top-level ``ObjectRef`` arguments are replaced by ``Dep(i)`` and listed as the task's
dependencies: the agent waits for them and the worker swaps the values in. Refs nested in
containers stay refs. When the whole is too big to travel inline, the big values are put
in the store first and passed as refs instead, as Ray does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zray.objects.refs import ObjectRef
from zray.objects.serialization import Serialized, serialize


class Dep:
    """Stands for the i-th top-level ref argument inside a task's serialised arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (Dep, (self.index,))


def encode_arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], inline_max: int,
                     max_refs: int, put: Callable[[Serialized], ObjectRef]
                     ) -> tuple[bytes, list[bytes], list[bytes], list[ObjectRef]]:
    """(serialised arguments, dependency ids, contained ref ids, refs to keep until sent)."""
    keep_alive: list[ObjectRef] = []
    ser, deps = _serialize(name, args, kwargs)
    if len(deps) + len(ser.contained) > max_refs:  # (the text only when it is needed)
        check_ref_count(len(deps) + len(ser.contained), max_refs, f"the arguments of {name}()")
    if ser.size > inline_max:
        kept = 0  # small ones stay inline, as long as they add up to at most inline_max

        def by_ref(value: Any, label: str) -> Any:
            nonlocal kept
            if isinstance(value, ObjectRef):
                return value
            value_ser = _serialize_one(value, name, label)
            if value_ser.size <= inline_max // 16 and kept + value_ser.size <= inline_max:
                kept += value_ser.size
                return value
            keep_alive.append(put(value_ser))
            return keep_alive[-1]

        args = tuple(by_ref(v, f"#{i}") for i, v in enumerate(args))
        kwargs = {k: by_ref(v, repr(k)) for k, v in kwargs.items()}
        ser, deps = _serialize(name, args, kwargs)
    return ser.to_bytes(), deps, ser.contained, keep_alive


def check_ref_count(count: int, limit: int, what: str) -> None:
    """Refuse ``what`` (a value, a task's arguments) if it holds over ``limit`` refs
    (Config.max_refs_per_value)."""
    if count > limit:
        raise ValueError(
            f"{what} holding {count:,} ObjectRefs: zray hands over at most {limit:,} refs "
            "inside one value (max_frame_bytes / 48). Split them, e.g. into a list of lists "
            "each passed through zray.put().")


def resolve_arguments(args: list[Any], kwargs: dict[str, Any], values: list[Any]
                      ) -> tuple[list[Any], dict[str, Any]]:
    """The arguments with each ``Dep`` replaced by its dependency's value."""
    return ([values[a.index] if isinstance(a, Dep) else a for a in args],
            {k: values[v.index] if isinstance(v, Dep) else v for k, v in kwargs.items()})


def _serialize(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[Serialized, list[bytes]]:
    deps: list[bytes] = []

    def swap(value: Any) -> Any:
        if isinstance(value, ObjectRef):
            deps.append(value.id)
            return Dep(len(deps) - 1)
        return value

    try:
        ser = serialize((tuple(map(swap, args)), {k: swap(v) for k, v in kwargs.items()}))
    except TypeError:
        for label, value in [(f"#{i}", v) for i, v in enumerate(args)] + list(kwargs.items()):
            _serialize_one(value, name, str(label))  # raises, naming the argument
        raise
    return ser, deps


def _serialize_one(value: Any, function_name: str, label: str) -> Serialized:
    try:
        return serialize(value)
    except TypeError as exc:
        raise TypeError(f"argument {label} of {function_name}() cannot be pickled: {exc}") from None
