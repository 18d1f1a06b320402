"""``runtime_env``: what the workers that run a job's, a task's or an actor's work start with.

Ray's keys, checked where they are given (``init``, ``@remote``, ``.options()``):

- ``env_vars``: {name: value}, in the worker's environment from its start;
- ``working_dir``: a local directory; the worker's current directory is a copy of it, first
  on its ``sys.path``. Editing or deleting the original once work was submitted with it
  changes nothing the workers see;
- ``py_modules``: local package directories, importable by their names;
- ``excludes``: patterns (``fnmatch``, on a file's path inside its directory or on any
  part of it) of files not to ship, e.g. ``["*.log", ".git"]``;
- ``worker_process_setup_hook``: a callable (or "module.function") the worker runs once as
  it starts, before any work;
- ``pip``, ``conda``, ``uv``, ``container``, ``image_uri``: refused (zray installs nothing:
  install packages in the environment the nodes run in); any other key: refused, naming it.

How an env travels. The submitter resolves it the first time it is used: each directory
is zipped, named by the hash of its files and put in the object store, so it reaches any
node over the mesh as every object does; a callable hook is pickled and put the same way.
The resolved env is a JSON string (``Resolved.wire``) in SubmitTask and RequestLease::

    {"env_vars": {...}, "working_dir": {"hash": h, "object": hex, "node": hex},
     "py_modules": [{"hash": h, "name": "pkg", "object": hex, "node": hex}, ...],
     "hook": "module.function" | {"hash": h, "object": hex, "node": hex}}

(``node``: where the package was put, to fetch it from.) An agent keeps workers apart by
the env's key (its hash without the objects' ids and nodes, so jobs
with the same files share workers): a worker is reused only for work with the same env
(zray/node/scheduler.py). A worker starts with the env_vars in its environment and the
string in ZRAY_RUNTIME_ENV, and fetches and unpacks what its node lacks before it takes
any work (zray/node/worker_env.py).

Inheritance, as in Ray: a task's env is its parent's (the driver's is the one given to
``init``) with the keys it names replacing the parent's; ``env_vars`` are merged.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable
from typing import Any

MAX_DIRECTORY_BYTES = 100 * 2**20  # as Ray's limit on a working_dir
ENV_VARIABLE = "ZRAY_RUNTIME_ENV"  # a worker's resolved env (the wire string)
_REFUSED = ("pip", "conda", "uv", "container", "image_uri")
_KEYS = ("env_vars", "working_dir", "py_modules", "excludes", "worker_process_setup_hook")
_RESOLVED_FROM = {"env_vars": "env_vars", "working_dir": "working_dir",
                  "py_modules": "py_modules", "worker_process_setup_hook": "hook"}


def check(runtime_env: Any) -> dict[str, Any]:
    """``runtime_env`` if zray can honour it; else a clear error naming what is wrong.
    Paths are checked to be directories here, at the call site; they are read at first
    use."""
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
    for name, value in (runtime_env.get("env_vars") or {}).items():
        if not isinstance(name, str) or not isinstance(value, str) or not name or "=" in name:
            raise TypeError(f"runtime_env['env_vars'] maps names to str values; got "
                            f"{name!r}: {value!r}")
    directories = [runtime_env["working_dir"]] if runtime_env.get("working_dir") else []
    modules = runtime_env.get("py_modules") or []
    if not isinstance(modules, list):
        raise TypeError(f"runtime_env['py_modules'] must be a list of directories, got "
                        f"{modules!r}")
    for directory, key in [(d, "working_dir") for d in directories] + \
                          [(m, "py_modules") for m in modules]:
        if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
            raise ValueError(f"runtime_env[{key!r}]: {directory!r} is not a local directory "
                             "(URIs of remote packages are not supported)")
    excludes = runtime_env.get("excludes") or []
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise TypeError(f"runtime_env['excludes'] must be a list of str patterns, got "
                        f"{excludes!r}")
    hook = runtime_env.get("worker_process_setup_hook")
    if isinstance(hook, str):
        if not all(hook.rpartition(".")[::2]):
            raise ValueError(f"runtime_env['worker_process_setup_hook'] {hook!r} must be "
                             "a callable or \"module.function\"")
    elif hook is not None and not callable(hook):
        raise TypeError(f"runtime_env['worker_process_setup_hook'] must be a callable, got "
                        f"{hook!r}")
    return runtime_env


class Resolver:
    """One process's resolved envs: its own (what its children inherit), and those it gave
    tasks, each resolved once, with the packages it put held for as long as it lives."""

    def __init__(self, put: Callable[[bytes], Any], node: Callable[[], bytes],
                 inherited: str) -> None:
        self._put = put  # bytes -> an ObjectRef, held here
        self._node = node  # this process's node, where it puts
        self.inherited = inherited
        self._packages: dict[str, Any] = {}  # content hash -> the ObjectRef of its zip
        self._resolved: dict[str, str] = {}  # the given env, as JSON -> the wire string
        self._lock = threading.Lock()

    def set_own(self, runtime_env: dict[str, Any]) -> None:
        """A driver's env, from ``init``: what its tasks and actors inherit."""
        self.inherited = self.wire(runtime_env)

    def fields(self) -> dict[str, Any]:
        """This process's own env, resolved (for ``get_runtime_context().runtime_env``)."""
        return json.loads(self.inherited) if self.inherited else {}

    def wire(self, runtime_env: dict[str, Any] | None) -> str:
        """The resolved env for work given ``runtime_env`` (None: the inherited one)."""
        if not runtime_env:
            return self.inherited
        given = json.dumps(runtime_env, sort_keys=True, default=repr)
        with self._lock:  # (two threads submitting: one packs, the other reuses it)
            wire = self._resolved.get(given)
            if wire is None:
                wire = self._resolved[given] = self._resolve(runtime_env)
            return wire

    def _resolve(self, runtime_env: dict[str, Any]) -> str:
        excludes = runtime_env.get("excludes") or []
        fields = self.fields()
        for key, value in runtime_env.items():
            name = _RESOLVED_FROM.get(key)
            if value is None:
                continue
            if name == "env_vars":
                fields["env_vars"] = {**fields.get("env_vars", {}), **value}
            elif name == "working_dir":
                fields["working_dir"] = self._package(value, excludes)
            elif name == "py_modules":
                fields["py_modules"] = [
                    dict(self._package(m, excludes),
                         name=os.path.basename(os.path.abspath(m).rstrip(os.sep)))
                    for m in value]
            elif name == "hook" and isinstance(value, str):
                fields["hook"] = value
            elif name == "hook":
                import cloudpickle  # (not in the agent, which only reads envs)

                fields["hook"] = self._blob(cloudpickle.dumps(value))
        fields = {k: v for k, v in fields.items() if v}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")) if fields else ""

    def _package(self, directory: str, excludes: list[str]) -> dict[str, str]:
        return self._blob(zip_directory(os.fspath(directory), excludes))

    def _blob(self, data: bytes) -> dict[str, str]:
        digest = hashlib.sha256(data).hexdigest()[:32]
        ref = self._packages.get(digest)
        if ref is None:
            ref = self._packages[digest] = self._put(data)
        return {"hash": digest, "object": ref.hex(), "node": self._node().hex()}


