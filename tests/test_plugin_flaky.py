"""Flaky scripts and reruns: a script that fails and then passes on a later try, whether the
engine tried again (``exec(max_runs=N)``) or pytest-rerunfailures reran the item; every try a
new process, and the failed tries' output kept."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from conftest import ExecPytester, Mode, summary_lines, write_script

from pytest_codomyrmex_exec import run_script, run_script_async

# A run of the script: its pid as a line in <name>.runs (beside it, so in the test's own tmp
# path), then a line on stdout and, while failing, a line on stderr; it passes from the run
# numbered PASS_FROM on (never, if PASS_FROM is 0). With MEET, the first run waits (20 s at
# most) for the first run of the script MEET, and says "met" if it came: only scripts run side
# by side meet.
RUN_COUNTER = """\
import os, pathlib, sys, time
here = pathlib.Path(__file__)
runs = here.with_suffix(".runs")
number = len(runs.read_text().splitlines()) + 1 if runs.exists() else 1
met = ""
if number == 1 and MEET:
    here.with_suffix(".started").touch()
    deadline = time.monotonic() + 20
    while not here.with_name(MEET + ".started").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    else:
        met = " met"
with open(runs, "a") as stream:
    stream.write(f"{os.getpid()}{met}\\n")
print(f"{here.stem} printed on try {number}")
if not (PASS_FROM and number >= PASS_FROM):
    sys.exit(f"{here.stem} failed on try {number}")
"""


def counter(pass_from: int, meet: str | None = None, mark: str = "") -> str:
    return f"{mark}PASS_FROM = {pass_from}\nMEET = {meet!r}\n{RUN_COUNTER}"


def runs_of(px: ExecPytester, name: str) -> list[str]:
    """Each run of the script ``name``: its pid, with `` met`` if it met its partner."""
    return px.lines(f"{name}.runs")


def stream_lines(px: ExecPytester) -> dict[str, list[dict[str, Any]]]:
    """The results file's script lines, by script name, in the order they were written."""
    lines = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_name.setdefault(line["nodeid"].rsplit("::", 1)[1], []).append(line)
    return by_name


def junit_properties(px: ExecPytester) -> dict[str, dict[str, list[str]]]:
    """Each testcase's properties, by test name: name to values."""
    cases = {}
    for case in ET.parse(px.junit_path).getroot().iter("testcase"):
        properties: dict[str, list[str]] = {}
        for prop in case.iter("property"):
            properties.setdefault(prop.get("name", ""), []).append(prop.get("value", ""))
        cases[case.get("name", "")] = properties
    return cases


def report_text(result: pytest.RunResult, title: str) -> str:
    """A test's report under ``____ title ____``, its captured sections included."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if line.strip("_ ") == title)
    body = []
    for line in lines[start + 1 :]:
        if line.startswith(("___", "===")):
            break
        body.append(line)
    return "\n".join(body)


# A conftest's flaky mark (pytest-rerunfailures) on one script: more reruns than --reruns.
FLAKY_MARK_CONFTEST = """\
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        if item.name == "marked_script":
            item.add_marker(pytest.mark.flaky(reruns=3))
