"""Complaints about untrusted input, logged at most a few times a period per kind.

A peer sending a flood of bad frames must not flood the log too (nor slow the loop that
writes it): each kind of complaint is logged at most ``per_period`` times per period, and
the next line logged says how many were left out.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, per_period: int = 10,
                 period_s: float = 10.0) -> None:
        self._logger = logger
        self._per_period = per_period
        self._period_s = period_s
        self._window: dict[str, tuple[float, int, int]] = {}  # kind -> start, logged, left out

    def warning(self, kind: str, text: str, *args: object) -> None:
        now = time.monotonic()
        start, logged, left_out = self._window.get(kind, (now, 0, 0))
        if now - start >= self._period_s:
            start, logged = now, 0
        if logged >= self._per_period:
            self._window[kind] = (start, logged, left_out + 1)
            return
        if left_out:
            text += f" ({left_out} more like this were not logged)"
        self._logger.warning(text, *args)
        self._window[kind] = (start, logged + 1, 0)
