"""``zray.init(runtime_env=...)``: what every worker of a private cluster runs with.

Ray's keys, checked at ``init``:

- ``env_vars``: {name: value}, in every worker's environment;
- ``working_dir``: a local directory, copied once into ``ZRAY_HOME/runtime_env/<hash>``
  (named by a hash of its files, so an unchanged directory is not copied again); each
  worker's current directory, and first on its ``sys.path``. Editing or deleting the
  original after ``init`` changes nothing the workers see;
- ``py_modules``: local package directories, copied the same way; importable by their
  names in every worker;
- ``worker_process_setup_hook``: a callable (or "module.function") each worker runs once
  as it starts, before any task;
- ``pip``, ``conda``, ``uv``, ``container``, ``image_uri``: refused (zray installs
  nothing: install packages in the environment the nodes run in);
- any other key: refused, naming it.

A private cluster runs one job, so its workers all share the job's env. Per-task and
per-actor envs, and a job's env on a cluster of ``zray node start`` nodes (whose workers
serve every job), are not built yet: they raise.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import traceback
from typing import Any

import cloudpickle

MAX_DIRECTORY_BYTES = 100 * 2**20  # as Ray's limit on a working_dir
_REFUSED = ("pip", "conda", "uv", "container", "image_uri")
_KEYS = ("env_vars", "working_dir", "py_modules", "worker_process_setup_hook")
_HOOK_ENV = "ZRAY_WORKER_SETUP_HOOK"  # a worker runs what this names as it starts


def prepare(runtime_env: dict[str, Any], zray_home: str) -> dict[str, Any]:
    """Check ``runtime_env`` and make what workers need of it: {"env": {name: value} to add
    to their environment, "cwd": their directory or ""}."""
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
    for key in runtime_env:
        if key in _REFUSED:
            raise ValueError(
                f"runtime_env[{key!r}] is not supported by zray: it installs no packages. "
                "Install them in the Python environment the nodes run in, and drop the key")
        if key not in _KEYS:
            raise ValueError(f"runtime_env: unknown key {key!r}; zray takes "
                             f"{', '.join(_KEYS)}")
    env: dict[str, str] = {}
    for name, value in (runtime_env.get("env_vars") or {}).items():
        if not isinstance(name, str) or not isinstance(value, str) or not name or "=" in name:
            raise TypeError(f"runtime_env['env_vars'] maps names to str values; got "
                            f"{name!r}: {value!r}")
        env[name] = value
    paths: list[str] = []
    cwd = ""
    if runtime_env.get("working_dir") is not None:
        cwd = _content_copy(runtime_env["working_dir"], "working_dir", zray_home)
        paths.append(cwd)
    modules = runtime_env.get("py_modules") or []
    if not isinstance(modules, list):
        raise TypeError(f"runtime_env['py_modules'] must be a list of directories, got "
                        f"{modules!r}")
    for module in modules:
        copy = _content_copy(module, "py_modules", zray_home)
        # (the copy is <hash>/<package name>: its parent goes on the path)
        paths.append(os.path.dirname(copy))
    if paths:
        inherited = os.environ.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(paths + ([inherited] if inherited else []))
    hook = runtime_env.get("worker_process_setup_hook")
    if hook is not None:
        env[_HOOK_ENV] = _hook_reference(hook, zray_home)
    return {"env": env, "cwd": cwd}


def _content_copy(source: Any, key: str, zray_home: str) -> str:
    """A copy of the directory ``source`` named by the hash of its files (made once)."""
    if not isinstance(source, str) or not os.path.isdir(source):
        raise ValueError(f"runtime_env[{key!r}]: {source!r} is not a local directory (URIs "
                         "of remote packages are not supported)")
    source = os.path.abspath(source)
    files = []
    digest, size = hashlib.sha256(), 0
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                continue
            relative = os.path.relpath(path, source)
            size += os.path.getsize(path)
            if size > MAX_DIRECTORY_BYTES:
                raise ValueError(f"runtime_env[{key!r}]: {source} holds more than "
                                 f"{MAX_DIRECTORY_BYTES // 2**20} MiB; ship large data "
                                 "another way (zray.put, or a shared file system)")
            digest.update(relative.encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
            files.append(relative)
    name = os.path.basename(source.rstrip(os.sep))
    home = os.path.join(zray_home, "runtime_env", f"{digest.hexdigest()[:32]}")
    copy = os.path.join(home, name) if key == "py_modules" else home
    if os.path.isdir(copy):
        return copy  # (the same files: made before)
    os.makedirs(os.path.dirname(home), mode=0o700, exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(home), prefix=".staging-")
    try:
        target = os.path.join(staging, name) if key == "py_modules" else staging
        for relative in files:
            os.makedirs(os.path.join(target, os.path.dirname(relative)), exist_ok=True)
            shutil.copy2(os.path.join(source, relative), os.path.join(target, relative))
        os.rename(staging, home)  # (whole or not at all; another init may have won)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isdir(copy):
            raise
    return copy


def _hook_reference(hook: Any, zray_home: str) -> str:
    """What a worker finds the hook by: "module.function", or a file of it pickled (named
    by its hash, beside the copied directories)."""
    if isinstance(hook, str):
        module, _, function = hook.rpartition(".")
        if not module or not function:
            raise ValueError(f"runtime_env['worker_process_setup_hook'] {hook!r} must be "
                             "a callable or \"module.function\"")
        return hook
    if not callable(hook):
        raise TypeError(f"runtime_env['worker_process_setup_hook'] must be a callable, got "
                        f"{hook!r}")
    blob = cloudpickle.dumps(hook)
    directory = os.path.join(zray_home, "runtime_env")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"hook-{hashlib.sha256(blob).hexdigest()[:32]}.pkl")
    if not os.path.exists(path):
        with open(path + ".new", "wb") as f:
            f.write(blob)
        os.replace(path + ".new", path)
    return path


def run_setup_hook() -> None:
    """In a worker as it starts: run the job's setup hook, if any. One that fails is
    reported on the worker's stderr (the driver shows it) and the worker serves on."""
    reference = os.environ.get(_HOOK_ENV)
    if not reference:
        return
    try:
        if os.path.isfile(reference):
            with open(reference, "rb") as f:
                hook = cloudpickle.load(f)
        else:
            module, _, function = reference.rpartition(".")
            hook = getattr(importlib.import_module(module), function)
        hook()
    except Exception:
        print(f"zray: the worker_process_setup_hook {reference} failed in this worker:\n"
              f"{traceback.format_exc()}", file=sys.stderr, flush=True)


def check_joinable(runtime_env: Any) -> None:
    if runtime_env:
        raise NotImplementedError(
            "zray.init(address=..., runtime_env=...): a job's runtime_env on a cluster of "
            "`zray node start` nodes is not built yet (their workers serve every job); set "
            "the environment on the nodes themselves, or run a private cluster")
