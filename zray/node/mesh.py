"""A node agent's door to the cluster: a ROUTER on its TCP address.

::

    joining nodes, peers --(token credentials, checked by the Gatekeeper)--> ROUTER HOST:PORT
                         <-- Welcome (who we are, where the GCS is) | Rejected

Only holders of the cluster's credentials get a message through (zray/mesh/auth.py). A
Hello in another protocol version is answered by raw frames naming both versions (the
other side could not decode a message of ours); one of ours that is not a Hello is handed
to the agent. Every send is checked (``ROUTER_MANDATORY``).
"""

from __future__ import annotations

import logging

import zmq

from zray import protocol as p
from zray.exceptions import ZrayError
from zray.mesh.auth import Credentials, Gatekeeper, secure_server
from zray.mesh.join import VERSION_REFUSED, parse_address
from zray.rate_limit import RateLimitedLog
from zray.version import version

log = logging.getLogger("zray.mesh")


class MeshDoor:
    def __init__(self, context: zmq.Context, listen: str, credentials: Credentials) -> None:
        """Bind ``listen`` (HOST:PORT) or fail at once, naming it."""
        host, port = parse_address(listen)
        self.complaints = RateLimitedLog(log)
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        # What is in flight each way is bounded by credit windows (zray/mesh/window.py)
        # below this mark, so a send never meets it: none blocks this loop, none is lost.
        self.socket.setsockopt(zmq.SNDHWM, 1000)
        self.socket.setsockopt(zmq.RCVHWM, 1000)
        secure_server(self.socket, host, credentials)
        self.gatekeeper = Gatekeeper(context, credentials)
        self.gatekeeper.watch(self.socket)
        try:
            self.socket.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
            self.gatekeeper.stop()
            self.socket.close()
            raise ZrayError(f"cannot listen on {host}:{port}: {exc.strerror} (another node, "
                            "or another program, uses it? --port 0 picks a free one)") from exc
        self.gatekeeper.start()
        endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.address = endpoint.removeprefix("tcp://")
        self.welcome: p.Welcome | None = None  # set by the agent once it knows the GCS

    def on_frames(self, frames: list[bytes]) -> tuple[bytes, list[bytes]] | None:
        """Answer a Hello; anything else is the agent's: (peer, its frames)."""
        peer = frames[0]
        if len(frames) < 2 or len(frames[1]) < 2:
            return None
        if frames[1][0] != p.PROTOCOL_VERSION:
            self._send_raw(peer, [VERSION_REFUSED, (
                f"this node (zray {version()}) speaks protocol {p.PROTOCOL_VERSION}, yours "
                f"speaks {frames[1][0]}: run one zray version on every node").encode()])
            return None
        if not p.is_message(frames[1:], p.Hello):
            return peer, frames[1:]
        try:
            msg = p.decode(frames[1:])
        except p.ProtocolError as exc:
            self.complaints.warning("malformed", "dropped a malformed Hello: %s", exc)
            return None
        assert isinstance(msg, p.Hello)
        self._answer_hello(peer, msg)
        return None

    def _answer_hello(self, peer: bytes, hello: p.Hello) -> None:
        if hello.protocol != p.PROTOCOL_VERSION:
            reply: p.Message = p.Rejected(p.Hello.op, (
                f"this node (zray {version()}) speaks protocol {p.PROTOCOL_VERSION}, yours "
                f"(zray {hello.zray_version}) speaks {hello.protocol}"))
        elif self.welcome is None:
            reply = p.Rejected(p.Hello.op, "this node is still starting; try again")
        else:
            reply = self.welcome
        self._send_raw(peer, p.encode(reply))

    def send(self, peer: bytes, msg: p.Message) -> None:
        self._send_raw(peer, p.encode(msg))

    def _send_raw(self, peer: bytes, frames: list) -> None:
        try:
            self.socket.send_multipart([peer, *frames])
        except zmq.ZMQError as exc:  # (gone already)
            log.debug("could not answer %s: %s", peer.hex(), exc)

    def close(self) -> None:
        self.gatekeeper.stop()
        self.socket.close(linger=0)
