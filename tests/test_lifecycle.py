"""Starting and stopping: driver exits of every kind, output forwarding, the broker's log.

Each case runs a driver in its own process (so it can exit, raise or be killed) and then
relies on the autouse leak check: no process, socket, session directory or arena remains.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import gcs_shards, task_rows

import zray
from zray import api

pytestmark = pytest.mark.timeout(90)


def run_driver(body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = "import zray\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout)


def test_driver_exit_without_shutdown_cleans_up():
    out = run_driver("""
        zray.init(num_cpus=1)
        print(zray.get(zray.remote(lambda: 7).remote()))
    """)
    assert out.returncode == 0 and out.stdout.strip() == "7", out.stderr


def test_a_tmpdir_too_long_for_unix_sockets_is_named_and_leaves_nothing(tmp_path):
    long_tmp = tmp_path / ("x" * (100 - len(str(tmp_path))))
    long_tmp.mkdir()
    script = "import zray\nzray.init(num_cpus=1)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "TMPDIR": str(long_tmp)})
    assert out.returncode != 0
    assert "too long for the Unix sockets" in out.stderr and "TMPDIR" in out.stderr, out.stderr
    assert list(long_tmp.iterdir()) == []


def test_driver_exception_cleans_up():
    out = run_driver("""
        zray.init(num_cpus=1)
        zray.get(zray.put(1))
        raise RuntimeError("driver fails")
    """)
    assert out.returncode == 1 and "driver fails" in out.stderr


def test_driver_sigkill_is_noticed_by_the_agent():
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, zray, numpy as np
        zray.init(num_cpus=1)
        ref = zray.put(np.ones(10_000_000))  # something in /dev/shm
        print("ready", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()


def test_output_is_prefixed_and_can_be_turned_off():
    body = """
        zray.init(num_cpus=1, log_to_driver={flag})

        @zray.remote
        def shout():
            print("hello from a task")

        zray.get(shout.remote())
        zray.shutdown()
    """
    on = run_driver(body.replace("{flag}", "True"))
    assert on.returncode == 0, on.stderr
    pid_line = [line for line in on.stdout.splitlines() if "hello from a task" in line]
    assert len(pid_line) == 1 and pid_line[0].startswith("(shout pid=")
    off = run_driver(body.replace("{flag}", "False"))
    assert off.returncode == 0 and "hello from a task" not in off.stdout


def test_a_print_without_a_newline_is_a_line_of_its_own_task():
    out = run_driver("""
        zray.init(num_cpus=1)

        @zray.remote
        def partial():
            print("no newline here", end="")

        @zray.remote
        def whole():
            print("a line of its own")

        zray.get(partial.remote())
        zray.get(whole.remote())
        zray.shutdown()
    """)
    assert out.returncode == 0, out.stderr
    lines = [line.split(") ", 1) for line in out.stdout.splitlines()]
    assert [(prefix.split()[0], text) for prefix, text in lines] == [
        ("(partial", "no newline here"), ("(whole", "a line of its own")], out.stdout


def test_small_dev_shm_falls_back_to_disk_with_the_fix_named():
    too_big = shutil.disk_usage("/dev/shm").free + 2**30
    out = run_driver(f"""
        import numpy as np
        zray.init(num_cpus=1, object_store_memory={too_big})
        a = zray.get(zray.put(np.arange(1_000_000)))
        print(int(a.sum()), zray.store_stats()["path"])
        zray.shutdown()
    """)
    assert out.returncode == 0, out.stderr
    assert "--shm-size" in out.stderr and "object_store_memory" in out.stderr
    total, path = out.stdout.split()
    assert int(total) == sum(range(1_000_000)) and not path.startswith("/dev/shm")


def test_broker_sigkill_mid_workload_replays_its_log():
    zray.init(num_cpus=2)
    try:
        endpoint = api._cluster.session  # type: ignore[union-attr]

        @zray.remote
        def work(i):
            time.sleep(0.05)
            return i

        assert zray.get([work.remote(i) for i in range(20)]) == list(range(20))
        before = wait_for_rows(endpoint, 20)
        running = [work.remote(i) for i in range(20, 60)]  # in flight across the kill
        broker = broker_process()
        broker.send_signal(signal.SIGKILL)
        assert zray.get(running) == list(range(20, 60))
        after = {fields["task_id"]: fields for fields in wait_for_rows(endpoint, 60)}
        assert broker_process().pid != broker.pid  # its supervisor restarted it
        assert {fields["task_id"] for fields in before} <= set(after)
        assert all(after[fields["task_id"]]["state"] == "FINISHED" for fields in before)
    finally:
        zray.shutdown()


def broker_process() -> psutil.Process:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shards = gcs_shards()
        if shards:
            return shards[0]
        time.sleep(0.05)
    raise AssertionError("no broker process")


def wait_for_rows(session: str, count: int) -> list:
    """Rows of finished tasks, once the GCS has at least ``count`` (bounded wait)."""
    deadline = time.monotonic() + 30
    rows: list = []
    while time.monotonic() < deadline:
        rows = [r for r in task_rows(session) if r["state"] == "FINISHED"]
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"the GCS has {len(rows)} finished task rows, expected {count}")


def test_task_history_is_bounded(monkeypatch):
    monkeypatch.setenv("ZRAY_MAX_TASK_HISTORY", "50")
    zray.init(num_cpus=2)
    try:
        session = api._cluster.session  # type: ignore[union-attr]
        noop = zray.remote(lambda i: i)
        assert len(zray.get([noop.remote(i) for i in range(200)])) == 200
        deadline = time.monotonic() + 20
        while not any(r["state"] == "FINISHED" for r in task_rows(session)[-1:]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(task_rows(session)) == 50
        out = subprocess.run([sys.executable, "-m", "zray_cli.main", "inspect", "tasks",
                              "--session", session], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "(50 tasks)" in out.stdout, out.stderr
        assert "150 older tasks not kept" in out.stderr
    finally:
        zray.shutdown()


def test_init_twice_and_shutdown_twice():
    zray.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="already"):
            zray.init(num_cpus=1)
        zray.init(num_cpus=1, ignore_reinit_error=True)
        assert zray.get(zray.put(np.int64(3))) == 3
    finally:
        zray.shutdown()
    zray.shutdown()
    assert not zray.is_initialized()


def test_rays_init_options_zray_does_not_honour_are_refused_or_noticed(capsys):
    with pytest.raises(ValueError, match=r"_temp_dir='/elsewhere'\) is not supported"):
        zray.init(num_cpus=1, _temp_dir="/elsewhere")
    assert not zray.is_initialized()
    zray.init(num_cpus=1, logging_level="info", local_mode=False)
    zray.shutdown()
    zray.init(num_cpus=1, logging_level="info")
    zray.shutdown()
    assert capsys.readouterr().err.count("init(logging_level=...) changes only cosmetics") == 1


def test_init_returns_rays_context_object():
    """Its address_info in Ray's keys; ``with zray.init():`` shuts down at the end."""
    with zray.init(num_cpus=1) as context:
        assert context.address_info["node_id"] == zray.get_runtime_context().get_node_id()
        assert os.path.isdir(context["session_dir"]) and context.dashboard_url is None
        assert zray.init(ignore_reinit_error=True) is context
    assert not zray.is_initialized()


