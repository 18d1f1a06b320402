"""Pure tests of the one options table: unknown names, bad values, defaults."""

from __future__ import annotations

from typing import Any

import pytest

from zray.options import OPTIONS, resolved, validate

pytestmark = pytest.mark.timeout(30)

TASK_OPTIONS = [k for k, o in OPTIONS.items() if o.for_tasks]
ACTOR_OPTIONS = [k for k, o in OPTIONS.items() if o.for_actors]


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown option 'num_cpu'") as info:
        validate({"num_cpu": 1}, for_actor=False, where="f.options()")
    message = str(info.value)
    assert message.startswith("f.options()")
    for name in TASK_OPTIONS:
        assert name in message


@pytest.mark.parametrize("name", [k for k in OPTIONS if k not in ACTOR_OPTIONS])
def test_task_only_option_is_unknown_for_actors(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown option '{name}'") as info:
        validate({name: OPTIONS[name].default}, for_actor=True, where="A")
    valid = str(info.value).split("valid options are: ")[1]
    assert set(valid.split(", ")) == set(ACTOR_OPTIONS)


BAD: list[tuple[str, Any]] = [
    ("num_returns", 0), ("num_returns", -1), ("num_returns", 1.0), ("num_returns", True),
    ("num_returns", "2"),
    ("num_cpus", -1), ("num_cpus", "1"), ("num_cpus", True), ("num_cpus", None),
    ("num_gpus", -0.5), ("num_gpus", 1.5), ("num_gpus", "1"), ("num_gpus", False),
    ("resources", {"CPU": 1}), ("resources", {"GPU": 1}), ("resources", {1: 1}),
    ("resources", {"db": -1}), ("resources", {"db": "1"}), ("resources", [("db", 1)]),
    ("max_retries", -2), ("max_retries", 1.0), ("max_retries", True), ("max_retries", "3"),
    ("retry_exceptions", "yes"), ("retry_exceptions", [ValueError, 3]),
    ("retry_exceptions", [int]), ("retry_exceptions", ValueError),
    ("name", 3), ("name", b"n"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_value_names_the_option(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"option {name}=") as info:
        validate({name: value}, for_actor=False, where="f")
    assert OPTIONS[name].accepts in str(info.value)


GOOD: list[tuple[str, Any]] = [
    ("num_returns", 1), ("num_returns", 3),
    ("num_cpus", 0), ("num_cpus", 0.5), ("num_cpus", 16),
    ("num_gpus", 0), ("num_gpus", 0.25), ("num_gpus", 1), ("num_gpus", 2.0), ("num_gpus", 4),
    ("resources", {}), ("resources", {"db": 1}), ("resources", {"db": 0.5, "tpu": 0}),
    ("max_retries", -1), ("max_retries", 0), ("max_retries", 5),
    ("retry_exceptions", True), ("retry_exceptions", False),
    ("retry_exceptions", [ValueError]), ("retry_exceptions", (KeyError, OSError)),
    ("name", "job"), ("name", None),
]


@pytest.mark.parametrize(("name", "value"), GOOD, ids=[f"{n}={v!r}" for n, v in GOOD])
def test_good_value_passes(name: str, value: Any) -> None:
    options = {name: value}
    assert validate(options, for_actor=False, where="f") == options


def test_good_actor_options_pass() -> None:
    options = {"num_cpus": 2, "num_gpus": 0.5, "resources": {"db": 1}, "name": "a"}
    assert validate(options, for_actor=True, where="A") == options


def test_first_bad_option_stops_validation() -> None:
    with pytest.raises(ValueError, match="num_cpus"):
        validate({"num_returns": 1, "num_cpus": -1, "bogus": 1}, for_actor=False, where="f")


def test_resolved_gives_defaults_for_missing_or_none() -> None:
    assert resolved({}, "num_cpus") == 1
    assert resolved({"num_cpus": None}, "num_cpus") == 1
    assert resolved({"num_cpus": 0}, "num_cpus") == 0
    assert resolved({}, "num_gpus") == 0
    assert resolved({}, "retry_exceptions") is False
    assert resolved({}, "max_retries") is None  # the config's default applies later
    assert resolved({"max_retries": -1}, "max_retries") == -1
    for name, option in OPTIONS.items():
        assert resolved({}, name) == option.default


def test_resolved_of_an_unknown_option_raises() -> None:
    with pytest.raises(KeyError):
        resolved({}, "bogus")
