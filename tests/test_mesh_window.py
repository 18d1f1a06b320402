"""Credit windows on the mesh: what one node has in flight to another is bounded, and
nothing is lost or reordered when a window is full (zray/mesh/window.py)."""

from __future__ import annotations

import os
import time

import pytest
from conftest import assert_no_leaks

import zray
from zray.cluster_utils import Cluster
from zray.mesh.window import ReceiveWindow, SendWindow


def test_a_send_window_holds_back_past_its_credit_and_keeps_order() -> None:
    wire: list[int] = []
    window = SendWindow(4, lambda frames: wire.append(int(frames[0])))
    receiver = ReceiveWindow(4)
    for i in range(100_000):
        window.send([str(i).encode()])
    assert wire == [0, 1, 2, 3] and len(window.queued) == 99_996
    handled = 0
    while handled < len(wire):  # the receiver takes what arrived, and gives credit back
        in_flight = len(wire) - handled
        assert in_flight <= 4  # (its queue never holds more than the window)
        credit = receiver.handled()
        handled += 1
        if credit:
            window.granted(credit)
    assert wire == list(range(100_000)) and not window.queued


@pytest.mark.timeout(120)
def test_output_of_100000_lines_crosses_a_window_of_2_whole_and_in_order(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """Every LogLines message from the worker's node to the driver's waits for credit
    (a window of 2, HWMs of 1000): all 100,000 lines arrive, in order."""
    monkeypatch.setenv("ZRAY_MESH_WINDOW", "2")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1, resources={"far": 1})
        cluster.connect()

        @zray.remote(resources={"far": 1})
        def chatter(n: int) -> int:
            for i in range(n):
                print(f"line {i}", flush=i % 50 == 0)
            return n

        assert zray.get(chatter.remote(100_000)) == 100_000
        # The answer may come before the lines (straight from the worker's node), and a
        # capture read while they are written loses some: read once, when all are in.
        deadline, size = time.monotonic() + 60, -1
        while size != os.fstat(1).st_size and time.monotonic() < deadline:
            size = os.fstat(1).st_size
            time.sleep(0.5)
        numbers = [int(line.rsplit(" ", 1)[1]) for line in capfd.readouterr().out.splitlines()
                   if ") line " in line]
        assert numbers == list(range(100_000))
    finally:
        cluster.shutdown()
    assert_no_leaks()
