"""Pure tests of the local scheduler: events in, dispatches out; no processes, no sockets."""

from __future__ import annotations

import itertools

import pytest

from zray import protocol as p
from zray.node.scheduler import TRANSITIONS, Dispatch, Scheduler, Task, TaskState

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)


def make_task(resources: dict[str, float] | None = None, max_retries: int = 0,
              name: str = "f", runtime_env: str = "") -> Task:
    task_id = next(_ids).to_bytes(16, "big")
    spec = p.SubmitTask(
        task_id=task_id, job_id=b"job1", function_id=b"fn" * 8, name=name, args=b"",
        deps=[], contained=[], num_returns=1,
        resources={"CPU": 1.0} if resources is None else resources,
        max_retries=max_retries, retry_filter=b"", actor_id=b"", actor_options={}, direct=False,
        sent_to=b"", parent=b"", runtime_env=runtime_env,
    )
    return Task(spec, submitter=b"driver")


def decide(sched: Scheduler) -> tuple[list[Dispatch], int]:
    """The scheduler's plan: dispatches, and how many workers to start (none of an env)."""
    plan = sched.schedule()
    assert plan.stop == [] and set(plan.start) <= {""}
    return plan.dispatches, len(plan.start)


def with_workers(sched: Scheduler, *names: bytes) -> None:
    for name in names:
        sched.worker_started(name)


def submit_all(sched: Scheduler, *tasks: Task) -> None:
    for task in tasks:
        sched.submit(task, set())


def dispatched(sched: Scheduler) -> list[Task]:
    dispatches, _ = decide(sched)
    return [d.task for d in dispatches]


# --- CPU slots -------------------------------------------------------------------------


def test_two_cpus_run_two_tasks_never_three() -> None:
    sched = Scheduler({"CPU": 2})
    with_workers(sched, b"w1", b"w2", b"w3")
    tasks = [make_task() for _ in range(3)]
    submit_all(sched, *tasks)

    dispatches, to_start = decide(sched)
    assert [d.task for d in dispatches] == tasks[:2]
    assert len({d.worker for d in dispatches}) == 2
    assert to_start == 0
    assert tasks[2].state is TaskState.QUEUED
    assert sched.available["CPU"] == 0
    assert dispatched(sched) == []  # asking again changes nothing

    sched.task_done(tasks[0], retry=False)
    assert tasks[0].state is TaskState.FINISHED and tasks[0].spec.task_id not in sched.tasks
    assert dispatched(sched) == [tasks[2]]
    assert sched.available["CPU"] == 0
    for task in tasks[1:]:
        sched.task_done(task, retry=False)
    assert sched.available == {"CPU": 2}
    assert sorted(sched.idle) == [b"w1", b"w2", b"w3"] and not sched.busy


def test_zero_cpu_task_runs_beside_full_cpus() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1", b"w2")
    heavy, light = make_task(), make_task({"CPU": 0.0})
    submit_all(sched, heavy, light)
    assert set(map(id, dispatched(sched))) == {id(heavy), id(light)}


# --- dependencies ----------------------------------------------------------------------


def test_task_waits_for_missing_deps_until_all_are_ready() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    task = make_task()
    sched.submit(task, {b"a", b"b"})
    assert task.state is TaskState.WAITING_DEPS
    assert dispatched(sched) == [] and sched.queued() == 0

    assert sched.object_ready(b"a") == []
    assert task.state is TaskState.WAITING_DEPS and task.missing == {b"b"}
    assert sched.object_ready(b"unrelated") == []
    assert sched.object_ready(b"b") == [task]
    assert task.state is TaskState.QUEUED and sched.queued() == 1
    assert sched.object_ready(b"b") == []  # a second notice is harmless
    assert dispatched(sched) == [task]


def test_object_ready_releases_every_waiting_task() -> None:
    sched = Scheduler({"CPU": 2})
    first, second = make_task(), make_task()
    sched.submit(first, {b"x"})
    sched.submit(second, {b"x"})
    assert {id(t) for t in sched.object_ready(b"x")} == {id(first), id(second)}
    assert sched.queued() == 2


def test_failed_waiting_task_is_not_queued_when_its_dep_arrives() -> None:
    sched = Scheduler({"CPU": 1})
    task = make_task()
    sched.submit(task, {b"x"})
    sched.fail(task)
    assert task.state is TaskState.FAILED and task.spec.task_id not in sched.tasks
    assert sched.object_ready(b"x") == []
    assert sched.queued() == 0


def test_fail_removes_a_queued_task() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    doomed, other = make_task(), make_task()
    submit_all(sched, doomed, other)
    sched.fail(doomed)
    assert sched.queued() == 1
    assert dispatched(sched) == [other]


# --- blocking in get() -----------------------------------------------------------------