def zip_directory(directory: str, excludes: list[str]) -> bytes:
    """The directory's files (not ``__pycache__``, nor what ``excludes`` names) as a zip
    whose bytes depend on their paths and contents only (so its hash names the content)."""
    directory = os.path.abspath(directory)
    buffer, size = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for root, dirs, names in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__"
                             and not _excluded(os.path.relpath(os.path.join(root, d),
                                                               directory), excludes))
            for name in sorted(names):
                path = os.path.join(root, name)
                relative = os.path.relpath(path, directory)
                if not os.path.isfile(path) or _excluded(relative, excludes):
                    continue
                size += os.path.getsize(path)
                if size > MAX_DIRECTORY_BYTES:
                    raise ValueError(
                        f"runtime_env: {directory} holds more than "
                        f"{MAX_DIRECTORY_BYTES // 2**20} MiB; ship large data another way "
                        "(zray.put, or a shared file system), or list it in 'excludes'")
                info = zipfile.ZipInfo(relative, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (os.stat(path).st_mode & 0o777) << 16
                with open(path, "rb") as f:
                    archive.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _excluded(relative: str, excludes: list[str]) -> bool:
    parts = relative.split(os.sep)
    return any(fnmatch.fnmatch(relative, pattern) or
               any(fnmatch.fnmatch(part, pattern) for part in parts)
               for pattern in excludes)


@functools.lru_cache(maxsize=256)
def key_of(wire: str) -> str:
    """The key an agent keeps workers apart by: the env without its packages' object ids
    ("" for none)."""
    if not wire:
        return ""
    fields = json.loads(wire)
    for name in ("working_dir", "hook"):  # (by content: not where it is)
        if isinstance(fields.get(name), dict):
            fields[name] = fields[name]["hash"]
    fields["py_modules"] = [(m["hash"], m["name"]) for m in fields.get("py_modules", [])]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def env_vars_of(wire: str) -> dict[str, str]:
    return json.loads(wire).get("env_vars", {}) if wire else {}
