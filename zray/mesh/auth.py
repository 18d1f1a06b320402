"""Who may connect to a cluster: its token, what is derived from it, and the ZAP handler.

Pickled payloads are code execution, so every TCP socket a cluster binds (the agents'
mesh sockets, the GCS shards') admits only peers holding credentials derived from the
cluster's token (made by ``zray node start --head``, 0600 in ZRAY_HOME)::

    client socket --(PLAIN: user "zray", password = HMAC(token, "plain"))--> server socket
                  --(CURVE: client key pair = HMAC(token, "client");
                            server key pair = HMAC(token, "server"))-->
    server's libzmq --ZAP request--> inproc://zeromq.zap.01 --> Gatekeeper thread: 200 or 400

CURVE (encrypted) for any address beyond loopback; on loopback PLAIN (no encryption: other
users cannot read loopback traffic), so transfers run at loopback speed. ``ipc://`` sockets
take no credentials: they live in a 0700 session directory.

The Gatekeeper is a thread of every process that binds a TCP socket, because ZAP is
answered while a handshake waits, whatever the process's loop is doing. It also reads the
server sockets' monitors, to log the handshakes that never reach ZAP (a peer with no
security, or another mechanism); every refusal leaves one rate-limited log line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket as stdlib_socket
import struct
import threading
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from zray.exceptions import ZrayError
from zray.rate_limit import RateLimitedLog

__all__ = ["Credentials", "Gatekeeper", "is_loopback", "load_credentials", "new_token",
           "read_token", "secure_dealer",
           "secure_client", "secure_server", "write_token"]

log = logging.getLogger("zray.auth")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"zray"
_USER = b"zray"
_TOKEN_HEX_CHARS = 64
_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def monitor_event(frames: list[bytes]) -> tuple[int, int, str]:
    """A socket monitor's message (libzmq's layout: a 16-bit event and a 32-bit value, then
    the endpoint): (event, value, endpoint). Parsed here, not by pyzmq's helper, whose
    module imports asyncio into every process that binds TCP."""
    event, value = struct.unpack("<HI", frames[0][:6])
    return event, value, frames[1].decode(errors="replace") if len(frames) > 1 else ""


def new_token() -> str:
    return secrets.token_hex(_TOKEN_HEX_CHARS // 2)


def write_token(path: str, token: str) -> None:
    """Write ``token`` to ``path``, readable by this user only, from its creation."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def load_credentials(path: str, encrypt_loopback: bool = False) -> Credentials:
    """The credentials of the token in the file at ``path``."""
    return Credentials.from_token(read_token(path), encrypt_loopback)