def test_blocked_task_lends_its_cpu_and_unblock_takes_it_back() -> None:
    sched = Scheduler({"CPU": 2})
    with_workers(sched, b"w1", b"w2", b"w3")
    t1, t2, t3, t4 = (make_task() for _ in range(4))
    submit_all(sched, t1, t2, t3)
    assert dispatched(sched) == [t1, t2]

    sched.set_blocked(t1.spec.task_id, True)
    assert sched.blocked == 1 and t1.blocked
    sched.set_blocked(t1.spec.task_id, True)  # idempotent
    assert sched.blocked == 1 and sched.available["CPU"] == 1
    assert dispatched(sched) == [t3]

    sched.set_blocked(t1.spec.task_id, False)
    assert sched.blocked == 0 and not t1.blocked
    assert sched.available["CPU"] == -1  # oversubscribed until one of three finishes
    submit_all(sched, t4)
    sched.worker_started(b"w4")
    assert dispatched(sched) == []
    sched.task_done(t3, retry=False)
    assert dispatched(sched) == []
    sched.task_done(t2, retry=False)
    assert dispatched(sched) == [t4]


def test_blocked_task_finishing_returns_its_cpu_once() -> None:
    sched = Scheduler({"CPU": 2})
    with_workers(sched, b"w1")
    task = make_task()
    submit_all(sched, task)
    dispatched(sched)
    sched.set_blocked(task.spec.task_id, True)
    sched.task_done(task, retry=False)
    assert sched.available == {"CPU": 2}
    assert sched.blocked == 0


def test_set_blocked_ignores_unknown_and_not_running_tasks() -> None:
    sched = Scheduler({"CPU": 1})
    queued = make_task()
    submit_all(sched, queued)
    sched.set_blocked(queued.spec.task_id, True)
    sched.set_blocked(b"nope" * 4, True)
    assert sched.blocked == 0 and sched.available == {"CPU": 1} and not queued.blocked


# --- worker death and retries ----------------------------------------------------------


def test_worker_gone_then_retry_until_retries_run_out() -> None:
    sched = Scheduler({"CPU": 1})
    task = make_task(max_retries=2)
    submit_all(sched, task)
    for attempt, worker in enumerate([b"w1", b"w2", b"w3"]):
        sched.worker_started(worker)
        [dispatch], _ = decide(sched)
        assert dispatch.task is task and dispatch.worker == worker
        assert task.attempt == attempt and task.state is TaskState.RUNNING

        assert sched.worker_gone(worker) is task
        assert task.worker is None and worker not in sched.busy
        sched.task_done(task, retry=True)
        assert worker not in sched.idle  # a dead worker is never handed out again
        assert sched.available == {"CPU": 1}
        if attempt < 2:
            assert task.state is TaskState.QUEUED
            assert task.attempt == attempt + 1 and task.retries_left == 1 - attempt
    assert task.state is TaskState.FAILED
    assert task.spec.task_id not in sched.tasks and sched.queued() == 0


def test_retried_task_goes_to_the_head_of_its_queue() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    first, later = make_task(max_retries=1), make_task()
    submit_all(sched, first, later)
    assert dispatched(sched) == [first]
    sched.task_done(first, retry=True)  # e.g. an exception its retry_filter accepts
    assert first.state is TaskState.QUEUED and first.attempt == 1
    assert dispatched(sched) == [first]


def test_work_a_running_task_waits_for_goes_ahead_of_its_queue() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    queued = [make_task() for _ in range(2)]
    submit_all(sched, *queued)
    child = make_task()
    sched.submit(child, set(), first=True)
    assert dispatched(sched) == [child]


def test_retry_without_retries_left_fails() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    task = make_task(max_retries=0)
    submit_all(sched, task)
    dispatched(sched)
    sched.task_done(task, retry=True)
    assert task.state is TaskState.FAILED and task.attempt == 0
    assert sched.idle == [b"w1"]


def test_worker_gone_while_idle_returns_nothing() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    assert sched.worker_gone(b"w1") is None
    assert sched.idle == []
    assert sched.worker_gone(b"never-seen") is None


# --- lifecycle table -------------------------------------------------------------------


@pytest.mark.parametrize("start", list(TaskState))
def test_illegal_transitions_raise_and_change_nothing(start: TaskState) -> None:
    for target in TaskState:
        task = make_task()
        task.state = start
        if target in TRANSITIONS[start]:
            task.move(target)
            assert task.state is target
        else:
            with pytest.raises(ValueError, match=f"{start.name} -> {target.name}"):
                task.move(target)
            assert task.state is start


def test_transition_table_covers_every_state_and_ends_are_final() -> None:
    assert set(TRANSITIONS) == set(TaskState)
    assert TRANSITIONS[TaskState.FINISHED] == set()
    assert TRANSITIONS[TaskState.FAILED] == set()


