"""allure-pytest: every script is a test result with its outcome, its own run time and its
output, inline and with --exec-parallel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import EcosystemCheck

pytest.importorskip("allure_pytest")
pytestmark = pytest.mark.ecosystem("allure-pytest")

NAP = "import time\nprint('napping')\ntime.sleep(0.5)\n"

BOOM = """\
def compute():
    raise RuntimeError("boom here")

print("before the boom")
compute()
"""


def attachment(results: Path, test: dict[str, Any], name: str) -> str:
    """The text of the test's attachment called ``name`` (its captured stdout or stderr)."""
    [source] = [found["source"] for found in test["attachments"] if found["name"] == name]
    return (results / source).read_text(encoding="utf-8")


@AFTER_THE_RUN
def test_allure_has_each_script_with_outcome_time_and_output(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    px.script("nap_script.py", NAP)
    px.script("boom_script.py", BOOM)
    results = px.path / "allure-results"
    result = px.run(f"--alluredir={results}", *mode)
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    tests = {}
    for path in results.glob("*-result.json"):
        test = json.loads(path.read_text(encoding="utf-8"))
        tests[test["name"]] = test
    assert set(tests) == {"nap_script", "boom_script"}
    nap, boom = tests["nap_script"], tests["boom_script"]

    assert nap["status"] == "passed"
    # allure times a test by its call hook; a script's is its own run (in milliseconds).
    assert 500 <= nap["stop"] - nap["start"] < 20_000
    assert "napping" in attachment(results, nap, "stdout")

    # As for a test function that raised something other than an AssertionError.
    assert boom["status"] == "broken"
    assert "boom_script.py failed: exit code 1" in boom["statusDetails"]["message"]
    assert "before the boom" in attachment(results, boom, "stdout")
    assert 'RuntimeError("boom here")' in attachment(results, boom, "stderr")
    assert boom["stop"] >= boom["start"]
    ecosystem_check(
        "allure-pytest",
        "each script a test result with its outcome (a failed script is broken, as a test "
        "function that raised other than an AssertionError), its run time, output and error",
    )
