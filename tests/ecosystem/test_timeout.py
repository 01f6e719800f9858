"""pytest-timeout: the main suite's check (tests/test_plugin_ecosystem.py), here for the page's
row."""

from __future__ import annotations

import pytest
import test_plugin_ecosystem as main_suite
from conftest import ExecPytester, Mode

from .conftest import ONLY_IN_ECOSYSTEM_ENV, EcosystemCheck

pytest.importorskip("pytest_timeout")
pytestmark = [pytest.mark.ecosystem("pytest-timeout"), ONLY_IN_ECOSYSTEM_ENV]


@pytest.mark.modes("inline", "async")
def test_pytest_timeout_times_ordinary_tests_and_never_a_script(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    main_suite.test_pytest_timeout_never_times_a_script_item(px, mode, "signal")
    ecosystem_check(
        "pytest-timeout",
        "`--timeout` times ordinary tests and never a script, which keeps its own "
        "`--exec-timeout` (the thread method is checked by the main suite)",
    )
