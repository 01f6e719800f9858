"""The JSONL results file (``--exec-report``): its header and lines, bounded tails, a full disk,
a killed run, and under pytest-xdist."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    AFTER_THE_RUN,
    SUMMARY_LINE,
    ExecPytester,
    Mode,
    summary_lines,
    write_mixed_project,
)


def _report_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@AFTER_THE_RUN
def test_report_has_a_header_and_one_line_per_script(px: ExecPytester, mode: Mode) -> None:
    write_mixed_project(px)
    path = px.path / "out" / "results.jsonl"
    path.parent.mkdir()
    result = px.run("--exec-report", str(path), *mode, *px.junit_args())
    result.assert_outcomes(passed=3, failed=3)
    header, *lines = _report_lines(path)
    assert header["schema"] == "pytest-codomyrmex-exec/report"
    assert header["version"] == 1
    assert isinstance(header["started"], str)
    options = header["options"]
    assert isinstance(options, dict)
    assert options["parallel"] == mode.parallel
    by_id = {line["nodeid"]: line for line in lines}
    assert len(by_id) == len(lines) == 6
    boom = by_id["boom_script.py::boom_script"]
    assert boom["status"] == "failed"
    assert boom["outcome"] == "failed"
    assert boom["exit_code"] == 1
    assert boom["attempts"] == 1
    assert boom["worker"] is None
    assert boom["message"] == "RuntimeError: boom"
    assert by_id["quick_script.py::quick_script"]["message"] is None
    assert str(boom["stderr_tail"]).endswith("RuntimeError: boom\n")
    assert by_id["crash_script.py::crash_script"]["signal"] == "SIGSEGV"
    assert by_id["hang_script.py::hang_script"]["status"] == "timeout"
    assert by_id["quick_script.py::quick_script"]["stdout_tail"] == "quick\n"
    cases = {case.name: case.time for case in px.junit()}
    for line in lines:
        name = str(line["nodeid"]).split("::")[1]
        assert -0.002 < cases[name] - float(line["duration"]) < 1.0  # type: ignore[arg-type]


def test_report_tails_are_bounded(px: ExecPytester) -> None:
    px.script("loud_script.py", "print('x' * 100_000)\nprint('the end')\n")
    path = px.path / "results.jsonl"
    px.run("--exec-report", str(path)).assert_outcomes(passed=1)
    line = _report_lines(path)[1]
    tail = str(line["stdout_tail"])
    assert tail.endswith("the end\n")
    assert len(tail) <= 2000


def test_report_to_an_unwritable_path_is_a_usage_error(px: ExecPytester) -> None:
    px.script("quick_script.py", "")
    result = px.run("--exec-report", str(px.path / "missing" / "results.jsonl"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--exec-report: cannot write *results.jsonl*"])


def test_a_report_on_a_full_disk_is_one_error_line_and_the_run_goes_on(
    px: ExecPytester, mode: Mode
) -> None:
    write_mixed_project(px)
    result = px.run("--exec-report=/dev/full", *mode, *px.junit_args())
    result.assert_outcomes(passed=3, failed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the scripts' verdict, nothing else
    assert len(px.junit()) == 6
    complaints = [line for line in result.outlines if "/dev/full" in line]
    assert complaints == [
        "codomyrmex-exec: the results file /dev/full could not be written "
        "([Errno 28] No space left on device); it stops here, the run goes on"
    ]
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# Runs pytest with a file-size limit (RLIMIT_FSIZE): past it a write fails with EFBIG
# (SIGXFSZ ignored, as a shell's ulimit -f leaves it for a process that handles it).
FILE_SIZE_LIMITED_PYTEST = """\
import resource, signal, sys
import pytest
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(pytest.main(sys.argv[2:]))
"""


def test_a_report_that_fills_up_mid_run_stops_there_and_the_run_goes_on(
    px: ExecPytester,
) -> None:
    for index in range(6):
        # Tails of 2,000 characters: each line is over 4 KB, so the limit comes mid-run.
        px.script(
            f"s{index}_script.py",
            "print('x' * 2500)\nprint('y' * 2500, file=__import__('sys').stderr)\n",
        )
    px.script("zz_failing_script.py", "raise SystemExit(3)\n")
    path = px.path / "results.jsonl"
    # Pipes, not files, for pytest's own output: the limit is for the results file.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            FILE_SIZE_LIMITED_PYTEST,
            "12000",
            "-p",
            "no:cacheprovider",
            "--exec-parallel",
            "--exec-workers",
            "1",
            "--exec-order",
            "collection",
            f"--exec-report={path}",
            "-rA",
        ],
        cwd=px.path,
        # Bytecode written under the limit would be cut short: broken .pyc files for later runs.
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "INTERNALERROR" not in done.stdout + done.stderr
    reported = re.findall(r"^(PASSED|FAILED) (\S+)::", done.stdout, re.M)
    assert len(reported) == 7, done.stdout
    complaints = [line for line in done.stdout.splitlines() if str(path) in line]
    assert len(complaints) == 1, done.stdout
    assert "File too large" in complaints[0]
    lines = path.read_text(encoding="utf-8").splitlines()
    # It stopped mid-run: the header and some scripts made it, not all of them.
    whole = [json.loads(line) for line in lines[:-1]]
    assert whole[0]["schema"] == "pytest-codomyrmex-exec/report"
    assert 1 <= len(whole) - 1 < 7, len(whole)
    assert path.stat().st_size <= 12000


def test_report_survives_a_sigkilled_run(px: ExecPytester) -> None:
    """Kill pytest halfway: every finished script has its line, and only those."""
    done = px.path / "done"
    done.mkdir()
    quick = 6
    for index in range(quick):
        px.script(
            f"quick{index}_script.py",
            f"""\
            import pathlib, time
            time.sleep({0.2 * index})
            pathlib.Path({str(done)!r}, "quick{index}_script").touch()
            """,
            track=True,
        )
    for index in range(2):
        px.script(
            f"slow{index}_script.py",
            f"""\
            import pathlib, time
            time.sleep(120)
            pathlib.Path({str(done)!r}, "slow{index}_script").touch()
            """,
            track=True,
        )
    path = px.path / "results.jsonl"
    env = {**os.environ, "PYTEST_ADDOPTS": "-p no:hypothesispytest -p no:cacheprovider"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "--exec-parallel",
            "--exec-workers",
            "8",
            "--exec-report",
            str(path),
        ],
        cwd=px.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(done.iterdir())) < quick:
            assert time.monotonic() < deadline, "the quick scripts did not finish"
            time.sleep(0.05)
        # Their lines come as each is reported, not at the end of the run. Whole lines only:
        # one being written as we read must not count (pytest is killed right after).
        while not path.exists() or path.read_text().count("\n") < quick + 1:
            assert time.monotonic() < deadline, "the finished scripts' lines were not written"
            time.sleep(0.05)
        assert proc.poll() is None, "pytest ended: the run was not killed halfway"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {marker.name for marker in done.iterdir()}
    header, *lines = _report_lines(path)  # every line parses
    assert header["version"] == 1
    reported = {str(line["nodeid"]).split("::")[1] for line in lines}
    assert reported == finished == {f"quick{index}_script" for index in range(quick)}
    assert all(line["status"] == "passed" for line in lines)


def test_report_and_summary_under_xdist(px: ExecPytester) -> None:
    write_mixed_project(px)
    path = px.path / "results.jsonl"
    result = px.run("-n", "2", "-rA", "--exec-report", str(path))
    result.assert_outcomes(passed=3, failed=3)
    # The short summary line survives the trip from the worker.
    result.stdout.fnmatch_lines_random(
        [
            "FAILED boom_script.py::boom_script - RuntimeError: boom",
            "FAILED hang_script.py::hang_script - timed out after 0.5 s",
            "FAILED crash_script.py::crash_script - killed by signal SIGSEGV",
        ]
    )
    header, *lines = _report_lines(path)
    assert header["version"] == 1
    assert len(lines) == 6
    assert {line["worker"] for line in lines} <= {"gw0", "gw1"}
    by_id = {str(line["nodeid"]).split("::")[1]: line for line in lines}
    assert by_id["boom_script"]["stderr_tail"].endswith("RuntimeError: boom\n")  # type: ignore[union-attr]
    assert by_id["hang_script"]["status"] == "timeout"
    lines_of_summary = summary_lines(result)
    assert SUMMARY_LINE.match(lines_of_summary[0])
    assert lines_of_summary[1] == "3 passed, 3 failed"