def test_a_task_naming_an_unknown_function_fails_and_the_agent_lives():
    """A well-formed SubmitTask whose function was never exported (a client does export
    first): its result is an error naming the function; the agent goes on."""
    from zray import core
    from zray.specs import FunctionDescriptor, TaskOptions

    zray.init(num_cpus=1)
    try:
        agent_pid = api._cluster.agent.pid  # type: ignore[union-attr]
        client = core.current()
        never_exported = FunctionDescriptor(b"\x07" * 16, "ghost", b"")
        client._exported.add(never_exported.function_id)  # so submit sends no export
        _, [ref] = client.submit(never_exported, "ghost", ([zray.put(1)],), {},
                                 TaskOptions(1, {"CPU": 1.0}, 0, b""))
        with pytest.raises(zray.exceptions.ZrayError, match="never exported"):
            zray.get(ref, timeout=30)
        assert zray.get(zray.remote(lambda: "alive").remote(), timeout=30) == "alive"
        assert api._cluster.agent.pid == agent_pid and api._cluster.agent.poll() is None  # type: ignore[union-attr]
    finally:
        zray.shutdown()


def test_a_message_the_agent_cannot_use_gets_an_error_reply_and_changes_nothing():
    import zmq

    from zray import protocol as p

    zray.init(num_cpus=1)
    stand_in = subprocess.Popen(["sleep", "60"])  # the fake client's pid: not the driver's
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        agent_pid = api._cluster.agent.pid  # type: ignore[union-attr]
        sock.setsockopt(zmq.IDENTITY, b"\x05" * 8 + b"r")
        sock.connect(f"ipc://{api._cluster.session}/agent.sock")  # type: ignore[union-attr]
        sock.send_multipart(p.encode(p.Register(b"\x05" * 8, stand_in.pid, "driver", b"j",
                                                False, "")))
        assert sock.poll(10_000) and isinstance(p.decode(sock.recv_multipart()), p.Registered)
        for wrong in (p.Registered(b"n", 1, "", 0, {}),  # a message only the agent sends
                      p.SubmitTask(b"\x06" * 16, b"j", b"", "f", b"", [], [], -3, {}, 0,
                                   b"", b"", {}, False, b"", b"")):  # -3 results
            sock.send_multipart(p.encode(wrong))
            assert sock.poll(10_000), f"no reply to {type(wrong).__name__}"
            reply = p.decode(sock.recv_multipart())
            assert isinstance(reply, p.Rejected) and reply.of == wrong.op, reply
        assert zray.get(zray.remote(lambda: "alive").remote(), timeout=30) == "alive"
        assert api._cluster.agent.pid == agent_pid and api._cluster.agent.poll() is None  # type: ignore[union-attr]
    finally:
        sock.close(linger=0)
        context.term()
        stand_in.kill()
        stand_in.wait()
        zray.shutdown()


