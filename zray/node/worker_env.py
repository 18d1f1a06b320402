"""A worker's runtime_env, set up as it starts and before it runs any work (how an env
travels: zray/runtime_env.py).

Each package (a zipped directory, a pickled hook) its node lacks is fetched as any object is
(over the mesh, from the node that holds it) and unpacked into the node's cache,
``<session>/runtime_env/<hash>``: into a staging directory renamed into place, so workers
starting at once share one whole copy. A failure is kept, not raised: the worker then
fails each piece of work it is given with RuntimeEnvSetupError saying why.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import traceback
import zipfile
from collections.abc import Callable

from zray.runtime_env import ENV_VARIABLE

CACHE_VARIABLE = "ZRAY_RUNTIME_ENV_CACHE"  # the node's cache of unpacked packages


def spawn_env(base: dict[str, str], wire: str) -> dict[str, str]:
    """The environment a worker for the resolved env ``wire`` starts with."""
    env = {k: v for k, v in base.items() if k != ENV_VARIABLE}
    if wire:
        env.update(json.loads(wire).get("env_vars", {}))
        env[ENV_VARIABLE] = wire
    return env


Fetch = Callable[[bytes, bytes], bytes]  # (object id, node) -> the package's bytes


def set_up(fetch: Fetch) -> str:
    """Make this worker's env (``fetch``: a package's bytes); "" once done, else what went
    wrong."""
    wire = os.environ.get(ENV_VARIABLE, "")
    if not wire:
        return ""
    fields = json.loads(wire)
    step = "fetching its packages"
    try:
        cache = os.environ[CACHE_VARIABLE]
        paths = []
        if "working_dir" in fields:
            step = "setting up its working_dir"
            working_dir = _unpacked(fields["working_dir"], "", cache, fetch)
            os.chdir(working_dir)
            paths.append(working_dir)
        for module in fields.get("py_modules", []):
            step = f"setting up py_modules' {module['name']}"
            paths.append(os.path.dirname(_unpacked(module, module["name"], cache, fetch)))
        sys.path[:0] = paths
        inherited = os.environ.get("PYTHONPATH", "")  # (for processes the work starts)
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([inherited] if inherited else []))
        hook = fields.get("hook")
        if hook:
            step = "running its worker_process_setup_hook"
            _hook(hook, fetch)()
    except Exception:
        return f"the worker failed {step}:\n{traceback.format_exc()}"
    return ""


def _unpacked(package: dict[str, str], name: str, cache: str,
              fetch: Fetch) -> str:
    """Where ``package`` is unpacked in this node's cache (under a directory ``name``, for
    a module), made if missing."""
    home = os.path.join(cache, package["hash"] + (f"-{name}" if name else ""))
    target = os.path.join(home, name) if name else home
    if os.path.isdir(target):
        return target
    data = fetch(bytes.fromhex(package["object"]), bytes.fromhex(package["node"]))
    os.makedirs(cache, mode=0o700, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache, prefix=".staging-")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(os.path.join(staging, name) if name else staging)
            for info in archive.infolist():  # (extractall drops the modes)
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(os.path.join(staging, name, info.filename), mode)
        os.rename(staging, home)
    except OSError:
        if not os.path.isdir(target):  # (else another worker won the race)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _hook(hook: str | dict[str, str], fetch: Fetch) -> Callable[[], object]:
    if isinstance(hook, dict):
        import cloudpickle

        return cloudpickle.loads(fetch(bytes.fromhex(hook["object"]),
                                       bytes.fromhex(hook["node"])))
    module, _, function = hook.rpartition(".")
    __import__(module)
    return getattr(sys.modules[module], function)