"""


@pytest.mark.modes("inline", "process", "async-warm", "xdist")
def test_every_try_is_a_new_process_and_a_late_pass_is_flaky(px: ExecPytester, mode: Mode) -> None:
    # One session per mode: reruns (--reruns and a conftest's flaky mark), the engine's own
    # retries (max_runs), and a script that fails on every try, which is not flaky.
    parallel = mode.parallel
    meet = {"rerun": "broken_script", "broken": "rerun_script"} if parallel else {}
    px.script("rerun_script.py", counter(2, meet.get("rerun")))
    px.script("broken_script.py", counter(0, meet.get("broken")))
    px.script("marked_script.py", counter(4))
    px.script("engine_script.py", counter(3, mark="# pytest.mark.exec(max_runs=3)\n"))
    px.conftest(FLAKY_MARK_CONFTEST)
    px.ini(junit_family="xunit1")
    workers = ("--exec-workers", "4") if parallel else ()
    result = px.run(*mode, *workers, "--reruns", "2", "-rA", *px.report_args(), *px.junit_args())
    # rerun_script reruns once, marked_script three times, broken_script twice.
    assert result.parseoutcomes() == {"passed": 3, "failed": 1, "rerun": 6}, result.outlines

    # Every try ran the script anew: a process of its own, not a replay of a result.
    expected_runs = {"rerun": 2, "broken": 3, "marked": 4, "engine": 3}
    for name, count in expected_runs.items():
        pids = [line.split()[0] for line in runs_of(px, f"{name}_script")]
        assert len(pids) == count, (name, pids)
        assert len(set(pids)) == count, f"{name}: a try did not start a new process: {pids}"
    if parallel:  # the first runs were in the background, side by side; the reruns inline
        assert [line.endswith(" met") for line in runs_of(px, "rerun_script")] == [True, False]
        assert [line.endswith(" met") for line in runs_of(px, "broken_script")] == [
            True,
            False,
            False,
        ]

    # The summary: each flaky script with the try it passed on, of the tries it could get
    # (max_runs times one plus its reruns); the broken one is not among them.
    flaky_line = next(line for line in summary_lines(result) if "flaky:" in line)
    assert flaky_line == (
        "3 flaky: engine_script.py (passed on try 3 of 9), "
        "marked_script.py (passed on try 4 of 4), rerun_script.py (passed on try 2 of 3)"
    )

    # The results stream: the final line of each script says flaky, with its failed tries.
    stream = stream_lines(px)
    final = {name: lines[-1] for name, lines in stream.items()}
    for name, passed_on in (("engine_script", 3), ("marked_script", 4), ("rerun_script", 2)):
        line = final[name]
        assert (line["outcome"], line["flaky"], line["attempts"]) == ("passed", True, passed_on)
        failed = line["failed_tries"]
        assert [earlier["attempt"] for earlier in failed] == list(range(1, passed_on))
        assert all(earlier["status"] == "failed" for earlier in failed), failed
        assert failed[0]["stderr_tail"] == f"{name} failed on try 1\n"
    broken = final["broken_script"]
    assert (broken["outcome"], broken["flaky"], broken["attempts"]) == ("failed", False, 3)
    assert [earlier["attempt"] for earlier in broken["failed_tries"]] == [1, 2]
    assert [line["outcome"] for line in stream["broken_script"]] == ["rerun", "rerun", "failed"]

    # junit: the flaky property, with the try it passed on, only on the flaky scripts.
    properties = junit_properties(px)
    flaky_values = {name: props.get("flaky") for name, props in properties.items()}
    assert flaky_values == {
        "engine_script": ["3"],
        "marked_script": ["4"],
        "rerun_script": ["2"],
        "broken_script": None,
    }
    if mode.warm:  # the reruns, run inline, started warm too
        assert {value for props in properties.values() for value in props["warm"]} == {"warm"}

    # What the failed tries printed is in the flaky script's report (-rA).
    text = report_text(result, "script engine_script.py")
    for number in (1, 2):
        assert f"Captured stderr of try {number} (exit code 1)" in text, text
        assert f"engine_script failed on try {number}" in text
        assert f"engine_script printed on try {number}" in text
    assert "engine_script printed on try 3" in text


@pytest.mark.modes("inline", "async")
def test_exec_flaky_fail_fails_a_late_pass_saying_on_which_try(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("engine_script.py", counter(2, mark="# pytest.mark.exec(max_runs=3)\n"))
    px.script("steady_script.py", counter(1, mark="# pytest.mark.exec(max_runs=3)\n"))
    px.ini(exec_flaky="fail", junit_family="xunit1")
    result = px.run(*mode, "--reruns", "1", *px.report_args(), *px.junit_args())
    # The flaky failure is a failure like any other: rerun, in parallel too, as a new run.
    assert result.parseoutcomes() == {"passed": 1, "failed": 1, "rerun": 1}, result.outlines
    result.stdout.fnmatch_lines(
        [
            "engine_script.py failed: flaky: passed only on try 3 of 6 (exec_flaky = fail)*",
            "*Captured stderr of try 1 (exit code 1)*",
            "engine_script failed on try 1",
            "FAILED engine_script.py::engine_script - flaky: passed only on try 3 of 6*",
        ]
    )
    assert len(runs_of(px, "engine_script")) == 3
    assert len(runs_of(px, "steady_script")) == 1
    assert "1 flaky: engine_script.py (passed on try 3 of 6)" in summary_lines(result)
    cases = {case.name: case for case in px.junit()}  # a rerun's testcase comes first
    assert cases["engine_script"].outcome == "failed"
    assert "flaky: passed only on try 3 of 6" in cases["engine_script"].messages[0]
    assert cases["steady_script"].outcome == "passed"
    final = {name: lines[-1] for name, lines in stream_lines(px).items()}
    assert (final["engine_script"]["outcome"], final["engine_script"]["flaky"]) == ("failed", True)
    assert (final["steady_script"]["outcome"], final["steady_script"]["flaky"]) == ("passed", False)


def test_a_bad_exec_flaky_is_a_usage_error_naming_it(px: ExecPytester) -> None:
    px.script("a_script.py", "")
    px.ini(exec_flaky="sometimes")
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option 'exec_flaky': expected pass or fail, got 'sometimes'*"]
    )


def test_on_dask_a_late_pass_is_flaky(px: ExecPytester) -> None:
    pytest.importorskip("distributed")
    px.script("engine_script.py", counter(3, mark="# pytest.mark.exec(max_runs=3)\n"))
    px.conftest(px.backend_recorder())
    px.ini(junit_family="xunit1")
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-workers", "1",
        *px.report_args(), *px.junit_args(),
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert px.backend_used() == "dask"
    assert len(set(runs_of(px, "engine_script"))) == 3
    assert "1 flaky: engine_script.py (passed on try 3 of 3)" in summary_lines(result)
    line = stream_lines(px)["engine_script"][-1]
    assert (line["flaky"], line["attempts"]) == (True, 3)
    assert [earlier["stderr_tail"] for earlier in line["failed_tries"]] == [
        "engine_script failed on try 1\n",
        "engine_script failed on try 2\n",
    ]
    assert junit_properties(px)["engine_script"]["flaky"] == ["3"]


# -- the engine's part: a result keeps what its failed tries said --------------------------------


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_result_keeps_its_failed_tries(tmp_path: Path, face: str) -> None:
    script = write_script(tmp_path, "late_script.py", counter(3))
    if face == "sync":
        result = run_script(script, max_runs=3)
    else:
        result = asyncio.run(run_script_async(script, max_runs=3))
    assert (result["status"], result["attempts"]) == ("passed", 3)
    assert result["stdout"] == "late_script printed on try 3\n"
    tries = result["failed_tries"]
    assert [(t["attempt"], t["status"], t["cause"], t["exit_code"]) for t in tries] == [
        (1, "failed", "exit_code", 1),
        (2, "failed", "exit_code", 1),
    ]
    assert [t["stdout_tail"] for t in tries] == [
        "late_script printed on try 1\n",
        "late_script printed on try 2\n",
    ]
    assert [t["stderr_tail"] for t in tries] == [
        "late_script failed on try 1\n",
        "late_script failed on try 2\n",
    ]
    once = run_script(write_script(tmp_path, "once_script.py", counter(1)), max_runs=3)
    assert (once["attempts"], once["failed_tries"]) == (1, [])
