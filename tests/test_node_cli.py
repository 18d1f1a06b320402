"""``zray node start|stop`` as a user runs them, a driver joining with ``address="auto"``,
and the door each node keeps: only holders of the cluster token's credentials get in.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import zmq
from conftest import HOME, RUN_ID, assert_no_leaks

import zray
from zray import protocol as p
from zray.mesh.auth import Credentials, new_token, secure_client, secure_dealer, write_token
from zray.mesh.records import token_path
from zray.node.sessions import arenas, live_sessions
from zray.version import version

pytestmark = pytest.mark.timeout(120)

SMALL = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20)]


def zray_cli(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zray_cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start(*args: str, env: dict[str, str] | None = None) -> str:
    done = zray_cli("node", "start", *args, *SMALL, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


@pytest.fixture
def nodes_stopped() -> Iterator[None]:
    yield
    done = zray_cli("node", "stop")
    assert done.returncode == 0, done.stderr
    assert_no_leaks()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_join_drive_and_stop_from_the_command_line(nodes_stopped: None) -> None:
    head = start("--head", "--port", "0")
    host, port = head.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    taken = zray_cli("node", "start", "--head", "--port", port, *SMALL)
    assert taken.returncode == 1 and f"port {port}" in taken.stderr and "in use" in taken.stderr
    peer = start("--peers", head, "--host", "127.0.0.2")
    assert peer.startswith("127.0.0.2:")
    driver = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, zray
        zray.init(address="auto")
        @zray.remote(num_cpus=1)
        def where():
            return zray.get_runtime_context().get_node_id()
        on = zray.get([where.remote() for _ in range(40)])
        print(json.dumps({"nodes": len(zray.nodes()), "cpus": zray.cluster_resources()["CPU"],
                          "ran_on": len(set(on))}))
        zray.shutdown()
    """)], capture_output=True, text=True, timeout=60)
    assert driver.returncode == 0, driver.stderr
    seen = json.loads(driver.stdout.splitlines()[-1])
    assert seen["nodes"] == 2 and seen["cpus"] == 2.0 and seen["ran_on"] >= 1
    rows = zray_cli("inspect", "nodes", "--json")
    assert rows.returncode == 0, rows.stderr
    states = {json.loads(line)["address"]: json.loads(line)["state"]
              for line in rows.stdout.splitlines()}
    assert states == {head: "ALIVE", peer: "ALIVE"}  # the driver left the cluster running
    elsewhere = zray_cli("inspect", "nodes", "--json", "--address", peer, env={
        "ZRAY_HOME": os.path.join(HOME, "elsewhere"),  # (no records: as on another machine)
        "ZRAY_TOKEN": open(token_path(head)).read().strip()})
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert {json.loads(line)["address"] for line in elsewhere.stdout.splitlines()} == {
        head, peer}
    status = zray_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    nodes = {node["address"]: node for node in json.loads(status.stdout)["nodes"]}
    assert set(nodes) == {head, peer} and all(n["state"] == "ALIVE" for n in nodes.values())
    assert nodes[head]["messages"]["SubmitTask"] >= 40  # (the driver's tasks, noticed)
    assert nodes[head]["resources"]["total"]["CPU"] == 1.0
    assert "CPU 0/1" in zray_cli("status").stdout
    stopped = zray_cli("node", "stop")
    assert stopped.returncode == 0 and "stopped 2 node(s)" in stopped.stderr
    assert not os.path.exists(token_path(head))


def test_joining_nothing_or_with_a_wrong_token_fails_clearly(nodes_stopped: None,
                                                              tmp_path: str) -> None:
    began = time.monotonic()
    silent = zray_cli("node", "start", "--peers", f"127.0.0.1:{free_port()}", *SMALL,
                      env={"ZRAY_JOIN_TIMEOUT_S": "2", "ZRAY_TOKEN": new_token()})
    assert silent.returncode == 1 and "no zray node answers" in silent.stderr
    assert time.monotonic() - began < 10
    assert not live_sessions(RUN_ID) and not arenas(RUN_ID)  # (a failed start leaves none)
    head = start("--head", "--port", "0")
    wrong = os.path.join(str(tmp_path), "wrong.token")
    write_token(wrong, new_token())
    refused = zray_cli("node", "start", "--peers", head, "--host", "127.0.0.2",
                       "--token-file", wrong, *SMALL)
    assert refused.returncode == 1, refused.stderr
    assert "refused this cluster token" in refused.stderr.splitlines()[-1]


def test_init_refuses_what_ray_refuses() -> None:
    with pytest.raises(ConnectionError, match="no zray cluster runs"):
        zray.init(address="auto")
    with pytest.raises(ValueError, match="must not be provided"):
        zray.init(address="auto", num_cpus=1)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "curve"])
