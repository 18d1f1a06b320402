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
