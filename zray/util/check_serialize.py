"""``inspect_serializability``: which part of a value stops it from being pickled, as Ray's
``ray.util.inspect_serializability`` finds it (a closure's cells, a function's globals, an
object's attributes, looked into ``depth`` levels deep)."""

from __future__ import annotations

import inspect
import sys
from typing import Any, NamedTuple, TextIO

import cloudpickle

__all__ = ["FailureTuple", "inspect_serializability"]


class FailureTuple(NamedTuple):
    obj: Any
    name: str
    parent: Any


def inspect_serializability(base_obj: Any, name: str | None = None, depth: int = 3,
                            print_file: TextIO | None = None) -> tuple[bool, set[FailureTuple]]:
    """(whether ``base_obj`` pickles, the innermost parts that do not), printed as a tree."""
    out = print_file or sys.stdout
    failures: set[FailureTuple] = set()
    ok = _inspect(base_obj, name or repr(base_obj)[:60], None, depth, failures, out, 0)
    if not ok:
        print(f"{'=' * 60}\nVariables that failed to serialize:", file=out)
        for failure in failures:
            print(f"    {failure.name} (in {failure.parent!r:.60})", file=out)
    return ok, failures


def _inspect(obj: Any, name: str, parent: Any, depth: int, failures: set[FailureTuple],
             out: TextIO, level: int) -> bool:
    try:
        cloudpickle.dumps(obj)
        return True
    except Exception as exc:
        print(f"{'  ' * level}{name}: {type(exc).__name__}: {str(exc)[:120]}", file=out)
    members = _members(obj) if depth > 0 else {}
    found = False
    for member_name, member in members.items():
        if not _inspect(member, member_name, obj, depth - 1, failures, out, level + 1):
            found = True
    if not found:  # (the innermost failing part)
        try:
            failures.add(FailureTuple(obj, name, parent))
        except TypeError:  # (unhashable: named by its repr)
            failures.add(FailureTuple(repr(obj)[:60], name, repr(parent)[:60]))
    return False


def _members(obj: Any) -> dict[str, Any]:
    """What ``obj`` carries that pickling it would carry too."""
    if inspect.isfunction(obj):
        closure = inspect.getclosurevars(obj)
        return {**closure.nonlocals, **{k: v for k, v in closure.globals.items()
                                        if not inspect.ismodule(v)}}
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        return dict(attributes)
    return {}