def test_the_door_admits_only_the_clusters_credentials(nodes_stopped: None,
                                                       encrypted: bool) -> None:
    """A valid Hello from (a) a socket with no security, (b) CURVE with the right server
    key but a fresh client key, (c) credentials of a wrong token: nothing comes back in
    2 s, and each leaves a log line; (d) the right token's credentials get a Welcome."""
    env = {"ZRAY_ENCRYPT_LOOPBACK": "1" if encrypted else "0"}
    head = start("--head", "--port", "0", env=env)
    right = Credentials.from_token(open(token_path(head)).read().strip(), encrypted)
    wrong = Credentials.from_token(new_token(), encrypted)
    endpoint = f"tcp://{head}"
    context = zmq.Context()

    def fresh_curve_key(sock: zmq.Socket) -> None:
        public, secret = zmq.curve_keypair()
        sock.setsockopt(zmq.CURVE_SERVERKEY, right.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)

    setups = {"no security": lambda sock: None,
              "a fresh CURVE key": fresh_curve_key,
              "a wrong token": lambda sock: secure_client(sock, endpoint, wrong),
              "the right token": lambda sock: secure_client(sock, endpoint, right)}
    sockets = {}
    try:
        for name, setup in setups.items():
            sock = sockets[name] = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            setup(sock)
            sock.connect(endpoint)
            sock.send_multipart(p.encode(p.Hello(b"", version(), p.PROTOCOL_VERSION)))
        answered = {name for name, sock in sockets.items() if sock.poll(2000)}
        assert answered == {"the right token"}
        assert isinstance(p.decode(sockets["the right token"].recv_multipart()), p.Welcome)
    finally:
        for sock in sockets.values():
            sock.close(linger=0)
        context.term()
    log = _agent_log(head)
    refused = [line for line in log.splitlines() if "refused a connection" in line]
    assert len(refused) >= 2, log  # (a mechanism mismatch may end before it is logged)
    assert any("wrong credentials" in line or "unknown CURVE client key" in line
               for line in refused), refused


def _agent_log(address: str) -> str:
    from zray.mesh.records import nodes_here

    node = next(n for n in nodes_here() if n.address == address)
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        with open(os.path.join(node.session, "agent.log")) as f:
            text = f.read()
        if text.count("refused a connection") >= 2:
            break
        time.sleep(0.05)
    return text



def test_a_session_directory_too_long_for_sockets_is_refused_at_start(tmp_path: str) -> None:
    deep = os.path.join(str(tmp_path), "d" * 90)
    os.makedirs(deep)
    done = zray_cli("node", "start", "--head", "--port", "0", *SMALL, env={"TMPDIR": deep})
    assert done.returncode == 1 and "too long for the Unix sockets" in done.stderr
    assert os.listdir(deep) == []  # (nothing started, nothing left)


def test_a_node_refuses_another_protocol_by_name(nodes_stopped: None) -> None:
    head = start("--head", "--port", "0")
    right = Credentials.from_token(open(token_path(head)).read().strip())
    context = zmq.Context()
    sock = secure_dealer(context, f"tcp://{head}", right)
    try:
        sock.send_multipart(p.encode(p.Hello(b"", "0.0.9", p.PROTOCOL_VERSION + 1)))
        assert sock.poll(5000)
        refused = p.decode(sock.recv_multipart())
        assert isinstance(refused, p.Rejected) and "zray 0.0.9" in refused.reason
        frame = bytearray(p.encode(p.Hello(b"", "9.9", 9))[0])
        frame[0] = p.PROTOCOL_VERSION + 1  # a frame of another protocol altogether
        sock.send(bytes(frame))
        assert sock.poll(5000)
        kind, text = sock.recv_multipart()
        assert kind == b"zray-version-refused"
        assert f"speaks protocol {p.PROTOCOL_VERSION}" in text.decode()
    finally:
        sock.close(linger=0)
        context.term()


def test_auto_joins_the_newest_cluster_and_an_address_chooses(nodes_stopped: None) -> None:
    first = start("--head", "--port", "0")
    second = start("--head", "--port", "0", "--host", "127.0.0.2")
    script = textwrap.dedent("""
        import zray
        zray.init(address=None)
        print(zray.nodes()[0]["NodeManagerAddress"])
        zray.shutdown()
    """)
    for address, expected in (("auto", "127.0.0.2"), (first, "127.0.0.1")):
        driver = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=60,
                                env={**os.environ, "ZRAY_ADDRESS": address})
        assert driver.returncode == 0, driver.stderr
        assert driver.stdout.split() == [expected]
        if address == "auto":
            assert f"joining the newest, {second}" in driver.stderr
