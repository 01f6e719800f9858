"""pytest-env: the variables of ``[pytest] env =`` reach the scripts."""

from __future__ import annotations

import pytest
from conftest import ExecPytester, Mode

from .conftest import EcosystemCheck

pytest.importorskip("pytest_env")
pytestmark = pytest.mark.ecosystem("pytest-env")

SHOW_ENV = """\
import os
print("GREETING=" + os.environ.get("GREETING", "<unset>"))
print("LEVEL=" + os.environ.get("LEVEL", "<unset>"))
assert os.environ.get("GREETING") == "from pytest-env"
assert os.environ.get("LEVEL") == "3"
"""


# The backends each make the children's environment: every mode.
def test_pytest_env_variables_reach_the_scripts(
    px: ExecPytester, mode: Mode, monkeypatch: pytest.MonkeyPatch, ecosystem_check: EcosystemCheck
) -> None:
    for name in ("GREETING", "LEVEL"):
        monkeypatch.delenv(name, raising=False)  # so only pytest-env can have set them
    # D: sets a default, kept only where the variable is not set already.
    px.ini(env="\n    GREETING=from pytest-env\n    D:LEVEL=3")
    px.script("env_script.py", SHOW_ENV)
    result = px.run("-rA", *mode)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["GREETING=from pytest-env", "LEVEL=3"])
    ecosystem_check("pytest-env", "the variables of `[pytest] env =` reach the scripts")
