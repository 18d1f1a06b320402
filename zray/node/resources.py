"""What a node offers: its resources and its store's size, as given or as found."""

from __future__ import annotations

import os
import shutil
import subprocess

from zray.config import Config
from zray.options import validate


def node_resources(num_cpus: int | None, num_gpus: int | None,
                   custom: dict[str, float] | None, where: str,
                   store_size: int) -> dict[str, float]:
    """A node's resources: CPUs and GPUs (counted when not given), "memory" (bytes for
    tasks' heaps, as Ray's: the machine's memory less the object store's) and custom
    ones."""
    cpus = (os.cpu_count() or 1) if num_cpus is None else num_cpus
    gpus = _detect_gpus() if num_gpus is None else num_gpus
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") - store_size
    total = {"CPU": float(cpus), "GPU": float(gpus), "memory": float(max(0, memory))}
    if custom:
        validate({"resources": custom}, for_actor=False, where=where)
        total.update({k: float(v) for k, v in custom.items()})
    return {k: v for k, v in total.items() if v > 0}


def _detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def default_store_size(config: Config) -> int:
    """The store of a node that was not given its size: a fraction of the memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(memory * config.object_store_fraction)

