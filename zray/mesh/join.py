"""Saying Hello to a node over the mesh: what a joining node (and a driver elsewhere) does
first, with every way it can fail told apart within a bounded time.

::

    joiner DEALER --(credentials from the token) Hello--> node's mesh ROUTER
                  <-- Welcome (node id, head address, GCS endpoints) | Rejected (why)

The socket's monitor tells a wrong token (``HANDSHAKE_FAILED_AUTH``) from silence (nothing
answers at that address), so neither is a hang.
"""

from __future__ import annotations

import time

import zmq

from zray import protocol as p
from zray.exceptions import ZrayError
from zray.mesh.auth import Credentials, monitor_event, secure_client
from zray.version import version

__all__ = ["VERSION_REFUSED", "hello", "parse_address"]

# A node answers a Hello in another protocol version with these raw frames (it cannot
# encode a message the other side would decode): [VERSION_REFUSED, text].
VERSION_REFUSED = b"zray-version-refused"


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{address!r} is not a node address: give HOST:PORT, e.g. "
                         "127.0.0.1:6380")
    return host, int(port)


def hello(address: str, credentials: Credentials, timeout_s: float) -> p.Welcome:
    """Say Hello to the node at ``address``; its Welcome, or a ZrayError saying why not."""
    host, port = parse_address(address)
    endpoint = f"tcp://{host}:{port}"
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, endpoint, credentials)
        sock.connect(endpoint)
        sock.send_multipart(p.encode(p.Hello(b"", version(), p.PROTOCOL_VERSION)))
        return _answer(sock, monitor, address, timeout_s)
    finally:
        monitor.close(linger=0)
        sock.close(linger=0)
        context.term()


def _answer(sock: zmq.Socket, monitor: zmq.Socket, address: str,
            timeout_s: float) -> p.Welcome:
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        events = dict(poller.poll(int(left * 1000) + 1))
        if monitor in events:
            event, _, _ = monitor_event(monitor.recv_multipart())
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise ZrayError(f"the node at {address} refused this cluster token (a wrong "
                                "token: use the head's, from its ZRAY_HOME, with --token-file "
                                "or ZRAY_TOKEN)")
            raise ZrayError(f"the node at {address} refused the connection's security "
                            "handshake (is it a zray node of this version, and does it "
                            "encrypt as we do?)")
        if sock in events:
            frames = sock.recv_multipart()
            if frames[0] == VERSION_REFUSED:
                raise ZrayError(f"the node at {address} refused us: "
                                f"{frames[-1].decode(errors='replace')}")
            try:
                reply = p.decode(frames)
            except p.ProtocolError as exc:
                raise ZrayError(f"the node at {address} answered with a malformed message "
                                f"({exc}); is it a zray node?") from exc
            if isinstance(reply, p.Welcome):
                return reply
            if isinstance(reply, p.Rejected):
                raise ZrayError(f"the node at {address} refused us: {reply.reason}")
            raise ZrayError(f"the node at {address} answered Hello with "
                            f"{type(reply).__name__}")
    raise ZrayError(f"no zray node answers at {address} (waited {timeout_s:.0f} s): is a node "
                    "running there, and is the port right?")
