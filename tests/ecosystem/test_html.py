"""pytest-html (with pytest-metadata): the report shows each script's outcome, output and error."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import EcosystemCheck
from .scripts import write_pass_and_fail

pytest.importorskip("pytest_html")
pytestmark = pytest.mark.ecosystem("pytest-html", "pytest-metadata")


def report_data(report: Path) -> dict[str, Any]:
    """What a self-contained pytest-html report renders: its tests and its environment."""
    blob = re.search(r'data-jsonblob="([^"]*)"', report.read_text(encoding="utf-8"))
    assert blob is not None, f"{report}: no data in the report"
    data: dict[str, Any] = json.loads(html.unescape(blob.group(1)))
    return data


@AFTER_THE_RUN
def test_the_html_report_shows_each_scripts_output_and_error(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    write_pass_and_fail(px)
    report = px.path / "report.html"
    result = px.run(f"--html={report}", "--self-contained-html", *mode)
    result.assert_outcomes(passed=1, failed=1)
    data = report_data(report)
    tests = data["tests"]
    assert set(tests) == {"ok_script.py::ok_script", "boom_script.py::boom_script"}
    [passed] = tests["ok_script.py::ok_script"]
    [failed] = tests["boom_script.py::boom_script"]
    assert passed["result"] == "Passed"
    assert "hello from ok" in html.unescape(passed["log"])
    assert failed["result"] == "Failed"
    log = html.unescape(failed["log"])
    assert "before the boom" in log
    assert 'boom_script.py", line 2, in compute' in log
    assert "RuntimeError: boom here" in log
    assert "codomyrmex-exec" in data["environment"]["Plugins"]
    ecosystem_check(
        "pytest-html",
        "the report lists each script with its outcome, what it printed and its traceback",
    )
    ecosystem_check("pytest-metadata", "the HTML report's environment names the plugin")
