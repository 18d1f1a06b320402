"""``zray.init(runtime_env=...)`` (zray/runtime_env.py): what every worker of a private
cluster runs with, through the public API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import zray

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


def test_a_jobs_env_on_a_shared_cluster_is_refused_until_built() -> None:
    with pytest.raises(NotImplementedError, match="runtime_env"):
        zray.init(address="127.0.0.1:9", runtime_env={"env_vars": {"A": "1"}})
    assert not zray.is_initialized()
