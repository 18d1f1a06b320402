"""Peers: the send-only sockets a process opens to other processes' direct sockets."""

from __future__ import annotations

import pytest
import zmq

from zray import protocol as p
from zray.node.launcher import direct_endpoint
from zray.peers import Peers

pytestmark = pytest.mark.timeout(30)


def test_peer_sockets_are_bounded_and_still_reach_a_live_peer(tmp_path):
    context = zmq.Context()
    agent_endpoint = f"ipc://{tmp_path}/agent.sock"
    live = b"L" * 8
    router = context.socket(zmq.ROUTER)
    router.bind(direct_endpoint(agent_endpoint, live))
    peers = Peers(context, b"me" * 4, agent_endpoint)
    try:
        for i in range(100):  # peers that exited long ago (nothing listens there)
            peers.send(i.to_bytes(8, "big"), p.Blocked(b"t"))
        peers.send(live, p.Blocked(b"x"))
        assert router.poll(5000), "the live peer never got its message"
        frames = router.recv_multipart()
        assert frames[0] == b"me" * 4 + b"d" and p.decode(frames[1:]) == p.Blocked(b"x")
        assert len(peers._sockets) <= 64
    finally:
        peers.close()
        router.close()
        context.term()
