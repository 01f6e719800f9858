"""pytest-xdist: the main suite's check (tests/test_plugin_ecosystem.py), here for the page's
row."""

from __future__ import annotations

import pytest
import test_plugin_ecosystem as main_suite
from conftest import ExecPytester, Mode

from .conftest import ONLY_IN_ECOSYSTEM_ENV, EcosystemCheck

pytest.importorskip("xdist")
pytestmark = [pytest.mark.ecosystem("pytest-xdist"), ONLY_IN_ECOSYSTEM_ENV]


@pytest.mark.modes("xdist")
@pytest.mark.parametrize("parallel", [(), ("--exec-parallel",)], ids=["plain", "exec-parallel"])
def test_xdist_workers_run_every_script_once(
    px: ExecPytester, mode: Mode, parallel: tuple[str, ...], ecosystem_check: EcosystemCheck
) -> None:
    main_suite.test_xdist_runs_every_script_exactly_once(px, mode, parallel)
    ecosystem_check(
        "pytest-xdist",
        "`-n 2` runs every script exactly once, with its outcome in junit; with "
        "`--exec-parallel` too, which then leaves each worker running its scripts inline",
    )
