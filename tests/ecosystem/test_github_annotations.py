"""pytest-github-actions-annotate-failures: on GitHub Actions the annotation of a failed
script points at the line it failed at, inline and with --exec-parallel."""

from __future__ import annotations

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import EcosystemCheck

pytest.importorskip("pytest_github_actions_annotate_failures")
pytestmark = pytest.mark.ecosystem("pytest-github-actions-annotate-failures")

# The traceback's last frame in the script is compute()'s `raise`, on line 2.
BOOM = """\
def compute():
    raise RuntimeError("boom here")

print("before the boom")
compute()
"""


@AFTER_THE_RUN
def test_the_annotation_points_at_the_line_the_script_failed_at(
    px: ExecPytester, mode: Mode, monkeypatch: pytest.MonkeyPatch, ecosystem_check: EcosystemCheck
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # the plugin annotates only there
    monkeypatch.setenv("GITHUB_WORKSPACE", str(px.path))
    px.script("jobs/boom_script.py", BOOM)
    # Failed without a traceback in the script: no line to point at but the first.
    px.script("exit_script.py", "import sys\nprint('giving up')\nsys.exit(3)\n")
    px.script("ok_script.py", "print('fine')\n")
    result = px.run(*mode)
    result.assert_outcomes(passed=1, failed=2)
    annotations = sorted(line for line in result.errlines if line.startswith("::error "))
    assert annotations == [
        "::error file=exit_script.py,line=1::script exit_script.py",
        "::error file=jobs/boom_script.py,line=2::script jobs/boom_script.py",
    ]
    ecosystem_check(
        "pytest-github-actions-annotate-failures",
        "a failed script's annotation points at the line it failed at",
    )
