"""A session's tasks as a Chrome trace (``zray.timeline``, ``zray timeline``), from the GCS.

One ``"ph": "X"`` slice per task or actor call that ran: from RUNNING to its end, by the
worker's clock, in microseconds; ``pid`` a node (named by a metadata event), ``tid`` the
worker's pid, ``name`` the task's name, ``args.task_id``. A flow (``"ph": "s"`` in the
parent's slice, ``"f"`` at the child's start) joins a task to each task it submitted that
ran. Load the file in Perfetto (ui.perfetto.dev) or chrome://tracing.
"""

from __future__ import annotations

import json
from typing import Any

from zray.broker.reader import read_session

_ENDS = ("FINISHED", "FAILED")


def events(session: str, max_task_history: int = 10**9) -> list[dict[str, Any]]:
    """The trace events of every task the session's GCS holds (live, or from its logs)."""
    return events_of([fields for _, fields, _ in read_session(session, "tasks", None,
                                                              max_task_history).rows])


def events_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trace events of these task rows (oldest first)."""
    nodes: dict[str, int] = {}
    slices: dict[str, dict[str, Any]] = {}
    trace: list[dict[str, Any]] = []
    for row in rows:
        times = row.get("times", {})
        end = next((times[state] for state in _ENDS if state in times), None)
        if "RUNNING" not in times or end is None or "worker_pid" not in row:
            continue  # it never ran (failed before), or runs still
        node = nodes.setdefault(row.get("node_id", ""), len(nodes) + 1)
        start = row["submitted"] * 1e6 + times["RUNNING"]
        event = {"ph": "X", "name": row.get("name", "?"), "cat": "task", "ts": start,
                 "dur": max(0, end - times["RUNNING"]), "pid": node, "tid": row["worker_pid"],
                 "args": {"task_id": row["task_id"], "state": row.get("state"),
                          "attempt": row.get("attempt", 0)}}
        slices[row["task_id"]] = event
        trace.append(event)
    trace += [{"ph": "M", "name": "process_name", "pid": pid,
               "args": {"name": f"node {node_id[:8]}"}} for node_id, pid in nodes.items()]
    for flow_id, row in enumerate(rows, start=1):
        parent, child = slices.get(row.get("parent_task_id", "")), slices.get(row["task_id"])
        if parent is None or child is None:
            continue
        # The submission, placed inside the parent's slice (it happened while it ran).
        submitted = min(max(row["submitted"] * 1e6, parent["ts"]), parent["ts"] + parent["dur"])
        common = {"name": "submit", "cat": "flow", "id": flow_id}
        trace.append({"ph": "s", "ts": submitted, "pid": parent["pid"], "tid": parent["tid"],
                      **common})
        trace.append({"ph": "f", "bp": "e", "ts": child["ts"], "pid": child["pid"],
                      "tid": child["tid"], **common})
    return trace


def write(trace: list[dict[str, Any]], filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(trace, f)
