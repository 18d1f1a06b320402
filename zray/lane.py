"""The local lane: a task's round trip between two processes of one node, on a Unix socket.

::

    owner  --ExecuteTask, a Batch of them--> lt-<worker>.sock   read by the worker's main thread
    worker --TaskDone, NotStarted---------> ld-<owner>.sock    read by the owner's I/O thread,
                                                               or its blocked get (zray/leader.py)
    owner  --CancelRunning----------------> ld-<worker>.sock   read by the worker's I/O thread

Each process binds its two listening sockets next to its zmq ones (the same kinds, "t" and
"d") and reads them in the same threads. A zmq message between two processes crosses two
more threads, libzmq's I/O thread in each, and on two cores each hop is a context switch:
measured, 103 µs for a pyzmq ipc round trip against 9 µs for a bare Unix socket. So the
messages of a round trip go on a plain stream socket per (sender, receiver, kind), written
by the sending thread itself with one ``sendmsg``, read by the receiving thread at once.

Framing: a head of (frame count, bytes after the head) and each frame's length, then the
frames; received frames are ``decode``'s (small ones bytes, large ones read-only views).

A send never blocks (the receiver may be blocked sending to us, with both buffers full):
what the socket does not take waits in the writer's backlog, copied, and the sender's I/O
thread writes it when the socket has room (``Peers.flush_backlogs``). Peers whose lane cannot be
reached (another node's, through the relay's proxies; a full listen queue) keep zmq: a
(peer, kind) keeps the path it was first given, so its messages keep their order.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from zray.protocol import LARGE_FIELD_BYTES

_HEAD = struct.Struct("<II")  # frames, bytes after the head
_CHUNK = 256 * 1024  # a reader's buffer; a message larger than it gets one of its own
_BACKLOG = 256
_MAX_FRAMES = 1 << 16  # in one message
_REST_OF_LARGE_S = 0.005  # how long a reader waits for more of a large message it is reading
_SEND_BUFFER = 8 * 1024 * 1024


def lane_path(agent_endpoint: str, worker_id: bytes, kind: str) -> str:
    """The lane socket of process ``worker_id`` for messages of ``kind`` ("t" or "d"),
    next to its agent's socket."""
    session_dir = os.path.dirname(agent_endpoint.removeprefix("ipc://"))
    return f"{session_dir}/l{kind}-{worker_id.hex()}.sock"


class LaneListener:
    """A bound, listening lane socket; its file goes when it is closed. Its readers cut off
    a sender whose message claims frames over ``max_frame_bytes`` on average, before
    reading it (as zmq's MAXMSGSIZE does): no sender of ours makes one."""

    def __init__(self, path: str, max_frame_bytes: int) -> None:
        self.path = path
        self._max_frame_bytes = max_frame_bytes
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._sock.bind(path)
        self._sock.listen(_BACKLOG)

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self) -> list[LaneReader]:
        """The connections waiting."""
        readers: list[LaneReader] = []
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return readers
            conn.setblocking(False)
            readers.append(LaneReader(conn, self._max_frame_bytes))

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class LaneReader:
    """One sender's connection: the messages it sent, as frames."""

    def __init__(self, sock: socket.socket, max_frame_bytes: int) -> None:
        self._sock = sock
        self._max_frame_bytes = max_frame_bytes
        self._buf = bytearray(_CHUNK)
        self._start = self._end = 0  # bytes received and not yet taken
        self._large: bytearray | None = None  # a message too big for the buffer, filling
        self._large_head = (0, 0)  # its frame count and where its frames start
        self._large_got = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> tuple[list[list[Any]], bool]:
        """The messages complete now, and whether the connection is still open (the sender
        closed it, or exited, or sent what no sender of ours would, if not). Reads until the
        socket is drained."""
        messages: list[list[Any]] = []
        while True:
            if self._large is not None:
                room = memoryview(self._large)[self._large_got:]
            else:
                room = memoryview(self._buf)[self._end:]
            try:
                n = self._sock.recv_into(room)
            except (BlockingIOError, InterruptedError):
                if self._large is None or not self._more_soon():
                    return messages, True
                continue
            except OSError:  # (reset: the sender died)
                n = 0
            if n == 0:
                return messages, False
            if self._large is not None:
                self._large_got += n
                if self._large_got == len(self._large):
                    messages.append(self._large_frames())
            else:
                self._end += n
                if not self._parse(messages):
                    return messages, False
            if n < len(room):
                return messages, True

    def close(self) -> None:
        self._sock.close()

    def _more_soon(self) -> bool:
        """Whether the rest of a large message is coming: its sender writes it as the
        socket makes room, so waiting here for it beats a trip round the caller's loop per
        buffer's worth."""
        poller = select.poll()  # (not select(): a process may have fds past 1024)
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(_REST_OF_LARGE_S * 1000))

    def _parse(self, messages: list[list[Any]]) -> bool:
        """Take the whole messages received; False if one is out of bounds."""
        buf = self._buf
        while self._end - self._start >= _HEAD.size:
            count, size = _HEAD.unpack_from(buf, self._start)
            if not 0 < count <= _MAX_FRAMES or size > count * self._max_frame_bytes:
                return False
            whole = _HEAD.size + 4 * count + size
            if whole > len(buf):  # too big for the buffer: into one of its own
                self._start_large(count, whole)
                return True
            if self._end - self._start < whole:
                break
            lengths = struct.unpack_from(f"<{count}I", buf, self._start + _HEAD.size)
            at = self._start + _HEAD.size + 4 * count
            frames = []
            with memoryview(buf) as view:
                for length in lengths:
                    frames.append(bytes(view[at : at + length]))
                    at += length
            messages.append(frames)
            self._start += whole
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start > 0:  # part of a message: to the front, where it has room
            pending = self._end - self._start
            buf[:pending] = buf[self._start : self._end]
            self._start, self._end = 0, pending
        return True

    def _start_large(self, count: int, whole: int) -> None:
        large = self._large = bytearray(whole)
        have = self._end - self._start
        large[:have] = self._buf[self._start : self._end]
        self._large_got = have
        self._large_head = (count, _HEAD.size + 4 * count)
        self._start = self._end = 0

    def _large_frames(self) -> list[Any]:
        large, (count, at) = self._large, self._large_head
        assert large is not None
        self._large = None
        view = memoryview(large).toreadonly()
        frames: list[Any] = []
        for length in struct.unpack_from(f"<{count}I", large, _HEAD.size):
            frame = view[at : at + length]
            frames.append(frame if length >= LARGE_FIELD_BYTES else bytes(frame))
            at += length
        return frames


