"""``zray microbenchmark --breakdown``: where one round trip's time goes, by process and step.

    python -m zray.bench_breakdown [--calls 2000] [--json]

A private 2-CPU cluster runs ``--calls`` no-op tasks, then as many trivial actor calls, each
waited for before the next. Both processes stamp each call at the boundaries of its steps
with ``time.perf_counter_ns`` (CLOCK_MONOTONIC: one clock for every process of a machine):
the driver by wrapping its own functions here, the worker because it was started with
``ZRAY_BENCH_STAMPS`` naming a directory (zray/node/worker.py calls ``stamp_worker`` then,
and only then: nothing is timed otherwise). The median of each step is printed, with its
p90. Wrapping costs a few microseconds per stamp, so the steps add up to a little more
than ``zray microbenchmark``'s round trip.

Steps, in order along the call's path: ``submit`` (``.remote()`` until its message starts
going to the worker's socket: its lane, zray/lane.py), ``to worker`` (until the worker's
main thread has it), ``unpack`` (arguments and context, until the function starts),
``run``, ``pack`` (the result and its TaskDone), ``reply`` (until the TaskDone starts going
to the owner), ``to owner`` (until the owner has it: its I/O thread, or the waiting
``get`` itself, zray/leader.py), ``wake`` (until the waiting thread runs on), ``read``
(the value, until ``get`` returns). A send is inside
the step it starts: the process it wakes may run before the send returns.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

# (Only these imports at the top: a worker imports this module, to look for the variable.)

STAMPS_VARIABLE = "ZRAY_BENCH_STAMPS"
_STEPS = [("call", "sending", "submit"), ("sending", "got", "to worker"),
          ("got", "start", "unpack"), ("start", "end", "run"),
          ("end", "hand", "pack"), ("hand", "replied", "reply"),
          ("replied", "answer", "to owner"), ("answer", "woke", "wake"),
          ("woke", "done", "read")]


def stamp_worker(directory: str) -> None:
    """In a worker started with ZRAY_BENCH_STAMPS: stamp each task's steps into a file of
    its own in ``directory``."""
    from zray import peers
    from zray import protocol as p
    from zray.node import execution, inbox

    out = open(os.path.join(directory, f"worker-{os.getpid()}.txt"), "a", buffering=1)
    now = time.perf_counter_ns

    def stamp(task_id: bytes, step: str) -> None:
        out.write(f"{task_id.hex()} {step} {now()}\n")

    take = inbox.TaskInbox.next

    def next_task(self: Any) -> Any:
        task = take(self)
        if task is not None:
            stamp(task.task_id, "got")
        return task

    run_sync = execution.run_sync

    def timed_run(client: Any, task: Any, target: Any) -> Any:
        def timed_target() -> Any:
            fn = target()

            def timed(*args: Any, **kwargs: Any) -> Any:
                stamp(task.task_id, "start")
                try:
                    return fn(*args, **kwargs)
                finally:
                    stamp(task.task_id, "end")
            return timed
        return run_sync(client, task, timed_target)

    hand_in = execution.hand_in

    def timed_hand_in(client: Any, outcome: Any) -> None:
        stamp(outcome[0].task_id, "hand")
        hand_in(client, outcome)

    send = peers.Peers.send

    def timed_send(self: Any, peer: bytes, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, p.TaskDone):
            stamp(msg.task_id, "replied")
        send(self, peer, msg, *args, **kwargs)

    inbox.TaskInbox.next = next_task  # type: ignore[method-assign]
    execution.run_sync = timed_run
    execution.hand_in = timed_hand_in
    peers.Peers.send = timed_send  # type: ignore[method-assign]


def _stamp_driver(stamps: dict[str, dict[str, int]]) -> None:
    from zray import core, peers
    from zray import protocol as p
    from zray.ids import task_of

    now = time.perf_counter_ns
    send = peers.Peers.send

    def timed_send(self: Any, worker: bytes, msg: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(msg, p.ExecuteTask):
            stamps[msg.task_id.hex()]["sending"] = now()
        return send(self, worker, msg, *args, **kwargs)

    answered = core.CoreClient._answered

    def timed_answered(self: Any, answers: list[Any], from_agent: bool) -> None:
        for done in answers:
            stamps[done.task_id.hex()].setdefault("answer", now())
        answered(self, answers, from_agent)

    await_ = core.CoreClient._await

    def timed_await(self: Any, ids: list[bytes], *args: Any, **kwargs: Any) -> None:
        await_(self, ids, *args, **kwargs)
        for object_id in ids:
            stamps[task_of(object_id).hex()]["woke"] = now()

    peers.Peers.send = timed_send  # type: ignore[method-assign,assignment]
    core.CoreClient._answered = timed_answered  # type: ignore[method-assign]
    core.CoreClient._await = timed_await  # type: ignore[method-assign]


def measure(calls: int) -> dict[str, dict[str, tuple[float, float]]]:
    """{row: {step: (median µs, p90 µs)}} for a task's and an actor call's round trip."""
    import collections
    import glob
    import tempfile

    directory = tempfile.mkdtemp(prefix="zray-breakdown-")
    os.environ[STAMPS_VARIABLE] = directory
    import zray
    from zray.ids import task_of

    stamps: dict[str, dict[str, int]] = collections.defaultdict(dict)
    _stamp_driver(stamps)
    zray.init(num_cpus=2)
    try:
        noop = zray.remote(lambda x: x)
        actor = zray.remote(_Echo).remote()
        rows = {}
        for row, call in (("task round trip", noop.remote),
                          ("actor call round trip", actor.call.remote)):
            for i in range(200):  # (warm: leases, function exports, the actor's address)
                zray.get(call(i))
            stamps.clear()
            for i in range(calls):
                started = time.perf_counter_ns()
                ref = call(i)
                zray.get(ref)
                stamps[task_of(ref.id).hex()].update(call=started, done=time.perf_counter_ns())
            rows[row] = _steps(dict(stamps), directory)
        return rows
    finally:
        zray.shutdown()
        for path in glob.glob(os.path.join(directory, "*")):
            os.remove(path)
        os.rmdir(directory)
        del os.environ[STAMPS_VARIABLE]


class _Echo:
    def call(self, value: Any) -> Any:
        return value


def _steps(stamps: dict[str, dict[str, int]], directory: str
           ) -> dict[str, tuple[float, float]]:
    import glob
    import statistics

    for path in glob.glob(os.path.join(directory, "worker-*.txt")):
        with open(path) as f:
            for line in f:
                task_id, step, at = line.split()
                if task_id in stamps:
                    stamps[task_id][step] = int(at)
    whole = [s for s in stamps.values() if all(a in s and b in s for a, b, _ in _STEPS)]
    if not whole:
        raise RuntimeError("no call was stamped at every step (did the workers start with "
                           f"{STAMPS_VARIABLE}?)")
    out = {}
    for start, end, name in _STEPS + [("call", "done", "total")]:
        spans = sorted((s[end] - s[start]) / 1000 for s in whole)
        out[name] = (statistics.median(spans), spans[int(len(spans) * 0.9)])
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="zray microbenchmark --breakdown",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = measure(args.calls)
    if args.json:
        print(json.dumps(rows))
        return 0
    for row, steps in rows.items():
        print(f"{row} ({args.calls} calls, µs):")
        for name, (median, p90) in steps.items():
            print(f"  {name:<10} median {median:8.1f}   p90 {p90:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
