"""The per-process reference counter: only edges reach the agent, in a safe order."""

from __future__ import annotations

import pytest

from zray.objects.refs import RefCounter

pytestmark = pytest.mark.timeout(30)


def test_created_refs_send_no_edge_until_released():
    refs = RefCounter()
    refs.created(b"a")
    refs.created(b"a")
    assert refs.drain() == ([], [])
    refs.dropped(b"a")
    assert refs.drain() == ([], [])
    refs.dropped(b"a")
    assert refs.drain() == ([], [b"a"])


def test_borrowed_ref_is_announced_once():
    refs = RefCounter()
    refs.borrowed(b"b")
    refs.borrowed(b"b")
    assert refs.drain() == ([b"b"], [])
    refs.dropped(b"b")
    refs.dropped(b"b")
    assert refs.drain() == ([], [b"b"])


def test_dropped_then_borrowed_again_in_one_drain_sends_nothing():
    """Otherwise 'added' goes out before 'released' and the agent forgets a live holder."""
    refs = RefCounter()
    refs.borrowed(b"r")
    assert refs.drain() == ([b"r"], [])
    refs.dropped(b"r")
    refs.borrowed(b"r")
    assert refs.drain() == ([], [])
    refs.dropped(b"r")
    assert refs.drain() == ([], [b"r"])


def test_borrowed_then_dropped_in_one_drain_sends_nothing():
    """Nothing was sent between (a drain comes before each message), so nothing was handed
    on: the agent need not hear of a holder that came and went (a task's view of its
    argument, taken and let go while it ran)."""
    refs = RefCounter()
    refs.borrowed(b"v")
    refs.dropped(b"v")
    assert refs.drain() == ([], [])
    refs.borrowed(b"v")
    refs.borrowed(b"v")
    refs.dropped(b"v")
    assert refs.drain() == ([b"v"], [])
