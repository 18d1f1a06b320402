"""``zray.init(runtime_env=...)`` (zray/runtime_env.py): what every worker of a private
cluster runs with, through the public API."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import assert_no_leaks

import zray
from zray.exceptions import RuntimeEnvSetupError

pytestmark = pytest.mark.timeout(60)


@zray.remote
def seen() -> tuple[str | None, str, str, int, str | None]:
    import shipped_module

    with open("data.txt") as f:
        data = f.read()
    return (os.environ.get("GREETING"), data, os.getcwd(), shipped_module.VALUE,
            os.environ.get("HOOKED"))


@zray.remote
class Seer:
    def seen(self) -> tuple[str | None, str | None, str]:
        return os.environ.get("GREETING"), os.environ.get("HOOKED"), os.getcwd()


def test_env_vars_working_dir_py_modules_and_a_setup_hook_reach_every_worker(
        tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("first")
    module = tmp_path / "modules" / "shipped_module"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text(
        "import os\nVALUE = 42\n\ndef setup():\n    os.environ['HOOKED'] = 'by name'\n")
    zray.init(num_cpus=1, runtime_env={
        "env_vars": {"GREETING": "hello"}, "working_dir": str(work),
        "py_modules": [str(module)], "worker_process_setup_hook": "shipped_module.setup"})
    try:
        (work / "data.txt").write_text("edited after init")  # (the workers' copy stays)
        greeting, data, cwd, value, hooked = zray.get(seen.remote(), timeout=30)
        assert (greeting, data, value, hooked) == ("hello", "first", 42, "by name")
        assert cwd != str(work) and os.path.basename(os.path.dirname(cwd)) == "runtime_env"
        assert zray.get(Seer.remote().seen.remote(), timeout=30) == ("hello", "by name", cwd)
        assert os.environ.get("GREETING") is None  # (the driver's own is untouched)
    finally:
        zray.shutdown()


def test_a_callable_setup_hook_runs_in_each_worker() -> None:
    def hook() -> None:
        os.environ["HOOKED"] = f"pid {os.getpid()}"

    zray.init(num_cpus=1, runtime_env={"worker_process_setup_hook": hook})
    try:
        pid_and_hook = zray.get(zray.remote(
            lambda: (os.getpid(), os.environ.get("HOOKED"))).remote(), timeout=30)
        assert pid_and_hook[1] == f"pid {pid_and_hook[0]}"
    finally:
        zray.shutdown()


@pytest.mark.parametrize("runtime_env, error, match", [
    ({"pip": ["requests"]}, ValueError, r"\['pip'\] is not supported by zray"),
    ({"conda": "env"}, ValueError, r"\['conda'\] is not supported"),
    ({"container": {"image": "x"}}, ValueError, r"\['container'\] is not supported"),
    ({"env_var": {"A": "1"}}, ValueError, "unknown key 'env_var'"),
    ({"env_vars": {"A": 1}}, TypeError, "env_vars"),
    ({"working_dir": "/no/such/directory"}, ValueError, "not a local directory"),
    ({"worker_process_setup_hook": 3}, TypeError, "must be a callable"),
])
def test_what_zray_would_not_honour_is_refused_naming_it(
        runtime_env: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        zray.init(num_cpus=1, runtime_env=runtime_env)
    assert not zray.is_initialized()


@zray.remote
def env_and_pid(name: str) -> tuple[str | None, int]:
    return os.environ.get(name), os.getpid()


@zray.remote
def parent_and_child() -> tuple[tuple[str | None, str | None], tuple[str | None, ...]]:
    child = zray.remote(lambda: (os.environ.get("A"), os.environ.get("B"),
                                 os.environ.get("C")))
    return ((os.environ.get("A"), os.environ.get("B")),
            zray.get(child.options(runtime_env={"env_vars": {"B": "child",
                                                             "C": "child"}}).remote()))


@zray.remote
class Holder:
    def get(self, name: str) -> str | None:
        return os.environ.get(name)


def test_a_tasks_or_actors_env_runs_on_workers_of_its_own_and_children_inherit_it() -> None:
    """A worker is reused only for work of the same env; a child's env is its parent's
    with the keys it names replacing them (env_vars merged), as in Ray."""
    zray.init(num_cpus=1, runtime_env={"env_vars": {"A": "job"}})
    try:
        plain, plain_pid = zray.get(env_and_pid.remote("B"), timeout=30)
        in_env = env_and_pid.options(runtime_env={"env_vars": {"B": "task"}})
        (first, pid), (again, same_pid) = zray.get(
            [in_env.remote("B"), in_env.remote("B")], timeout=30)
        assert (plain, first, again) == (None, "task", "task")
        assert pid == same_pid != plain_pid  # (its own worker, reused for its env)
        assert zray.get(env_and_pid.remote("A"), timeout=30)[0] == "job"
        assert zray.get_runtime_context().runtime_env == {"env_vars": {"A": "job"}}
        assert zray.get(parent_and_child.options(
            runtime_env={"env_vars": {"B": "parent"}}).remote(), timeout=30) == (
            ("job", "parent"), ("job", "child", "child"))
        holder = Holder.options(runtime_env={"env_vars": {"B": "actor"}}).remote()
        assert zray.get([holder.get.remote("A"), holder.get.remote("B")],
                        timeout=30) == ["job", "actor"]
        with pytest.raises(ValueError, match="unknown key 'env'"):
            env_and_pid.options(runtime_env={"env": {}})
    finally:
        zray.shutdown()


def test_an_env_that_cannot_be_set_up_fails_its_work_saying_why() -> None:
    def broken() -> None:
        raise RuntimeError("no such licence")

    zray.init(num_cpus=1)
    try:
        failing = env_and_pid.options(runtime_env={"worker_process_setup_hook": broken})
        with pytest.raises(RuntimeEnvSetupError, match="no such licence"):
            zray.get(failing.remote("A"), timeout=30)
        assert zray.get(env_and_pid.remote("A"), timeout=30)[0] is None  # (others run on)
    finally:
        zray.shutdown()


@zray.remote
def env_on_node() -> tuple[str | None, str]:
    time.sleep(0.3)  # (holds its node's one CPU: the next ones go elsewhere)
    return os.environ.get("SPILLED"), zray.get_runtime_context().get_node_id()


@zray.remote
def read_shipped() -> tuple[str, str, str]:
    import shipped_module

    with open("data.txt") as f:
        return f.read(), shipped_module.NAME, zray.get_runtime_context().get_node_id()


def test_directories_are_shipped_over_the_mesh_to_the_node_that_runs_the_work(
        tmp_path: Path) -> None:
    """Each node keeps its own copy, in its session directory, fetched from the driver's
    node as any object is; deleting the originals after submission changes nothing."""
    from zray.cluster_utils import Cluster
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("shipped")
    (work / "skipped.log").write_text("not shipped")
    module = tmp_path / "shipped_module"
    module.mkdir()
    (module / "__init__.py").write_text("NAME = 'from py_modules'\n")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        zray.init(address=cluster.address, runtime_env={
            "working_dir": str(work), "py_modules": [str(module)], "excludes": ["*.log"]})
        refs = [read_shipped.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node.node_id, soft=False)).remote() for node in nodes]
        shutil.rmtree(work)
        shutil.rmtree(module)
        assert zray.get(refs, timeout=60) == [
            ("shipped", "from py_modules", node.node_id) for node in nodes]
        for node in nodes:
            cache = Path(node.record.session) / "runtime_env"
            assert (cache / next(p.name for p in cache.iterdir() if "-" not in p.name)
                    / "data.txt").read_text() == "shipped"
            assert not list(cache.glob("*/skipped.log"))
        # Leases the head cannot grant now go to its peers: with their env (a regression)
        busy = env_on_node.options(runtime_env={"env_vars": {"SPILLED": "yes"}})
        seen = zray.get([busy.remote() for _ in range(6)], timeout=60)
        assert {value for value, _ in seen} == {"yes"} and len({n for _, n in seen}) > 1
    finally:
        zray.shutdown()
        cluster.shutdown()
    assert_no_leaks()
