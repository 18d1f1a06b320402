"""A driver's or worker's own TCP sockets in a cluster: the direct paths across nodes.

On one node, owners and workers talk straight to each other over ipc sockets in the
session directory. Across nodes they do so over TCP, without a hop through either
agent::

    owner --Introduce, then ExecuteTask (Batch)--> worker's "t" socket  (tcp, this module)
    owner <--TaskDone, NotStarted----------------- owner's "d" socket   (tcp)
    caller --direct actor calls--> the actor worker's "t" socket, answers the same way

Each such socket admits only holders of the cluster token (zray/mesh/auth.py), so each
process that binds one runs a Gatekeeper thread. The agent hands its clients the host and
token when they register (``Registered.mesh``); a private cluster's clients bind none.
"""

from __future__ import annotations

import zmq

from zray.mesh.auth import Credentials, Gatekeeper, secure_server


class DirectTcp:
    def __init__(self, context: zmq.Context, host: str, token: str,
                 encrypt_loopback: bool) -> None:
        self.host = host
        self.credentials = Credentials.from_token(token, encrypt_loopback)
        self._gatekeeper = Gatekeeper(context, self.credentials)

    def bind(self, sock: zmq.Socket) -> str:
        """Bind ``sock`` (a ROUTER, before ``start``) on a free port: its address."""
        secure_server(sock, self.host, self.credentials)
        sock.bind(f"tcp://{self.host}:0")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self) -> None:
        self._gatekeeper.start()

    def close(self) -> None:
        self._gatekeeper.stop()