def test_task_done_on_a_finished_task_changes_nothing() -> None:
    sched = Scheduler({"CPU": 1})
    with_workers(sched, b"w1")
    task = make_task()
    submit_all(sched, task)
    dispatched(sched)
    sched.task_done(task, retry=False)
    with pytest.raises(ValueError):
        sched.task_done(task, retry=False)
    assert sched.available == {"CPU": 1}


def test_task_done_on_a_queued_task_does_not_mint_resources() -> None:
    sched = Scheduler({"CPU": 1})
    task = make_task()
    submit_all(sched, task)
    with pytest.raises(ValueError):
        sched.task_done(task, retry=True)
    assert sched.available == {"CPU": 1}


# --- infeasible tasks ------------------------------------------------------------------


@pytest.mark.parametrize(("total", "resources"), [
    ({"CPU": 2}, {"CPU": 3.0}),
    ({"CPU": 2}, {"CPU": 1.0, "GPU": 1.0}),
    ({"CPU": 2, "GPU": 1}, {"CPU": 1.0, "GPU": 2.0}),
    ({"CPU": 2}, {"CPU": 1.0, "db": 1.0}),
    ({"CPU": 2, "db": 2}, {"CPU": 1.0, "db": 2.5}),
], ids=["cpu", "gpu-none", "gpu-too-few", "custom-none", "custom-too-few"])
def test_infeasible_task_is_flagged_and_never_dispatched(
        total: dict[str, float], resources: dict[str, float]) -> None:
    sched = Scheduler(total)
    with_workers(sched, b"w1", b"w2")
    impossible, fine = make_task(resources), make_task()
    submit_all(sched, impossible, fine)
    assert impossible.infeasible and not fine.infeasible
    dispatches, to_start = decide(sched)
    assert [d.task for d in dispatches] == [fine]
    assert to_start == 0
    assert impossible.state is TaskState.QUEUED
    sched.task_done(fine, retry=False)
    assert dispatched(sched) == []


def test_infeasible_task_does_not_ask_for_workers() -> None:
    sched = Scheduler({"CPU": 2})
    submit_all(sched, make_task({"CPU": 8.0}))
    assert decide(sched) == ([], 0)


# --- GPUs and custom resources ---------------------------------------------------------


def test_whole_gpus_get_distinct_ids_that_return_on_done() -> None:
    sched = Scheduler({"CPU": 4, "GPU": 2})
    with_workers(sched, b"w1", b"w2", b"w3")
    tasks = [make_task({"CPU": 1.0, "GPU": 1.0}) for _ in range(3)]
    submit_all(sched, *tasks)
    first, second = dispatched(sched)
    assert sorted(first.gpu_ids + second.gpu_ids) == [0, 1]
    assert tasks[2].state is TaskState.QUEUED

    freed_id = first.gpu_ids
    sched.task_done(first, retry=False)
    assert first.gpu_ids == []
    assert dispatched(sched) == [tasks[2]]
    assert tasks[2].gpu_ids == freed_id
    for task in (second, tasks[2]):
        sched.task_done(task, retry=False)
    assert sched.gpu_free == [1.0, 1.0] and sched.available["GPU"] == 2


def test_two_gpu_task_gets_two_ids() -> None:
    sched = Scheduler({"CPU": 2, "GPU": 2})
    with_workers(sched, b"w1")
    task = make_task({"CPU": 1.0, "GPU": 2.0})
    submit_all(sched, task)
    assert dispatched(sched) == [task]
    assert sorted(task.gpu_ids) == [0, 1]
    sched.task_done(task, retry=False)
    assert sched.gpu_free == [1.0, 1.0]


def test_fractional_gpus_share_one_gpu() -> None:
    sched = Scheduler({"CPU": 4, "GPU": 1})
    with_workers(sched, b"w1", b"w2", b"w3")
    halves = [make_task({"CPU": 1.0, "GPU": 0.5}) for _ in range(3)]
    submit_all(sched, *halves)
    a, b = dispatched(sched)
    assert a.gpu_ids == b.gpu_ids == [0]
    assert halves[2].state is TaskState.QUEUED
    sched.task_done(a, retry=False)
    assert dispatched(sched) == [halves[2]]
    sched.task_done(b, retry=False)
    sched.task_done(halves[2], retry=False)
    assert sched.gpu_free == [1.0]

    whole = make_task({"CPU": 1.0, "GPU": 1.0})
    submit_all(sched, whole)
    assert dispatched(sched) == [whole] and whole.gpu_ids == [0]


