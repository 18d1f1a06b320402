"""Workers' reports that overtook the notice of their task, kept until it arrives.

A worker sends its answer to the agent, not to the owner, when the agent must file it first
(its results hold refs: zray.node.execution.hand_in). The owner's notice of the task travels
another connection and may come later. The report waits here, and the refs its results hold
stay pinned meanwhile: the worker lets go of them right behind the report, and nothing else
may hold them yet. No I/O: ``pin`` and ``unpin`` are the object table's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from zray import protocol as p

# Reports kept at most (a retry's late duplicate never gets a notice: the oldest go first).
LIMIT = 10_000


class EarlyReports:
    def __init__(self, pin: Callable[[bytes], bool], unpin: Callable[[bytes], None]) -> None:
        self._pin = pin
        self._unpin = unpin
        # task id -> (the worker that sent it, the report, the refs pinned for it)
        self._reports: OrderedDict[bytes, tuple[bytes, p.TaskDone, list[bytes]]] = OrderedDict()

    def keep(self, worker: bytes, report: p.TaskDone) -> None:
        pinned = [ref for ref in report.contained if self._pin(ref)]
        self._reports[report.task_id] = (worker, report, pinned)
        if len(self._reports) > LIMIT:
            self._let_go(self._reports.popitem(last=False)[1][2])

    def file(self, task_id: bytes, file: Callable[[bytes, p.TaskDone], None]) -> bool:
        """The notice came: ``file(worker, report)`` (which pins what the results hold),
        then let go of the pins kept for it. False if no report waits for ``task_id``."""
        kept = self._reports.pop(task_id, None)
        if kept is None:
            return False
        file(kept[0], kept[1])
        self._let_go(kept[2])
        return True

    def owner_gone(self, owner: bytes) -> None:
        """Its notices will never come: drop its tasks' reports."""
        for task_id in [k for k, (_, report, _) in self._reports.items() if report.owner == owner]:
            self._let_go(self._reports.pop(task_id)[2])

    def _let_go(self, pinned: list[bytes]) -> None:
        for ref in pinned:
            self._unpin(ref)