class LaneWriter:
    """Our connection to another process's lane. ``connect`` raises OSError if it cannot
    be reached (no such socket, its listen queue full)."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        # Room for a task's large arguments in one write, where the system allows it (the
        # kernel caps it at net.core.wmem_max).
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._backlog: deque[memoryview] = deque()  # (views: a part written is not copied)
        self.broken = False  # the receiver is gone: what is sent is dropped, as zmq would

    def fileno(self) -> int:
        return self._sock.fileno()

    def backlogged(self) -> bool:
        return bool(self._backlog)

    def send(self, frames: list[Any]) -> bool:
        """Send one message's frames; False if part of it waits in the backlog."""
        if self.broken:
            return True
        lengths = [frame.nbytes if type(frame) is memoryview else len(frame) for frame in frames]
        head = struct.pack(f"<II{len(frames)}I", len(frames), sum(lengths), *lengths)
        if self._backlog:
            self._backlog.append(memoryview(head))
            self._backlog.extend(memoryview(bytes(frame)) for frame in frames)  # (the caller
            return False  # may reuse its buffers)
        buffers = [head, *frames]
        sent = self._write(buffers)
        if sent == len(head) + sum(lengths) or self.broken:
            return True
        for buffer, size in zip(buffers, [len(head), *lengths], strict=True):
            if sent >= size:
                sent -= size
                continue
            rest = memoryview(buffer).cast("B")[sent:]  # (copied: the caller may reuse it)
            self._backlog.append(memoryview(bytes(rest)))
            sent = 0
        return False

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True) -> None:
        """``send``, as a zmq socket is called (protocol.send)."""
        self.send(frames)

    def flush(self) -> bool:
        """Write what the backlog holds, as far as the socket takes it; True once empty."""
        while self._backlog:
            batch = list(itertools.islice(self._backlog, 64))
            wanted = sum(view.nbytes for view in batch)
            sent = self._write(batch)
            left = sent
            while left:
                size = self._backlog[0].nbytes
                if left >= size:
                    left -= size
                    self._backlog.popleft()
                else:
                    self._backlog[0] = self._backlog[0][left:]
                    left = 0
            if sent < wanted:
                return not self._backlog
        return True

    def deliver(self, timeout_s: float) -> None:
        """Write the backlog, waiting for room up to ``timeout_s`` (the process exits)."""
        self._sock.settimeout(timeout_s)
        try:
            for buffer in self._backlog:
                self._sock.sendall(buffer, socket.MSG_NOSIGNAL)
        except OSError:
            pass
        self._backlog.clear()

    def close(self) -> None:
        self._sock.close()

    def _write(self, buffers: list[Any]) -> int:
        try:
            return self._sock.sendmsg(buffers, (), socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:  # (the receiver exited: EPIPE, ECONNRESET)
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            self.broken = True
            self._backlog.clear()
            return 0


class SharedLanes:
    """A listener and the connections it accepted, read by whichever thread gets there
    first: the I/O thread, or a thread blocked in a get, which reads its own answer rather
    than wait for the I/O thread to wake, read it and hand the GIL over (zray/leader.py).
    One epoll set holds them all, its fd pollable by both; every fd in it is
    edge-triggered, so the thread that takes an event reads that socket dry, and the other
    finds the set quiet instead of waking on it again. ``read`` hands what it read to
    ``on_messages`` under one lock: messages are taken in the order they came, and a
    thread that must see every answer sent before some other message (the I/O thread,
    before the agent's) reads first, and waits for a read under way."""

    def __init__(self, listener: LaneListener,
                 on_messages: Callable[[list[list[Any]]], None]) -> None:
        self._listener = listener
        self._on_messages = on_messages
        self._epoll = select.epoll()
        self._readers: dict[int, LaneReader] = {}
        self._turn = threading.Lock()
        self._epoll.register(listener.fileno(), select.EPOLLIN | select.EPOLLET)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def read(self) -> None:
        """Read what every ready lane holds, accepting new connections."""
        with self._turn:
            messages: list[list[Any]] = []
            for fd, _ in self._epoll.poll(0):
                if fd == self._listener.fileno():
                    for reader in self._listener.accept():
                        self._readers[reader.fileno()] = reader
                        # (data already there is an event too: registering reports it)
                        self._epoll.register(reader.fileno(), select.EPOLLIN | select.EPOLLET)
                    continue
                sender = self._readers.get(fd)
                if sender is None:
                    continue
                taken, still_open = sender.read()
                messages += taken
                if not still_open:
                    self._epoll.unregister(fd)
                    sender.close()
                    del self._readers[fd]
            if messages:
                self._on_messages(messages)

    def close(self) -> None:
        with self._turn:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
            self._epoll.close()
            self._listener.close()