def test_custom_resources_limit_concurrency() -> None:
    sched = Scheduler({"CPU": 8, "db": 2})
    with_workers(sched, b"w1", b"w2", b"w3")
    tasks = [make_task({"CPU": 1.0, "db": 1.0}) for _ in range(3)]
    plain = make_task()
    submit_all(sched, *tasks, plain)
    assert dispatched(sched) == [tasks[0], tasks[1], plain]
    assert tasks[2].state is TaskState.QUEUED
    sched.task_done(tasks[1], retry=False)
    assert dispatched(sched) == [tasks[2]]
    assert sched.available["db"] == 0


# --- growing the worker pool -----------------------------------------------------------


def test_schedule_asks_for_workers_bounded_by_cpus() -> None:
    sched = Scheduler({"CPU": 2})
    tasks = [make_task() for _ in range(5)]
    submit_all(sched, *tasks)
    assert decide(sched) == ([], 2)
    assert sched.starting == 2
    assert decide(sched) == ([], 0)  # the two already starting are enough

    with_workers(sched, b"w1", b"w2")
    assert sched.starting == 0
    dispatches, to_start = decide(sched)
    assert [d.task for d in dispatches] == tasks[:2] and to_start == 0

    sched.set_blocked(tasks[0].spec.task_id, True)
    assert decide(sched) == ([], 1)  # a blocked worker makes room for one more
    sched.worker_failed_to_start()
    assert sched.starting == 0
    assert decide(sched) == ([], 1)  # asked again since that one never came


def test_tasks_taking_half_a_cpu_get_two_workers_per_cpu() -> None:
    sched = Scheduler({"CPU": 2})
    halves = [make_task({"CPU": 0.5}) for _ in range(5)]
    submit_all(sched, *halves)
    assert decide(sched) == ([], 4)
    with_workers(sched, b"w1", b"w2", b"w3", b"w4")
    assert dispatched(sched) == halves[:4]
    assert decide(sched) == ([], 0)  # the fifth waits for half a CPU, not for a worker


def test_schedule_starts_only_the_missing_workers() -> None:
    sched = Scheduler({"CPU": 4})
    with_workers(sched, b"w1")
    submit_all(sched, *(make_task() for _ in range(3)))
    dispatches, to_start = decide(sched)
    assert len(dispatches) == 1 and to_start == 2


def test_no_workers_started_without_runnable_tasks() -> None:
    sched = Scheduler({"CPU": 4})
    assert decide(sched) == ([], 0)
    sched.submit(make_task(), {b"missing"})
    assert decide(sched) == ([], 0)


def test_retire_takes_only_an_idle_worker_out_of_service() -> None:
    sched = Scheduler({"CPU": 1.0})
    with_workers(sched, b"w1", b"w2")
    sched.submit(make_task(), set())
    dispatches, _ = decide(sched)
    busy = dispatches[0].worker
    idle = b"w1" if busy == b"w2" else b"w2"
    assert not sched.retire(busy)
    assert sched.retire(idle)
    assert sched.idle == [] and not sched.retire(idle)


ENV = '{"env_vars":{"A":"1"}}'  # a resolved runtime_env (zray/runtime_env.py)


def test_work_of_a_runtime_env_runs_only_on_workers_of_that_env() -> None:
    sched = Scheduler({"CPU": 1.0})
    with_workers(sched, b"plain")
    in_env = make_task(runtime_env=ENV)
    submit_all(sched, in_env)
    plan = sched.schedule()  # the pool is full: the idle plain worker makes room
    assert (plan.dispatches, plan.start, plan.stop) == ([], [ENV], [b"plain"])
    assert decide(sched) == ([], 0)  # (its worker is on its way)
    sched.worker_started(b"env", in_env.env_key)
    [dispatch] = sched.schedule().dispatches
    assert (dispatch.task, dispatch.worker) == (in_env, b"env")
    sched.task_done(in_env, retry=False)

    again, plain = make_task(runtime_env=ENV), make_task()
    submit_all(sched, again, plain)
    plan = sched.schedule()  # the env's worker is reused for its env's work only
    assert [(d.task, d.worker) for d in plan.dispatches] == [(again, b"env")]
    assert (plan.start, plan.stop) == ([], [])  # busy: the plain task waits for the CPU
    sched.task_done(again, retry=False)
    plan = sched.schedule()
    assert (plan.dispatches, plan.start, plan.stop) == ([], [""], [b"env"])


def test_only_as_many_idle_workers_stop_as_work_of_another_env_needs() -> None:
    sched = Scheduler({"CPU": 2.0})
    with_workers(sched, b"plain1", b"plain2")
    submit_all(sched, make_task(runtime_env=ENV))
    plan = sched.schedule()
    assert (plan.dispatches, plan.start, plan.stop) == ([], [ENV], [b"plain1"])
    assert sched.idle == [b"plain2"]
