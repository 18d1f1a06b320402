"""Remote tracebacks and warnings name the user's file and line and show the source line.

cloudpickle 3.1 renames the code it pickles by value ``<dynamic-code>``; these tests hold for
every cloudpickle that pyproject.toml admits (.ci/run runs them against the lowest as well).
"""

from __future__ import annotations

import linecache
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import zray

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("cluster")]


def line_of(marker: str) -> int:
    """The line of this file ending in ``# marker`` (so edits above break no test)."""
    with open(__file__) as source:
        return next(n for n, line in enumerate(source, 1) if line.endswith(f"# {marker}\n"))


def divide(x):
    return 1 / x  # MARKER: helper's line


@zray.remote
def fails_in_a_helper(x):
    return [divide(y) for y in (x,)]  # MARKER: task's line


@zray.remote
class Calculator:
    def invert(self, x):
        return divide(x)  # MARKER: method's line


def assert_frame(text: str, marker: str, function: str, filename: str = __file__) -> None:
    assert f'File "{filename}", line {line_of(marker)}, in {function}' in text, text
    assert f"# {marker}" in text, text  # the source line is shown too


def test_a_task_traceback_names_the_file_and_lines_of_each_frame():
    with pytest.raises(ZeroDivisionError) as info:
        zray.get(fails_in_a_helper.remote(0))
    text = str(info.value)
    assert "<dynamic-code>" not in text
    assert_frame(text, "MARKER: task's line", "fails_in_a_helper")
    assert_frame(text, "MARKER: helper's line", "divide")


def test_an_actor_method_traceback_names_the_file_and_line():
    calculator = Calculator.remote()
    with pytest.raises(ZeroDivisionError) as info:
        zray.get(calculator.invert.remote(0))
    assert_frame(str(info.value), "MARKER: method's line", "invert")
    assert_frame(str(info.value), "MARKER: helper's line", "divide")
    zray.kill(calculator)


def test_code_whose_file_the_worker_cannot_read_still_shows_its_lines():
    """A notebook cell's code lives in linecache only, as IPython puts it there."""
    filename = "<zray-test-cell-1>"
    source = "def half(x):\n    return x / 0  # MARKER: cell's line\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "zray_test_cell"}
    exec(compile(source, filename, "exec"), namespace)
    with pytest.raises(ZeroDivisionError) as info:
        zray.get(zray.remote(namespace["half"]).remote(1))
    text = str(info.value)
    assert f'File "{filename}", line 2, in half' in text, text
    assert "return x / 0  # MARKER: cell's line" in text, text


def test_a_warning_in_a_task_names_the_file_and_line(tmp_path):
    script = tmp_path / "warns.py"
    script.write_text(textwrap.dedent("""
        import warnings
        import zray

        @zray.remote
        def warns():
            warnings.warn("mind the gap")  # the warning's line
            return 1

        zray.init(num_cpus=1)
        print(zray.get(warns.remote()))
        zray.shutdown()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{script}:7: UserWarning: mind the gap" in out.stderr, out.stderr
    assert 'warnings.warn("mind the gap")  # the warning\'s line' in out.stderr, out.stderr
