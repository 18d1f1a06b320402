"""The fault matrix of issue 11: where it fails x how it fails -> what the user sees.

    returned put ref   task / num_returns=2 / actor method   -> readable at once, every time
                       returns zray.put(...), read at once
    ordinary tasks     split, add, pair(ref, ref), then a    -> every get returns
                       nested put ref read with get

Execution counts, where a case needs them, come from outside zray: each task appends a line
to a file opened with O_APPEND, and the test counts lines.
"""

from __future__ import annotations

import pytest

import zray

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("cluster")]

TRIES = 10


@zray.remote
def returns_a_put():
    return zray.put(1)


@zray.remote(num_returns=2)
def returns_two_puts():
    return zray.put(1), zray.put(2)


@zray.remote
class Putter:
    def put_one(self):
        return zray.put(1)


def test_a_put_ref_returned_from_a_task_is_readable_at_once():
    """The worker lets go of the put right behind the report that pins it, and that
    report may reach the agent before the owner's notice of the task: it must pin anyway."""
    putter = Putter.remote()
    for _ in range(TRIES):
        assert zray.get(zray.get(returns_a_put.remote()), timeout=10) == 1
        assert zray.get(zray.get(returns_two_puts.remote()), timeout=10) == [1, 2]
        assert zray.get(zray.get(putter.put_one.remote()), timeout=10) == 1
    zray.kill(putter)
