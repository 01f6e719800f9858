"""pytest-sugar: script failures are printed, in its progress view and its results."""

from __future__ import annotations

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import EcosystemCheck
from .scripts import write_pass_and_fail

pytest.importorskip("pytest_sugar")
pytestmark = pytest.mark.ecosystem("pytest-sugar")


@AFTER_THE_RUN
def test_sugar_prints_script_failures(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    write_pass_and_fail(px)
    # Not a terminal here: without --force-sugar pytest-sugar leaves the output alone.
    result = px.run("--force-sugar", *mode)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # pytest-sugar prints a failure when it comes, and lists it again in its results.
    result.stdout.fnmatch_lines(
        [
            "Test session starts*pytest-sugar*",
            "*script boom_script.py*",
            "before the boom",
            "*boom_script.py*, line 2, in compute",
            "RuntimeError: boom here",
            "Results (*",
            "*1 passed",
            "*1 failed",
            "*- boom_script.py:* script boom_script.py",
        ]
    )
    ecosystem_check("pytest-sugar", "a failing script's output and traceback are printed")