def read_token(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as exc:
        raise ZrayError(f"cannot read the cluster token file {path}: {exc.strerror}; pass "
                        "--token-file or set ZRAY_TOKEN") from exc
    check_token(token, path)
    return token


def check_token(token: str, where: str) -> None:
    try:
        valid = len(token) == _TOKEN_HEX_CHARS and bool(bytes.fromhex(token))
    except ValueError:
        valid = False
    if not valid:
        raise ZrayError(f"the cluster token in {where} is not {_TOKEN_HEX_CHARS} hex digits; "
                        "copy it again from the head node's ZRAY_HOME (cluster-*.token)")


@dataclass(frozen=True)
class Credentials:
    """Everything derived from one cluster token (keys in Z85, as libzmq takes them)."""
    plain_password: bytes
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    encrypt_loopback: bool = False  # CURVE on loopback too (Config.encrypt_loopback)

    @classmethod
    def from_token(cls, token: str, encrypt_loopback: bool = False) -> Credentials:
        key = bytes.fromhex(token)

        def derived(purpose: bytes) -> bytes:
            return hmac.new(key, b"zray-v1-" + purpose, hashlib.sha256).digest()

        server_secret = z85.encode(derived(b"server"))
        client_secret = z85.encode(derived(b"client"))
        return cls(derived(b"plain").hex().encode(), zmq.curve_public(server_secret),
                   server_secret, zmq.curve_public(client_secret), client_secret,
                   encrypt_loopback)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: what it stands for
        try:
            return ipaddress.ip_address(stdlib_socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def secure_server(sock: zmq.Socket, host: str, credentials: Credentials) -> None:
    """Make ``sock`` (before it binds on ``host``) admit only holders of the token's
    credentials; a Gatekeeper must run in the socket's context."""
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    if credentials.encrypt_loopback or not is_loopback(host):
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, credentials.server_secret)
    else:
        sock.setsockopt(zmq.PLAIN_SERVER, 1)


def secure_client(sock: zmq.Socket, endpoint: str, credentials: Credentials | None) -> None:
    """Give ``sock`` (before it connects to ``endpoint``) the credentials a server of the
    cluster asks for; ``ipc://`` endpoints need none."""
    if not endpoint.startswith("tcp://"):
        return
    if credentials is None:
        raise ZrayError(f"connecting to {endpoint} needs the cluster's token; pass "
                        "--token-file or set ZRAY_TOKEN")
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if credentials.encrypt_loopback or not is_loopback(host):
        sock.setsockopt(zmq.CURVE_SERVERKEY, credentials.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, credentials.client_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, credentials.client_secret)
    else:
        sock.setsockopt(zmq.PLAIN_USERNAME, _USER)
        sock.setsockopt(zmq.PLAIN_PASSWORD, credentials.plain_password)


def secure_dealer(context: zmq.Context, endpoint: str,
                  credentials: Credentials | None) -> zmq.Socket:
    """A DEALER connected to ``endpoint`` with the credentials it asks for (LINGER 0:
    what is unsent when it closes is dropped)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, endpoint, credentials)
    sock.connect(endpoint)
    return sock


class Gatekeeper(threading.Thread):
    """The ZAP handler of one ZeroMQ context (a thread: see the module's docstring).

    ``watch(sock)`` (from the socket's own thread, before it binds) adds a server socket
    whose failed handshakes are logged; ``stop()`` ends the thread and closes its sockets.
    """

    def __init__(self, context: zmq.Context, credentials: Credentials) -> None:
        super().__init__(name="zray-gatekeeper", daemon=True)
        self._credentials = credentials
        self._context = context
        self._handler = context.socket(zmq.ROUTER)
        self._handler.setsockopt(zmq.LINGER, 0)
        self._handler.bind(ZAP_ENDPOINT)
        self._wake_r, self._wake_w = os.pipe()
        self._monitors: list[zmq.Socket] = []
        self._complaints = RateLimitedLog(log)
        self.refused = 0

    def watch(self, sock: zmq.Socket) -> None:
        if self.is_alive():
            raise RuntimeError("watch every socket before the gatekeeper starts")
        self._monitors.append(sock.get_monitor_socket(_HANDSHAKE_FAILURES))

    def stop(self) -> None:
        if self.ident is None:  # never started
            self._close()
        else:
            os.write(self._wake_w, b"x")
            self.join(timeout=5)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._handler, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._wake_r in events:
                    return
                if self._handler in events:
                    self._answer(self._handler.recv_multipart())
                for monitor in self._monitors:
                    if monitor in events:
                        self._on_monitor_event(monitor.recv_multipart())
        finally:
            self._close()

    def _close(self) -> None:
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._handler.close(linger=0)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _answer(self, frames: list[bytes]) -> None:
        """A ZAP request (RFC 27): [peer, "", version, request id, domain, address,
        identity, mechanism, credentials...]; reply [peer, "", version, request id, status
        code, status text, user id, metadata]."""
        if len(frames) < 8 or frames[1] != b"" or frames[2] != b"1.0":
            return
        request_id, domain, address, mechanism = frames[3], frames[4], frames[5], frames[7]
        why = self._refusal(domain, mechanism, frames[8:])
        if why:
            self.refused += 1
            self._complaints.warning("auth", "refused a connection from %s: %s",
                                     address.decode(errors="replace"), why)
        status = (b"400", why.encode()) if why else (b"200", b"OK")
        self._handler.send_multipart([frames[0], b"", b"1.0", request_id, *status,
                                      b"" if why else _USER, b""])

    def _refusal(self, domain: bytes, mechanism: bytes, given: list[bytes]) -> str:
        creds = self._credentials
        if domain != ZAP_DOMAIN:
            return f"unknown ZAP domain {domain!r}"
        if mechanism == b"PLAIN":
            if len(given) == 2 and given[0] == _USER and hmac.compare_digest(
                    given[1], creds.plain_password):
                return ""
            return "wrong credentials (a different cluster token?)"
        if mechanism == b"CURVE":
            if len(given) == 1 and hmac.compare_digest(
                    given[0], z85.decode(creds.client_public)):
                return ""
            return "an unknown CURVE client key (not derived from this cluster's token)"
        return f"mechanism {mechanism.decode(errors='replace')} is not accepted"

    def _on_monitor_event(self, frames: list[bytes]) -> None:
        event, value, endpoint = monitor_event(frames)
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # (logged by _answer, with the peer's address)
        self.refused += 1
        self._complaints.warning("handshake", "refused a connection on %s: its handshake "
                                 "failed (no credentials, or another security mechanism; "
                                 "error %#x)", endpoint, value)
