"""pytest-rerunfailures: the main suite's check (tests/test_plugin_flaky.py), here for the page's
row."""

from __future__ import annotations

import pytest
import test_plugin_flaky as main_suite
from conftest import ExecPytester, Mode

from .conftest import ONLY_IN_ECOSYSTEM_ENV, EcosystemCheck

pytest.importorskip("pytest_rerunfailures")
pytestmark = [pytest.mark.ecosystem("pytest-rerunfailures"), ONLY_IN_ECOSYSTEM_ENV]


@pytest.mark.modes("inline", "process", "async-warm", "xdist")
def test_reruns_run_the_script_again_and_a_late_pass_is_flaky(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    main_suite.test_every_try_is_a_new_process_and_a_late_pass_is_flaky(px, mode)
    ecosystem_check(
        "pytest-rerunfailures",
        "`--reruns N` and its `flaky` mark run the script again in a new process each try; "
        "a script that passes on a later try is counted as flaky",
    )
