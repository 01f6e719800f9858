"""pytest-json-report: every script is listed with its outcome, its own run time, its output
and the line it failed at, inline and with --exec-parallel."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import EcosystemCheck

pytest.importorskip("pytest_jsonreport")
pytestmark = pytest.mark.ecosystem("pytest-json-report")

NAP = "import time\nprint('napping')\ntime.sleep(0.5)\n"

# The traceback's last frame in the script is compute()'s `raise`, on line 2.
BOOM = """\
def compute():
    raise RuntimeError("boom here")

print("before the boom")
compute()
"""


@AFTER_THE_RUN
def test_the_json_report_lists_each_script_with_outcome_time_and_output(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    px.script("nap_script.py", NAP)
    px.script("boom_script.py", BOOM)
    report = px.path / "report.json"
    result = px.run("--json-report", f"--json-report-file={report}", *mode)
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    data: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    assert data["summary"] == {"passed": 1, "failed": 1, "total": 2, "collected": 2}
    tests = {test["nodeid"]: test for test in data["tests"]}
    assert set(tests) == {"nap_script.py::nap_script", "boom_script.py::boom_script"}

    nap, boom = tests["nap_script.py::nap_script"], tests["boom_script.py::boom_script"]
    assert nap["outcome"] == "passed"
    assert [nap[phase]["outcome"] for phase in ("setup", "call", "teardown")] == ["passed"] * 3
    # The script's own run time, not the moment its result took to read (parallel) nor
    # counted twice with the setup that ran it (inline).
    assert 0.5 <= nap["call"]["duration"] < 20
    assert nap["setup"]["duration"] < 0.5
    assert "napping" in nap["call"]["stdout"]
    assert nap["lineno"] == 0

    assert boom["outcome"] == "failed"
    assert boom["call"]["outcome"] == "failed"
    assert boom["call"]["crash"]["message"] == "RuntimeError: boom here"
    assert boom["call"]["crash"]["lineno"] == 2
    assert "before the boom" in boom["call"]["stdout"]
    assert 'RuntimeError("boom here")' in boom["call"]["stderr"]
    assert boom["lineno"] == 1  # 0-based, as pytest counts: the `raise` on line 2
    ecosystem_check(
        "pytest-json-report",
        "each script listed with its outcome, its run time as the call's duration, its "
        "output and the line it failed at",
    )
