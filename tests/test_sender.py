"""AgentSender's flow control on a real socket pair, the test reading what it sends as the
agent would: a submitter may not run far ahead of the agent's handling of its batches."""

from __future__ import annotations

import threading

import pytest
import zmq

from zray import protocol as p
from zray.exceptions import NodeDiedError
from zray.objects.refs import RefCounter
from zray.sender import _MAX_UNPROCESSED, AgentSender

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair():
    context = zmq.Context()
    agent = context.socket(zmq.ROUTER)
    agent.bind("inproc://agent")
    client = context.socket(zmq.DEALER)
    client.connect("inproc://agent")
    sender = AgentSender(client, RefCounter(), 0.002, 20, lambda: None, lambda ids: None)
    yield sender, agent
    client.close(linger=0)
    agent.close(linger=0)
    context.term()


def handled_by_agent(agent: zmq.Socket) -> int:
    """Read every Batch sent so far; how many messages they held."""
    count = 0
    while agent.poll(200):
        count += len(p.unbatch(p.decode(agent.recv_multipart()[1:])))
    return count


def test_a_submitter_waits_while_the_agent_is_far_behind(pair) -> None:
    sender, agent = pair
    for i in range(_MAX_UNPROCESSED):
        sender.defer(p.Blocked(i.to_bytes(4, "big")), soon=False)
    through = threading.Event()
    waiter = threading.Thread(target=lambda: (sender.wait_for_room(lambda: None), through.set()))
    waiter.start()
    assert not through.wait(0.3), "went ahead with the agent's whole window unhandled"
    handled = handled_by_agent(agent)
    assert handled == _MAX_UNPROCESSED  # all sent, in batches, none lost
    sender.processed(handled)  # the agent's Processed replies
    assert through.wait(5)
    waiter.join()
    sender.wait_for_room(lambda: None)  # room now: no wait


def test_a_waiting_submitter_learns_the_agent_died(pair) -> None:
    sender, _ = pair
    for i in range(_MAX_UNPROCESSED):
        sender.defer(p.Blocked(i.to_bytes(4, "big")), soon=False)

    def dead() -> None:
        raise NodeDiedError("the node agent exited")

    with pytest.raises(NodeDiedError):
        sender.wait_for_room(dead)


def test_a_ref_let_go_while_releases_wait_and_taken_again_stays_held(pair) -> None:
    """A release held back behind a deferred message, then the same object taken again
    before it went: the agent must go on counting this process as a holder (it used to
    get "added" and then the stale "released": it could free an object still held, and
    the process forgot where the object was while it waited for it)."""
    sender, agent = pair
    forgotten: list[bytes] = []
    sender._on_released = forgotten.extend
    refs = sender._refs
    oid = b"o" * 20
    refs.borrowed(oid)
    sender.flush()  # "added" goes
    refs.dropped(oid)
    sender.defer(p.Blocked(b"t"), soon=False)
    sender.flush(now=0.0)  # not due yet: the release is held back with the batch
    refs.borrowed(oid)  # taken again
    sender.send(p.Subscribe([oid], True))
    sender.flush()
    held = set()
    while agent.poll(200):
        msg = p.decode(agent.recv_multipart()[1:])
        for one in p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]:
            if isinstance(one, p.RefsChanged):
                held |= set(one.added)
                held -= set(one.released)
    assert held == {oid}
    assert forgotten == []
