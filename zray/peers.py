"""How a driver or worker reaches other processes' direct sockets: ``Peers``, one
connection per (peer, kind), and ``Outbox``, sends queued under a lock and made after it.

::

    send(peer, msg, "t") --lane SESSION/lt-<peer>.sock (zray/lane.py)--> this node's worker
                         --else DEALER ipc://SESSION/t-<peer>.sock-------> the relay's proxy
                         --DEALER tcp://... once routed------------------> a worker elsewhere
    (kind "d": answers, NotStarted and cancels, the same way)
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable

import zmq

from zray import protocol as p
from zray.lane import LaneWriter, lane_path
from zray.mesh.auth import Credentials, secure_client
from zray.node.launcher import direct_endpoint

_MAX_PEER_SOCKETS = 64


class Peers:
    """Send-only connections to other processes' direct sockets, one per (peer, kind),
    made on first use; the least recently used beyond ``_MAX_PEER_SOCKETS`` are closed (a
    peer may have exited unannounced, and zmq would keep reconnecting to it). Any thread
    may send: sends are serialised by one lock.

    With ``lanes`` (a driver's or worker's), a peer of this node is reached on its lane
    (zray/lane.py), else on zmq: a DEALER to its ROUTER. What a lane cannot take at once
    waits in it, and ``on_backlog`` asks the I/O thread to ``flush_backlogs`` when there
    is room. A peer on another node is reached over TCP once ``route``d
    (zray/mesh/direct.py): its address came with a lease or an actor's address, or in its
    Introduce; each new TCP connection starts with our own Introduce."""

    def __init__(self, context: zmq.Context, worker_id: bytes, agent_endpoint: str,
                 lanes: bool = False, on_backlog: Callable[[], object] = lambda: None) -> None:
        self._context = context
        self._identity = worker_id + b"d"
        self._agent_endpoint = agent_endpoint
        self._lanes = lanes
        self._on_backlog = on_backlog
        self._sockets: OrderedDict[tuple[bytes, str], zmq.Socket | LaneWriter] = OrderedDict()
        self._backlogged: set[LaneWriter] = set()
        self._routes: dict[tuple[bytes, str], str] = {}  # (peer, kind) -> tcp address
        self._credentials: Credentials | None = None
        self._introduce: list[bytes] = []
        self._lock = threading.Lock()

    def secure(self, credentials: Credentials, introduce: p.Introduce) -> None:
        """This process is a cluster node's: TCP routes use these credentials."""
        self._credentials, self._introduce = credentials, p.encode(introduce)

    def route(self, peer: bytes, kind: str, address: str) -> None:
        """Reach ``peer``'s ``kind`` socket at ``address`` (TCP) from now on."""
        with self._lock:
            if self._routes.get((peer, kind)) == address:
                return
            self._routes[peer, kind] = address
            sock = self._sockets.pop((peer, kind), None)
            if sock is not None:
                self._close(sock)

    def routed(self, peer: bytes, kind: str = "d") -> bool:
        return (peer, kind) in self._routes

    def send(self, peer: bytes, msg: p.Message | list[bytes], kind: str = "d") -> None:
        """Send ``msg`` (or the frames of one, encoded already) to ``peer``'s socket."""
        with self._lock:
            sock = self._sockets.get((peer, kind))
            if sock is None:
                sock = self._sockets[peer, kind] = self._open(peer, kind)
                if len(self._sockets) > _MAX_PEER_SOCKETS:
                    self._evict()
            else:
                self._sockets.move_to_end((peer, kind))
            if isinstance(msg, list):
                sock.send_multipart(msg)
            else:
                p.send(sock, msg)
            if type(sock) is LaneWriter and sock.backlogged() and sock not in self._backlogged:
                self._backlogged.add(sock)
                self._on_backlog()

    def flush_backlogs(self) -> list[LaneWriter]:
        """Write what lanes hold back, as far as they take it (the I/O thread); the lanes
        still holding some, to wait for room in."""
        if not self._backlogged:
            return []
        with self._lock:
            self._backlogged = {lane for lane in self._backlogged if not lane.flush()}
            return list(self._backlogged)

    def forget(self, peer: bytes) -> None:
        """The peer exited: drop its sockets (messages still queued for it are lost)."""
        with self._lock:
            socks = [self._sockets.pop((peer, kind), None) for kind in ("d", "t")]
            for kind in ("d", "t"):
                self._routes.pop((peer, kind), None)
            for sock in socks:
                if sock is not None:
                    self._close(sock, linger=0)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets.values():
                self._close(sock, linger=1000)
            self._sockets.clear()

    def deliver(self, timeout_s: float) -> None:
        """Block until what was sent has reached its peers (at most ``timeout_s``), then
        close: for a process about to exit at once. Needs a context of its own: terminating
        it waits for these sockets only."""
        if not self._lock.acquire(timeout=timeout_s):
            return
        try:
            for sock in self._sockets.values():
                self._close(sock, linger=int(timeout_s * 1000))
            self._sockets.clear()
            self._context.term()
        finally:
            self._lock.release()

    def _open(self, peer: bytes, kind: str) -> zmq.Socket | LaneWriter:
        endpoint = self._routes.get((peer, kind))
        if endpoint is None and self._lanes:
            try:
                return LaneWriter(lane_path(self._agent_endpoint, peer, kind))
            except OSError:  # no lane (a relay's proxy stands for a peer elsewhere), or
                pass  # its listen queue is full: zmq, for as long as we talk to it
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self._identity)
        sock.setsockopt(zmq.LINGER, 1000)  # an evicted socket still delivers
        sock.setsockopt(zmq.SNDHWM, 0)
        if endpoint is None:
            sock.connect(direct_endpoint(self._agent_endpoint, peer, kind))
        else:
            secure_client(sock, endpoint, self._credentials)
            sock.connect(endpoint)
            sock.send_multipart(self._introduce)
        return sock

    def _evict(self) -> None:
        """Close the least recently used connection whose messages have all gone."""
        for key, sock in self._sockets.items():
            if sock not in self._backlogged:
                del self._sockets[key]
                self._close(sock)
                return

    def _close(self, sock: zmq.Socket | LaneWriter, linger: int | None = None) -> None:
        if isinstance(sock, LaneWriter):
            self._backlogged.discard(sock)
            if linger:
                sock.deliver(linger / 1000)
            sock.close()
        else:
            sock.close(linger)


class Outbox:
    """Messages to peers queued under a lock and sent once it is released, in order: a
    thread preempted in a send (the worker it wakes may take its CPU) then holds up no
    other thread that needs the lock (the I/O thread, with that worker's answer).

    ``with outbox:`` takes the lock; leaving it sends what was queued meanwhile."""

    def __init__(self, peers: Peers, lock: threading.Lock) -> None:
        self._peers = peers
        self._lock = lock
        self._queue: deque[tuple[bytes, p.Message, str]] = deque()  # (peer, msg, kind)
        self._sending = threading.Lock()  # held by the thread sending the queue

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        self.send()

    def put(self, peer: bytes, msg: p.Message, kind: str) -> None:
        """Send ``msg`` once the lock is released (called holding it)."""
        self._queue.append((peer, msg, kind))

    def send(self) -> None:
        while self._queue:
            if not self._sending.acquire(blocking=False):
                return  # (the thread sending sends ours too: it sends until none is left)
            try:
                while self._queue:
                    peer, msg, kind = self._queue.popleft()
                    self._peers.send(peer, msg, kind=kind)
            finally:
                self._sending.release()
