"""Ray's state API for scripts: this cluster's GCS tables as lists of dicts.

The rows are those of ``zray inspect TABLE --json`` (their keys are in the README), read
from the GCS of the cluster this driver started. ``filters`` is Ray's list of
``(key, "=" | "!=", value)``, compared as text; ``limit`` keeps the newest rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Filter = tuple[str, str, Any]


def list_tasks(filters: list[Filter] | None = None, limit: int = 100,
               **ray_options: Any) -> list[dict[str, Any]]:
    return _list("tasks", filters, limit, ray_options)


def list_actors(filters: list[Filter] | None = None, limit: int = 100,
                **ray_options: Any) -> list[dict[str, Any]]:
    return _list("actors", filters, limit, ray_options)


def list_objects(filters: list[Filter] | None = None, limit: int = 100,
                 **ray_options: Any) -> list[dict[str, Any]]:
    return _list("objects", filters, limit, ray_options)


def list_nodes(filters: list[Filter] | None = None, limit: int = 100,
               **ray_options: Any) -> list[dict[str, Any]]:
    return _list("nodes", filters, limit, ray_options)


def list_placement_groups(filters: list[Filter] | None = None, limit: int = 100,
                          **ray_options: Any) -> list[dict[str, Any]]:
    return _list("placement_groups", filters, limit, ray_options)


def list_jobs(filters: list[Filter] | None = None, limit: int = 100,
              **ray_options: Any) -> list[dict[str, Any]]:
    return _list("jobs", filters, limit, ray_options)


def get_task(task_id: str, **ray_options: Any) -> dict[str, Any] | None:
    """The task whose id (hex) is ``task_id``, or None."""
    found = _list("tasks", [("task_id", "=", task_id)], 1, ray_options)
    return found[0] if found else None


def summarize_tasks(**ray_options: Any) -> dict[str, Any]:
    """Tasks by name, with how many are in each state (Ray's shape)."""
    rows = _list("tasks", None, 0, ray_options)
    by_name: dict[str, Counter[str]] = {}
    for row in rows:
        by_name.setdefault(row.get("name", "?"), Counter())[row.get("state", "?")] += 1
    summary = {name: {"func_or_class_name": name, "state_counts": dict(states)}
               for name, states in by_name.items()}
    return {"cluster": {"summary": summary, "total_tasks": len(rows)}}


_IGNORED = {"timeout", "detail", "raise_on_missing_output", "_explain"}


def _list(table: str, filters: list[Filter] | None, limit: int,
          ray_options: dict[str, Any]) -> list[dict[str, Any]]:
    from zray import api

    unknown = set(ray_options) - _IGNORED - {"address"}
    if unknown:
        raise TypeError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    if ray_options.get("address") not in (None, "auto"):
        raise ValueError("address=: the state API reads this driver's cluster")
    view = api.read_table(table)
    rows = [dict(fields) for _, fields, _ in view.rows]
    for key, op, value in filters or []:
        if op not in ("=", "!="):
            raise ValueError(f"filter {(key, op, value)!r}: the predicate is '=' or '!='")
        rows = [row for row in rows if (str(row.get(key)) == str(value)) == (op == "=")]
    return rows[-limit:] if limit else rows
