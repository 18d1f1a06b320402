"""Chaos: kill nodes under load and check that nothing was lost, run twice or reordered.

``python -m zray.chaos --minutes N [--seed S]`` (the suite runs a short one): a cluster of
three 1-CPU nodes (``zray.cluster_utils.Cluster``) runs rounds of

- a tree reduce over 1 MiB leaves (each leaf a distinct array; the sum is checked), and
- calls to 10 actors (``max_restarts=-1, max_task_retries=-1``), each appending a line
  when a call starts and one when it ends (actor, incarnation, call seq, time) to its own
  O_APPEND file,

while another thread kills a node other than the head (SIGKILL of its agent) at random
moments and adds a new one after each. At the end the actor files must show: every call
whose answer the driver got ended before the answer and never started after it; calls
ran in call order (each call's last run started after the call before it ended); and the
answers were the calls' own. Prints a JSON report, with the seed that replays the kills.

``python -m zray.chaos --recovery`` times one node's death instead: from the kill to its
DEAD row, and to the result of the task it was running, run again elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from typing import Any

import zray
from zray.cluster_utils import Cluster

LEAVES = 16
ACTORS = 10
CALLS_PER_ROUND = 3
LEAF_FLOATS = 131_072  # 1 MiB


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:  # O_APPEND: each line whole, whoever writes
        f.write(line + "\n")


@zray.remote(max_retries=-1)
def leaf(round_: int, i: int) -> Any:
    import numpy as np

    return np.full(LEAF_FLOATS, float(round_ * LEAVES + i))


@zray.remote(max_retries=-1)
def add(a: Any, b: Any) -> Any:
    return a + b


@zray.remote(max_restarts=-1, max_task_retries=-1)
class Recorder:
    def __init__(self, index: int, path: str) -> None:
        self.index, self.path = index, path
        self.incarnation = f"{os.getpid()}.{time.time_ns()}"

    def call(self, seq: int, seconds: float) -> int:
        _append(self.path, f"{self.index} {self.incarnation} {seq} start {time.time()!r}")
        time.sleep(seconds)
        _append(self.path, f"{self.index} {self.incarnation} {seq} end {time.time()!r}")
        return seq


def tree_sum(round_: int) -> Any:
    level = [leaf.remote(round_, i) for i in range(LEAVES)]
    while len(level) > 1:
        level = [add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class Killer(threading.Thread):
    """Kills a random node other than the head every ``every`` seconds (jittered), then
    adds a new one; stops after ``at_most`` kills or when told."""

    def __init__(self, cluster: Cluster, rng: random.Random, every: float, at_most: int) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.cluster, self.rng, self.every, self.at_most = cluster, rng, every, at_most
        self.stop = threading.Event()
        self.kills: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.kills) < self.at_most and not self.stop.wait(
                    self.every * self.rng.uniform(0.5, 1.5)):
                node = self.rng.choice(self.cluster.worker_nodes)
                killed = time.time()
                self.cluster.remove_node(node, allow_graceful=False)
                added = self.cluster.add_node(num_cpus=1)
                self.kills.append({"node": node.node_id, "at": killed,
                                   "replaced_by": added.node_id})
        except BaseException as exc:  # (reported by the main thread)
            self.error = exc


def _get(ref: Any, what: str) -> Any:
    try:
        return zray.get(ref, timeout=120)
    except zray.exceptions.GetTimeoutError as exc:
        raise AssertionError(f"{what} hangs ({ref!r}): {_diagnose(ref.id)}") from exc


def _diagnose(object_id: bytes) -> str:
    """What the driver knows of a result that never came (for a hang's report)."""
    from zray import core
    from zray.ids import task_of

    client = core.current()
    if client is None or client.leasing is None:
        return "no driver"
    return json.dumps(client.leasing.describe(task_of(object_id)), default=str)


def check_calls(paths: list[str], answered: dict[tuple[int, int], float]) -> dict[str, int]:
    """Check the actors' files against the answers the driver got (``answered``: (actor,
    seq) -> when). Raises AssertionError naming the first breach."""
    runs: dict[tuple[int, int], list[tuple[str, str, float]]] = {}
    for path in paths:
        for line in open(path).read().splitlines():
            index, incarnation, number, what, at = line.split()
            runs.setdefault((int(index), int(number)), []).append((incarnation, what, float(at)))
    counts = {"calls": len(answered), "runs started": 0, "interrupted": 0,
              "ended twice (answer lost with its node)": 0}
    previous_end: dict[int, float] = {}
    for (actor, seq), got in sorted(answered.items()):
        events = runs.get((actor, seq), [])
        starts = [(inc, at) for inc, what, at in events if what == "start"]
        ends = [(inc, at) for inc, what, at in events if what == "end"]
        assert ends and min(at for _, at in ends) <= got, \
            f"actor {actor} call {seq}: answered without a run that ended first"
        assert all(at <= got for _, at in starts), \
            f"actor {actor} call {seq}: started again after its answer"
        last_start = max(at for _, at in starts)
        assert last_start >= previous_end.get(actor, 0.0), \
            f"actor {actor} call {seq}: started before call {seq - 1} ended"
        previous_end[actor] = max(at for _, at in ends)
        counts["runs started"] += len(starts)
        counts["interrupted"] += len(starts) - len(ends)
        counts["ended twice (answer lost with its node)"] += len(ends) > 1
    return counts


def run(seconds: float, seed: int, kills: int, every: float, workdir: str) -> dict[str, Any]:
    rng = random.Random(seed)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    killer = None
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cluster.connect()
        paths = [os.path.join(workdir, f"actor-{i}.log") for i in range(ACTORS)]
        actors = [Recorder.options(  # type: ignore[attr-defined]
                  scheduling_strategy="SPREAD").remote(i, path)
                  for i, path in enumerate(paths)]
        zray.get([a.call.remote(-1, 0.0) for a in actors], timeout=60)
        for path in paths:
            os.truncate(path, 0)  # (the warm-up call is not counted)
        killer = Killer(cluster, rng, every, kills)
        killer.start()
        answered: dict[tuple[int, int], float] = {}
        rounds, seq, started = 0, 0, time.monotonic()
        while time.monotonic() - started < seconds or len(killer.kills) < kills:
            assert killer.error is None, f"the killer failed: {killer.error!r}"
            total = tree_sum(rounds)
            calls = [(i, seq + k, actor.call.remote(seq + k, rng.uniform(0.0, 0.05)))
                     for k in range(CALLS_PER_ROUND) for i, actor in enumerate(actors)]
            for i, call_seq, ref in calls:  # (each caller's answers, in call order)
                assert _get(ref, f"actor {i}'s call {call_seq}") == call_seq
                answered[i, call_seq] = time.time()
            expected = float(sum(range(rounds * LEAVES, (rounds + 1) * LEAVES)))
            got = _get(total, f"round {rounds}'s tree sum")
            assert got.shape == (LEAF_FLOATS,) and float(got[0]) == float(got[-1]) == expected, \
                f"round {rounds}: the tree's sum is {got[0]}, not {expected}"
            rounds, seq = rounds + 1, seq + CALLS_PER_ROUND
        killer.stop.set()
        killer.join(60)
        checked = check_calls(paths, answered)
        _detection_times(killer.kills)
        from zray import core

        client = core.current()
        rebuilt = client.leasing.rebuilt if client and client.leasing else 0
        return {"seed": seed, "seconds": round(time.monotonic() - started, 1),
                "rounds": rounds, "tree sums checked": rounds, "leaf tasks": rounds * LEAVES,
                "tasks rebuilt from lineage": rebuilt, "kills": killer.kills, **checked}
    finally:
        if killer is not None:
            killer.stop.set()
            killer.join(60)
        cluster.shutdown()


@zray.remote(max_retries=3)
def _first_attempt_hangs(path: str) -> str:
    _append(path, "started")
    if len(open(path).read().splitlines()) == 1:
        time.sleep(3600)  # (until its node is killed)
    return zray.get_runtime_context().get_node_id()


def recovery() -> dict[str, float]:
    """One node killed while it runs a task: seconds from the kill to its DEAD row, and
    to the result of the task run again elsewhere (issue 16's detection and recovery)."""
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cluster.connect()
        with tempfile.TemporaryDirectory(prefix="zray-chaos-") as workdir:
            started = os.path.join(workdir, "started")
            ref = _first_attempt_hangs.options(scheduling_strategy=(
                NodeAffinitySchedulingStrategy(node.node_id, soft=True))).remote(started)
            while not os.path.exists(started):
                time.sleep(0.01)
            killed = time.monotonic()
            cluster.remove_node(node, allow_graceful=False)
            while any(n["NodeID"] == node.node_id and n["Alive"] for n in zray.nodes()):
                time.sleep(0.02)
            dead = time.monotonic() - killed
            _get(ref, "the task run again")
            return {"kill to DEAD row, s": round(dead, 2),
                    "kill to the result of the task run again, s":
                        round(time.monotonic() - killed, 2)}
    finally:
        cluster.shutdown()


def _detection_times(kills: list[dict[str, Any]]) -> None:
    """Each kill's time to the DEAD row its node got (the GCS's ``died``)."""
    from zray.util.state import list_nodes

    rows = {row.get("node_id"): row for row in list_nodes(limit=10_000)}
    for kill in kills:
        died = rows.get(kill["node"], {}).get("died")
        kill["declared dead after s"] = round(float(died) - kill["at"], 2) if died else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zray.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-every", type=float, default=None,
                        help="seconds between kills, on average (default: 3 kills a minute)")
    parser.add_argument("--recovery", action="store_true",
                        help="instead: time one node's death to its DEAD row and to a "
                             "task's result run again elsewhere")
    args = parser.parse_args(argv)
    if args.recovery:
        print(json.dumps(recovery()))
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"chaos: seed {seed}", flush=True)
    seconds = args.minutes * 60
    every = args.kill_every or 20.0
    with tempfile.TemporaryDirectory(prefix="zray-chaos-") as workdir:
        report = run(seconds, seed, max(3, int(seconds / every)), every, workdir)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
