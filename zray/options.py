"""The one table of ``@zray.remote`` / ``.options()`` options, and their validation.

Every option is checked here, once, when the decorator or ``.options()`` is called, so a
typo or a bad value fails at the call site with a message naming the option and what it
accepts, never later inside a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _non_negative(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _count_or_unlimited(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= -1


def _gpus(v: Any) -> bool:
    return _non_negative(v) and (v <= 1 or float(v).is_integer())


def _resources(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and k not in ("CPU", "GPU", "memory") and _non_negative(n)
        for k, n in v.items())


def _retry_exceptions(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    return isinstance(v, (list, tuple)) and all(
        isinstance(c, type) and issubclass(c, BaseException) for c in v)


def _strategy(v: Any) -> bool:
    from zray.util.scheduling_strategies import valid

    return valid(v)


def _runtime_env(v: Any) -> bool:
    from zray.runtime_env import check

    check(v)  # (raises, naming what zray would not honour)
    return True


@dataclass(frozen=True)
class Option:
    check: Callable[[Any], bool]
    accepts: str
    default: Any
    for_tasks: bool = True
    for_actors: bool = False


OPTIONS: dict[str, Option] = {
    "num_returns": Option(lambda v: v in ("streaming", "dynamic") or (
        isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        'an int >= 1, "streaming" or "dynamic" (for a generator)', 1, for_actors=False),
    "num_cpus": Option(_non_negative, "a number >= 0", 1, for_actors=True),
    "num_gpus": Option(_gpus, "a number >= 0 (a fraction only below 1)", 0, for_actors=True),
    "memory": Option(_non_negative, "a number of bytes >= 0 (of the node's \"memory\" "
                     "resource, held while it runs)", None, for_actors=True),
    "resources": Option(_resources, "a dict of custom resource name -> number >= 0 "
                        "(use num_cpus/num_gpus/memory for CPU, GPU and memory)", None,
                        for_actors=True),
    "max_retries": Option(_count_or_unlimited, "an int >= 0, or -1 for unlimited", None),
    "retry_exceptions": Option(_retry_exceptions, "a bool or a list of exception classes",
                               False),
    "name": Option(lambda v: v is None or isinstance(v, str), "a str", None, for_actors=True),
    "namespace": Option(lambda v: v is None or isinstance(v, str), "a str", None,
                        for_tasks=False, for_actors=True),
    "lifetime": Option(lambda v: v in (None, "detached", "non_detached"),
                       '"detached" or None', None, for_tasks=False, for_actors=True),
    "max_restarts": Option(_count_or_unlimited, "an int >= 0, or -1 for unlimited", 0,
                           for_tasks=False, for_actors=True),
    "max_task_retries": Option(_count_or_unlimited, "an int >= 0, or -1 for unlimited", 0,
                               for_tasks=False, for_actors=True),
    "scheduling_strategy": Option(_strategy, '"DEFAULT", "SPREAD", a '
                                  "NodeAffinitySchedulingStrategy or a "
                                  "PlacementGroupSchedulingStrategy", None, for_actors=True),
    # (Ray's: whether the task's events are recorded; zray always records them)
    "enable_task_events": Option(lambda v: isinstance(v, bool), "a bool", None,
                                 for_actors=True),
    "runtime_env": Option(_runtime_env, "a dict of runtime_env keys (zray.runtime_env)", None,
                          for_actors=True),
    "concurrency_groups": Option(
        lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 1
            for k, n in v.items()), "a dict of group name -> threads (or coroutines) >= 1",
        None, for_tasks=False, for_actors=True),
    "max_concurrency": Option(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                              "an int >= 1", None, for_tasks=False, for_actors=True),
}


def validate(options: dict[str, Any], for_actor: bool, where: str) -> dict[str, Any]:
    """The options, checked; raises ValueError naming the first bad one."""
    for key, value in options.items():
        option = OPTIONS.get(key)
        applies = option is not None and (option.for_actors if for_actor else option.for_tasks)
        if option is None or not applies:
            valid = ", ".join(k for k, o in OPTIONS.items()
                              if (o.for_actors if for_actor else o.for_tasks))
            raise ValueError(f"{where}: unknown option {key!r}; valid options are: {valid}")
        if not option.check(value):
            raise ValueError(
                f"{where}: option {key}={value!r} is invalid; it takes {option.accepts}")
    return options


def resolved(options: dict[str, Any], name: str) -> Any:
    """An option's value, or its default."""
    value = options.get(name)
    return OPTIONS[name].default if value is None else value
