"""What ``zray.init()`` returns: Ray's context object (``RayContext``), with ``address_info``.

Usable as ``with zray.init(): ...`` (the cluster is shut down on leaving the block), and
as a dict of ``address_info`` for code written against Ray's older, dict-returning init.
"""

from __future__ import annotations

import sys
from typing import Any


class ZrayContext:
    def __init__(self, address_info: dict[str, Any]) -> None:
        self.address_info = address_info
        self.dashboard_url = None  # (zray has no dashboard: `zray inspect`, `zray status`)
        self.python_version = ".".join(map(str, sys.version_info[:3]))
        from zray.version import version

        self.zray_version = self.ray_version = version()  # (Ray's name for it)

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.address_info.get(key, default)

    def __enter__(self) -> ZrayContext:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Shut down this driver's connection (and its private cluster, if it has one)."""
        from zray.api import shutdown

        shutdown()

    def __repr__(self) -> str:
        return f"ZrayContext({self.address_info.get('address')!r})"


# Ray's names
RayContext = BaseContext = ZrayContext
