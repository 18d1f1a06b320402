"""``register_zray()``: joblib's work (scikit-learn's ``n_jobs``) runs on zray, as Ray's
``ray.util.joblib``::

    from zray.util.joblib import register_zray
    register_zray()
    with joblib.parallel_backend("zray"):      # (or "ray", for ported code)
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

The backend is joblib's multiprocessing one with its pool replaced by
``zray.util.multiprocessing.Pool``: ``n_jobs`` actors, each taking joblib's batches in
turn; ``n_jobs=-1`` is every CPU of the cluster. Needs joblib >= 1.3.
"""

from __future__ import annotations

from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import MultiprocessingBackend

import zray
from zray.util.multiprocessing import Pool

__all__ = ["register_zray", "register_ray"]


class ZrayBackend(MultiprocessingBackend):
    supports_timeout = True

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not zray.is_initialized():
                zray.init()
            cpus = int(zray.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **pool_args: Any) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        self._pool = Pool(processes=n_jobs)
        self.parallel = parallel
        return n_jobs


def register_zray() -> None:
    """Make joblib's "zray" backend (and "ray", Ray's name for it) run on zray."""
    register_parallel_backend("zray", ZrayBackend)
    register_parallel_backend("ray", ZrayBackend)


register_ray = register_zray  # (Ray's name)
