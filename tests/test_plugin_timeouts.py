"""Timeouts: pytest-timeout's 0, huge values and the engine's rules all mean what they say."""

from __future__ import annotations

import asyncio

import pytest
from conftest import TIMEOUT_HOOK, ExecPytester, Mode


@pytest.mark.parametrize(
    ("args", "marks"),
    [
        pytest.param(["--timeout", "0"], [], id="option"),
        pytest.param(["--timeout", "5"], ["timeout(0)"], id="mark"),
    ],
)
@pytest.mark.modes("inline", "async")
def test_pytest_timeout_zero_means_no_timeout(
    px: ExecPytester, args: list[str], marks: list[str], mode: Mode
) -> None:
    px.conftest(TIMEOUT_HOOK)
    px.ini(timeout="3")
    lines = "".join(f"# pytest.mark.{mark}\n" for mark in marks)
    px.script("slow_script.py", lines + "import time\ntime.sleep(0.2)\n")
    px.run(*args, *mode).assert_outcomes(passed=1)
    # Not the 60 s default, not the ini's 3 s: none at all.
    assert px.lines("timeouts.txt") == ["slow_script None"]


def test_library_huge_timeout_means_no_timeout(px: ExecPytester) -> None:
    from pytest_codomyrmex_exec import ScriptSpec, run_script, run_script_async

    script = px.script("quick_script.py", "print('done')\n")
    for timeout in (1e9, 30 * 24 * 3600.0, float("inf")):
        for result in (
            run_script(script, timeout=timeout),
            asyncio.run(run_script_async(script, timeout=timeout)),
        ):
            assert result["status"] == "passed", result
            assert result["stdout"].strip() == "done"
        assert ScriptSpec.build(script, timeout=timeout).timeout is None
    # Just under the longest single wait the OS takes (about 24.8 days): kept as a timeout,
    # and a quick script still passes (no wait handed to the OS overflows).
    assert ScriptSpec.build(script, timeout=20 * 24 * 3600.0).timeout == 20 * 24 * 3600.0
    assert run_script(script, timeout=20 * 24 * 3600.0)["status"] == "passed"


def test_huge_timeouts_behave_as_no_timeout(px: ExecPytester, mode: Mode) -> None:
    px.conftest(TIMEOUT_HOOK)
    px.script("option_script.py", "print('ran')\n")
    px.script("mark_script.py", "# pytest.mark.exec(timeout=2592000)\nprint('ran')\n")
    result = px.run("--exec-timeout", "1e9", *mode)
    result.assert_outcomes(passed=2)
    assert sorted(px.lines("timeouts.txt")) == ["mark_script None", "option_script None"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "None"), ("inf", "None"), ("1e300", "None"), ("2.5", "2.5")],
)
def test_timeout_option_follows_the_engine_rules(
    px: ExecPytester, value: str, expected: str
) -> None:
    px.conftest(TIMEOUT_HOOK)
    px.script("a_script.py")
    px.run_inprocess("--exec-timeout", value).assert_outcomes(passed=1)
    assert px.lines("timeouts.txt") == [f"a_script {expected}"]
