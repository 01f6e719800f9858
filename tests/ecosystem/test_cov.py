"""pytest-cov: the main suite's check (tests/test_plugin_ecosystem.py), here for the page's row."""

from __future__ import annotations

import pytest
import test_plugin_ecosystem as main_suite
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import ONLY_IN_ECOSYSTEM_ENV, EcosystemCheck

pytest.importorskip("pytest_cov")
pytestmark = [pytest.mark.ecosystem("pytest-cov"), ONLY_IN_ECOSYSTEM_ENV]


@AFTER_THE_RUN
def test_pytest_cov_counts_the_lines_scripts_run(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    main_suite.test_coverage_counts_the_lines_scripts_run(px, mode)
    ecosystem_check(
        "pytest-cov",
        "`--cov` counts the lines scripts run, and only those (coverage's `patch = subprocess`)",
    )
