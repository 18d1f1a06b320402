"""Real libraries on zray: scikit-learn's ``GridSearchCV`` through joblib
(zray.util.joblib) and a ``dask.array`` reduction (zray.util.dask). Their work must run in
zray's worker processes and appear in ``zray inspect tasks``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import dask.array as da
import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

import zray
from zray.util.dask import ray_dask_get, zray_dask_get
from zray.util.joblib import register_ray, register_zray

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def session() -> Iterator[str]:
    context = zray.init(num_cpus=2)
    yield context["session_dir"]
    zray.shutdown()


def worker_pids_of(name: str, session: str) -> set[int]:
    """The WORKER_PID of each task named ``name`` in ``zray inspect tasks``."""
    out = subprocess.run([sys.executable, "-m", "zray_cli.main", "inspect", "tasks",
                          "--session", session], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    columns = header.split()
    return {int(row.split()[columns.index("WORKER_PID")]) for row in rows
            if row.split()[1:2] == [name]}


def test_scikit_learns_grid_search_runs_on_zray_through_joblib(session: str) -> None:
    register_zray()
    register_ray()
    features, labels = make_classification(n_samples=200, n_features=8, random_state=0)
    search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.01, 0.1, 1.0, 10.0]},
                          cv=3, n_jobs=-1)
    with joblib.parallel_backend("zray"):
        search.fit(features, labels)
    assert search.best_params_["C"] in (0.01, 0.1, 1.0, 10.0) and search.best_score_ > 0.5
    with joblib.parallel_backend("ray"):  # (Ray's name: the same backend)
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(8))
    pool_pids = worker_pids_of("run", session)  # (the Pool's actors' method)
    assert set(pids) <= pool_pids and os.getpid() not in pool_pids


def test_a_dask_array_reduction_runs_on_zray(session: str) -> None:
    array = da.arange(1_000_000, chunks=100_000).reshape(1000, 1000)
    assert int(array.sum().compute(scheduler=zray_dask_get)) == int(np.arange(1_000_000).sum())
    assert float(array.mean(axis=0).compute(scheduler=ray_dask_get)[0]) == 499500.0
    pids = worker_pids_of("dask_tasks", session)
    assert pids and os.getpid() not in pids