def test_frozen_broker_does_not_block_tasks():
    zray.init(num_cpus=2)
    broker = broker_process()
    try:
        broker.send_signal(signal.SIGSTOP)
        noop = zray.remote(lambda i: i)
        assert zray.get([noop.remote(i) for i in range(200)], timeout=30) == list(range(200))
    finally:
        broker.send_signal(signal.SIGCONT)
        zray.shutdown()


def test_garbage_frames_do_not_crash_the_agent():
    import zmq

    zray.init(num_cpus=1)
    try:
        endpoint = f"ipc://{api._cluster.session}/agent.sock"  # type: ignore[union-attr]
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.connect(endpoint)
        for frames in ([b"junk"], [b"\x01\x04", b"not a pickle"], [b"\x09\x01", b""],
                       [b"\x01\x04", b"\x80\x05\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c"]):
            sock.send_multipart(frames)
        sock.close(linger=1000)
        context.term()
        assert zray.get(zray.remote(lambda: "alive").remote(), timeout=30) == "alive"
    finally:
        zray.shutdown()


def test_agent_death_fails_waiting_calls_instead_of_hanging():
    zray.init(num_cpus=1)
    try:
        @zray.remote
        def forever():
            time.sleep(300)

        assert zray.get(zray.remote(lambda: 1).remote()) == 1  # the agent has logged
        ref = forever.remote()
        agent = next(p for p in psutil.Process().children() if "zray.node.boot" in
                     " ".join(p.cmdline()))
        agent.send_signal(signal.SIGKILL)
        with pytest.raises(zray.exceptions.NodeDiedError) as info:
            zray.get(ref, timeout=30)
        why = str(info.value)  # how it ended, and the end of its log
        assert f"node agent (pid {agent.pid}) was killed by SIGKILL" in why, why
        assert "agent.log" in why and "[agent] INFO node" in why, why
        with pytest.raises(zray.exceptions.NodeDiedError):
            zray.get(ref, timeout=30)  # and again, once the I/O thread is gone
    finally:
        zray.shutdown()


def test_a_get_waiting_in_another_thread_when_zray_shuts_down_raises() -> None:
    """It was reading the lanes (the leader): it leaves them before they close, and says
    why it ends instead of waiting for ever."""
    @zray.remote
    def long() -> None:
        time.sleep(30)

    zray.init(num_cpus=1)
    ref = long.remote()
    raised: list[BaseException] = []

    def blocked() -> None:
        try:
            zray.get(ref)
        except BaseException as exc:  # noqa: BLE001 (whatever it is, the test names it)
            raised.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    leader = api.client_for_call()._leader
    deadline = time.monotonic() + 10
    while not leader.leading():  # (the case: it reads the lanes when zray shuts down)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    zray.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    assert len(raised) == 1 and "zray.shutdown() was called" in str(raised[0]), raised
