"""What users see: the run summary, the short failure line, the JSONL report, junit properties,
skip exit codes, live output and coverage, each through a real pytest session."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

# The summary, the report file and junit are made from results once a script has run: the
# parallel session's replay differs from an inline run, the backend that ran it does not.
AFTER_THE_RUN = pytest.mark.modes("inline", "async")


def write_mixed_project(px: ExecPytester) -> None:
    px.script("quick_script.py", "print('quick')\n")
    px.script("nap_script.py", "import time\ntime.sleep(1.2)\n")
    px.script("nap2_script.py", "import time\ntime.sleep(0.8)\n")
    px.script(
        "boom_script.py",
        """\
        def compute():
            raise RuntimeError("boom")

        compute()
        """,
    )
    px.script(
        "hang_script.py",
        "# pytest.mark.exec(timeout=0.5)\nimport time\ntime.sleep(30)\n",
    )
    px.script("crash_script.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")


SUMMARY_LINE = re.compile(
    r"^(\d+) scripts?, ([\d.]+) s of script time in ([\d.]+) s(?:: ([\d.]+)x)?$", re.M
)


def summary_lines(result: pytest.RunResult) -> list[str]:
    """The lines of the run summary, under its ``=== codomyrmex-exec: script runs ===``."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if "= codomyrmex-exec: script runs =" in line]
    assert starts, "no run summary in the output"
    body = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("==="):
            break
        body.append(line)
    return body


# -- the run summary -------------------------------------------------------------------------


@AFTER_THE_RUN
def test_summary_numbers_match_the_reports(px: ExecPytester, mode: Mode) -> None:
    write_mixed_project(px)
    result = px.run("--durations=0", "--durations-min=0", *mode, *px.junit_args())
    result.assert_outcomes(passed=3, failed=3)
    lines = summary_lines(result)
    match = SUMMARY_LINE.match(lines[0])
    assert match, lines
    count, script_time, wall, speedup = match.groups()
    cases = px.junit()
    assert int(count) == len(cases) == 6
    # The script time is the sum of the call phases' durations, as --durations reports them.
    calls = re.findall(r"^([\d.]+)s call +\S+_script\.py::", result.stdout.str(), re.M)
    assert len(calls) == 6
    # The summary prints three digits (here 0.005 off), --durations two decimals (6 x 0.005).
    assert float(script_time) == pytest.approx(sum(map(float, calls)), abs=0.04)
    if mode.parallel:  # scripts ran side by side: the speed-up follows from the times shown
        assert float(speedup) == pytest.approx(float(script_time) / float(wall), abs=0.051)
    else:  # one at a time: a ratio would only measure the overhead
        assert speedup is None, lines[0]
    # Counts as pytest counts: the timeout is one of its failures.
    assert lines[1] == "3 passed, 3 failed"
    assert lines[2] == "slowest:"
    slowest = [line.split()[-1] for line in lines[3:8]]
    assert set(slowest[:2]) == {"nap_script.py", "nap2_script.py"}  # 1.2 s and 0.8 s
    assert slowest[2] == "hang_script.py"  # 0.5 s: its timeout
    assert lines[8:] == ["hit their limit:", "  hang_script.py: timed out after 0.5 s"]


def test_summary_shows_the_parallel_speedup(px: ExecPytester) -> None:
    for index in range(4):
        px.script(f"sleep{index}_script.py", "import time\ntime.sleep(1.5)\n")
    result = px.run("--exec-parallel", "--exec-workers", "4")
    result.assert_outcomes(passed=4)
    match = SUMMARY_LINE.search(result.stdout.str())
    assert match
    script_time, wall = float(match[2]), float(match[3])
    assert script_time >= 5.9
    assert wall < script_time / 2, "four scripts at once took longer than two in a row"
    assert float(match[4]) > 2


def test_summary_counts_outcomes_as_pytest_does(px: ExecPytester) -> None:
    px.script("known_script.py", "# pytest.mark.xfail(reason='known')\nraise SystemExit(1)\n")
    px.script("fixed_script.py", "# pytest.mark.xfail(reason='fixed?')\n")
    px.script("skipped_script.py", "raise SystemExit(77)\n")
    px.script("fine_script.py", "")
    px.script("boom_script.py", "raise RuntimeError('boom')\n")
    px.script("nowhere_script.py", "# pytest.mark.exec(cwd='missing')\n")
    px.ini(exec_skip_exit_codes="77")
    result = px.run("--exec-parallel")
    result.assert_outcomes(passed=1, failed=1, xfailed=1, xpassed=1, skipped=1, errors=1)
    assert (
        summary_lines(result)[1] == "1 passed, 1 failed, 1 xfailed, 1 xpassed, 1 skipped, 1 error"
    )


def test_a_speedup_is_shown_only_for_scripts_run_side_by_side(px: ExecPytester, mode: Mode) -> None:
    px.script("only_script.py", "")
    alone = SUMMARY_LINE.search(px.run(*mode).stdout.str())
    assert alone, "no summary line"
    assert alone[4] is None, alone[0]
    # Three significant digits at least: even a tenth of a second shows as 0.0xyz or 0.xyz.
    assert re.fullmatch(r"\d\.\d\d+|0\.0\d\d\d*", alone[2]), alone[0]
    px.script("second_script.py", "")
    both = SUMMARY_LINE.search(px.run(*mode, "--exec-workers", "1").stdout.str())
    assert both, "no summary line"
    assert both[4] is None, f"scripts ran one at a time: {both[0]}"


def test_summary_is_short_with_q_and_off_on_request(px: ExecPytester) -> None:
    write_mixed_project(px)
    quiet = px.run("-q", "--exec-parallel")
    quiet.stdout.fnmatch_lines(
        ["codomyrmex-exec: 6 scripts, * s of script time in * s: *x (3 passed, 3 failed)"]
    )
    assert "slowest:" not in quiet.stdout.str()
    off = px.run("--exec-parallel", "--exec-summary=no")
    assert "script time" not in off.stdout.str()
    px.ini(exec_summary="no")
    assert "script time" not in px.run().stdout.str()


def test_no_summary_without_scripts(px: ExecPytester) -> None:
    px.pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    result = px.run("--exec-parallel")
    result.assert_outcomes(passed=1)
    assert "script time" not in result.stdout.str()


def test_bad_summary_value_is_a_usage_error(px: ExecPytester) -> None:
    px.script("quick_script.py", "")
    result = px.run("--exec-summary=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--exec-summary: expected one of yes, no, got 'maybe'*"])


# -- the short failure line ------------------------------------------------------------------


@AFTER_THE_RUN
def test_short_summary_shows_the_scripts_last_error_line(px: ExecPytester, mode: Mode) -> None:
    write_mixed_project(px)
    result = px.run("-rA", *mode, *px.junit_args())
    result.stdout.fnmatch_lines_random(
        [
            "FAILED boom_script.py::boom_script - RuntimeError: boom",
            "FAILED hang_script.py::hang_script - timed out after 0.5 s",
            "FAILED crash_script.py::crash_script - killed by signal SIGSEGV",
        ]
    )
    # The traceback once: the failure's header line, then the stderr section holding it.
    assert px.section(result, "script boom_script.py") == [
        px.section(result, "script boom_script.py")[0]
    ]
    assert result.outlines.count("RuntimeError: boom") == 1
    assert result.outlines.count('    raise RuntimeError("boom")') == 1
    # junit's failure message is the same line.
    messages = {case.name: case.messages for case in px.junit()}
    assert messages["boom_script"][0].startswith("RuntimeError: boom\n")


def test_traceback_stays_in_the_failure_when_stderr_is_not_shown(px: ExecPytester) -> None:
    px.script("boom_script.py", "raise RuntimeError('boom')\n")
    result = px.run("--show-capture=no")
    result.assert_outcomes(failed=1)
    failure = px.section(result, "script boom_script.py")
    assert failure[0].startswith("boom_script.py failed: exit code 1")
    assert failure[-1] == "RuntimeError: boom"
    assert "Captured stderr" not in result.stdout.str()


# -- skip exit codes -------------------------------------------------------------------------


def test_skip_exit_codes_make_a_skip_with_the_last_stderr_line(
    px: ExecPytester, mode: Mode
) -> None:
    px.ini(exec_skip_exit_codes="77 78")
    px.script(
        "nogpu_script.py",
        "import sys\nprint('probing', file=sys.stderr)\n"
        "print('no GPU on this machine', file=sys.stderr)\nsys.exit(77)\n",
    )
    px.script("silent_script.py", "raise SystemExit(78)\n")
    px.script("other_script.py", "raise SystemExit(76)\n")
    result = px.run("-rA", *mode, *px.junit_args())
    result.assert_outcomes(skipped=2, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED [[]1[]] nogpu_script.py:1: no GPU on this machine",
            "SKIPPED [[]1[]] silent_script.py:1: exit code 78",
            "FAILED other_script.py::other_script - exit code 76",
        ]
    )
    outcomes = {case.name: case.outcome for case in px.junit()}
    assert outcomes == {
        "nogpu_script": "skipped",
        "silent_script": "skipped",
        "other_script": "failed",
    }


def test_skip_exit_codes_are_off_by_default(px: ExecPytester) -> None:
    px.script("nogpu_script.py", "raise SystemExit(77)\n")
    px.run().assert_outcomes(failed=1)


def test_bad_skip_exit_code_is_a_usage_error(px: ExecPytester) -> None:
    px.ini(exec_skip_exit_codes="77 often")
    px.script("nogpu_script.py", "")
    result = px.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*exec_skip_exit_codes*expected exit codes 1-255, got 'often'*"])


# -- junit properties ------------------------------------------------------------------------


def _properties(path: Path) -> dict[str, dict[str, str]]:
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        found[case.get("name", "")] = {
            prop.get("name", ""): prop.get("value", "") for prop in case.iter("property")
        }
    return found


@AFTER_THE_RUN
def test_junit_properties_under_xunit1(px: ExecPytester, mode: Mode) -> None:
    write_mixed_project(px)
    px.script("flaky_script.py", "# pytest.mark.exec(max_runs=2)\nraise SystemExit(3)\n")
    result = px.run("-o", "junit_family=xunit1", "-W", "error", *mode, *px.junit_args())
    result.assert_outcomes(passed=3, failed=4)
    props = _properties(px.junit_path)
    cases = {case.name: case for case in px.junit()}
    assert props["boom_script"]["exec_status"] == "failed"
    assert props["boom_script"]["exec_exit_code"] == "1"
    assert props["crash_script"]["exec_signal"] == "SIGSEGV"
    assert props["crash_script"]["exec_exit_code"] == "-11"
    assert props["hang_script"]["exec_status"] == "timeout"
    assert props["flaky_script"]["exec_attempts"] == "2"
    assert props["quick_script"] == {
        "exec_status": "passed",
        "exec_exit_code": "0",
        "exec_attempts": "1",
        "exec_duration": props["quick_script"]["exec_duration"],
    }
    for name, case in cases.items():
        # junit's time also counts pytest's own bit of the setup and teardown phases.
        assert -0.002 < case.time - float(props[name]["exec_duration"]) < 1.0


def test_junit_default_family_has_no_properties_and_no_warnings(px: ExecPytester) -> None:
    write_mixed_project(px)
    result = px.run("-W", "error", "--exec-parallel", *px.junit_args())
    result.assert_outcomes(passed=3, failed=3, warnings=0)
    assert "warnings summary" not in result.stdout.str()
    assert all(not values for values in _properties(px.junit_path).values())


# -- the JSONL report ------------------------------------------------------------------------


def _report_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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


# -- live output -----------------------------------------------------------------------------


def write_live_project(px: ExecPytester) -> None:
    """Two scripts whose output interleaves; runs need ``px.report_args()``."""
    started = px.path / "a_started"
    px.script(
        "a_script.py",
        f"""\
        import os, sys, time
        print("a-early", flush=True)
        open({str(started)!r}, "w").close()
        # A line written in three pieces, while b writes its own lines: shown whole.
        for piece in ("piece1-", "piece2-", "piece3"):
            sys.stdout.write(piece)
            sys.stdout.flush()
            time.sleep(0.15)
        print(flush=True)
        # The rest once b's result is reported, so a's report comes after b's on any machine
        # (a marker touched by b raced b's interpreter exit against a's on a loaded one).
        _until_reported("b_script.py")
        print("x" * 1500, flush=True)
        sys.stdout.buffer.write(b"esc \\x1b[31m nul \\x00 bad \\xff end\\n")
        sys.stdout.flush()
        print("on stderr", file=sys.stderr, flush=True)
        sys.stdout.write("no newline at the end")
        """,
        waits=True,
    )
    px.script(
        "b_script.py",
        # Starts once a's first line is out: however late a's interpreter starts on a loaded
        # machine, that line is live before b ends, which is what the test reads.
        f"""\
        import os, time
        deadline = time.monotonic() + 30
        while not os.path.exists({str(started)!r}) and time.monotonic() < deadline:
            time.sleep(0.02)
        for i in range(3):
            print(f"b-line {{i}}", flush=True)
            time.sleep(0.1)
        """,
    )


def _live_lines(result: pytest.RunResult, label: str) -> list[str]:
    prefix = f"[{label}] "
    return [line[len(prefix) :] for line in result.outlines if line.startswith(prefix)]


# 200 MB in lines of 100 bytes, as fast as the script can write them.
FLOOD_SCRIPT = """\
# pytest.mark.exec(timeout=30)
import sys
block = (b"x" * 99 + b"\\n") * 10_000
for _ in range(200):
    sys.stdout.buffer.write(block)
"""
FLOOD_LINES = 2_000_000

# pytest's own peak memory (RSS, MB), written where the test can read it. VmHWM, not
# getrusage's ru_maxrss: that one keeps the peak of the process before its exec, which
# here is this test session, forked.
PEAK_MEMORY_CONFTEST = """\
import re

def pytest_unconfigure(config):
    with open("/proc/self/status") as status:
        peak_kb = re.search(r"^VmHWM:\\s+(\\d+) kB", status.read(), re.M)[1]
    (config.rootpath / "peak_mb.txt").write_text(str(int(peak_kb) / 1024))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM in /proc")
def test_live_output_of_a_flood_bounds_memory_and_never_slows_the_script(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("flood_script.py", FLOOD_SCRIPT)
    px.conftest(PEAK_MEMORY_CONFTEST)
    result = px.run(*mode, "--exec-live", *px.junit_args())
    # Inline, a display that held the script up made it take 18 s, unloaded; alone, it
    # takes 0.1 s, and 1.5 s with the lines shown.
    result.assert_outcomes(passed=1)
    (case,) = px.junit()
    assert case.time < 12, "the display held the script up"
    # Queued in memory, 200 MB of output grew pytest to 240 MB; bounded, it stays near 45 MB.
    peak = float((px.path / "peak_mb.txt").read_text())
    assert peak < 130, f"pytest grew to {peak:.0f} MB"
    # Every line is either shown or counted as dropped: none is lost without a word.
    shown, dropped = 0, 0
    for line in _live_lines(result, "flood_script.py"):
        counted = re.fullmatch(r"… (\d+) lines? of stdout dropped: the display fell behind.*", line)
        if counted:
            dropped += int(counted[1])
        elif not line.startswith("… part of a line"):
            shown += 1
    assert shown + dropped == FLOOD_LINES, (shown, dropped)


@pytest.mark.parametrize("how", [["--exec-live"], ["-s"], ["-o", "exec_live=true"]])
@pytest.mark.modes("process", "async")
def test_live_output_streams_whole_prefixed_lines(
    px: ExecPytester, mode: Mode, how: list[str]
) -> None:
    write_live_project(px)
    # Two workers: a and b at once, whatever the CPUs.
    result = px.run(*mode, "--exec-workers", "2", *px.report_args(), *how)
    result.assert_outcomes(passed=2)
    a_lines = _live_lines(result, "a_script.py")
    assert a_lines[:2] == ["a-early", "piece1-piece2-piece3"]
    assert a_lines[2] == "x" * 1000 + "… [500 more characters]"
    assert a_lines[3] == "esc \\x1b[31m nul \\x00 bad \ufffd end"
    assert set(a_lines[4:]) == {"on stderr", "no newline at the end"}
    assert _live_lines(result, "b_script.py") == ["b-line 0", "b-line 1", "b-line 2"]
    # Live: a's first line came while b ran, before b's report and long before a's own.
    outlines = result.outlines
    early = outlines.index("[a_script.py] a-early")
    b_report = next(i for i, line in enumerate(outlines) if line.startswith("b_script.py ."))
    a_report = next(i for i, line in enumerate(outlines) if line.startswith("a_script.py ."))
    assert early < b_report < a_report
    assert outlines.index("[b_script.py] b-line 2") < b_report


@pytest.mark.modes("inline")
def test_live_output_inline(px: ExecPytester, mode: Mode) -> None:
    # flush: on a pipe Python buffers stdout, so unflushed 'one' could come after 'two'.
    px.script(
        "a_script.py", "import sys\nprint('one', flush=True)\nprint('two', file=sys.stderr)\n"
    )
    result = px.run("--exec-live", "-v", *mode)
    result.assert_outcomes(passed=1)
    assert _live_lines(result, "a_script.py") == ["one", "two"]


def test_live_output_is_coloured_per_script_on_a_colour_terminal(px: ExecPytester) -> None:
    px.script("a_script.py", "print('from a')\n")
    px.script("b_script.py", "print('from b')\n")
    result = px.run("--exec-parallel", "--exec-live", "--color=yes")
    text = result.stdout.str()
    coloured = re.findall(r"\x1b\[(\d+)m\[(\w)_script\.py\]\x1b\[0m from \w", text)
    assert {name for _, name in coloured} == {"a", "b"}
    assert len({code for code, _ in coloured}) == 2, "both scripts in the same colour"


def test_live_output_is_off_by_default(px: ExecPytester, mode: Mode) -> None:
    px.script("a_script.py", "print('quiet please')\n")
    result = px.run(*mode)
    result.assert_outcomes(passed=1)
    assert "quiet please" not in result.stdout.str()


def test_parallel_runner_output_callback(tmp_path: Path) -> None:
    """The engine side of live output for the process backend: chunks, on request only."""
    from pytest_codomyrmex_exec import ParallelRunner, RunEvent

    script = tmp_path / "talk_script.py"
    script.write_text("import sys\nprint('out line')\nprint('err line', file=sys.stderr)\n")
    progress: list[RunEvent] = []
    runner = ParallelRunner(2, progress_callback=progress.append)
    runner.run_scripts([script])
    assert {event.kind.value for event in progress} == {"started", "finished"}

    output: list[RunEvent] = []
    runner.output_callback = output.append
    runner.run_scripts([script, script])
    assert {event.kind.value for event in output} == {"output"}
    for index in (0, 1):
        streams: dict[str | None, bytes] = {}
        for event in output:
            if event.key == index:  # chunks as read: a line may come in pieces
                streams[event.stream] = streams.get(event.stream, b"") + event.chunk
        assert streams == {"stdout": b"out line\n", "stderr": b"err line\n"}
    assert [e.kind.value for e in progress].count("started") == 3


# -- coverage of what scripts run ------------------------------------------------------------


@AFTER_THE_RUN
def test_coverage_counts_the_lines_scripts_run(px: ExecPytester, mode: Mode) -> None:
    """pytest-cov with coverage's ``patch = subprocess``: the one setting a user adds."""
    px.script(
        "mypkg/__init__.py",
        """\
        def used_by_one():
            return 1


        def never_used():
            return 2


        def used_by_two():
            return 3
        """,
    )
    px.script("one_script.py", "import mypkg\nmypkg.used_by_one()\n")
    px.script(
        "jobs/two_script.py",
        "import sys\nsys.path.insert(0, '..')\nimport mypkg\nmypkg.used_by_two()\n",
    )
    (px.path / ".coveragerc").write_text("[run]\npatch = subprocess\n")
    report = px.path / "cov.json"
    result = px.run("--cov=mypkg", f"--cov-report=json:{report}", *mode)
    result.assert_outcomes(passed=2)
    files = json.loads(report.read_text())["files"]
    executed = set(files["mypkg/__init__.py"]["executed_lines"])
    missing = set(files["mypkg/__init__.py"]["missing_lines"])
    assert {2, 10} <= executed, "the lines the scripts ran were not counted"
    assert missing == {6}, "never_used() ran?"


# -- running scripts -------------------------------------------------------------------------


@pytest.mark.modes("process", "async")
def test_a_long_wait_says_which_scripts_run(px: ExecPytester, mode: Mode) -> None:
    # The stuck script ends once the notice is in pytest's output (a file here, as in CI):
    # so the notice must reach it while the wait lasts, not when pytest exits.
    output = px.path / "stdout"
    px.script(
        "stuck_script.py",
        f"""\
        import sys, time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open({str(output)!r}) as stream:
                if "1 running: stuck_script.py" in stream.read():
                    sys.exit(0)
            time.sleep(0.02)
        sys.exit("the notice never reached pytest's output while the script ran")
        """,
    )
    px.script("quick_script.py", "import time\ntime.sleep(0.5)\n")
    px.script("quiet_script.py", "import time\ntime.sleep(1)\n")
    result = px.run(*mode, "--exec-workers", "3", "-o", "exec_running_notice_after=1.5")
    result.assert_outcomes(passed=3)
    notices = [line for line in result.outlines if " running: " in line]
    # 1.5 s after the last finish, once (the next would be 3 s later, after the end). A
    # start slowed by a loaded machine may add one before, naming the three of them.
    alone = [line for line in notices if line.startswith("codomyrmex-exec: 1 running: ")]
    assert len(alone) == 1, notices
    assert notices[-1] == alone[0], notices
    match = re.fullmatch(r"codomyrmex-exec: 1 running: stuck_script\.py (\d+) s", alone[0])
    assert match, notices
    assert 2 <= int(match[1]) <= 10
    # Between progress lines, not inside one: the line before it got its percentage.
    before = result.outlines[result.outlines.index(alone[0]) - 1]
    assert re.fullmatch(r"\S+_script\.py \.\s+\[ *\d+%\]", before), result.outlines


@pytest.mark.parametrize("verbosity", ["-q", "-v"])
def test_the_running_notice_leaves_progress_lines_whole(px: ExecPytester, verbosity: str) -> None:
    output = px.path / "stdout"
    px.script(
        "stuck_script.py",
        f"""\
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open({str(output)!r}) as stream:
                if " running: " in stream.read():
                    break
            time.sleep(0.02)
        """,
    )
    px.script("quick_script.py", "")
    args = (
        "--exec-parallel",
        "-o",
        "exec_running_notice_after=1",
        "-o",
        "console_output_style=count",
    )
    result = px.run(*args, verbosity)
    result.assert_outcomes(passed=2)
    lines = result.outlines
    notice = next(i for i, line in enumerate(lines) if " running: " in line)
    # Each progress line, above and below the notice, ends with its own count.
    progress = [
        line for line in lines[:notice] + lines[notice + 1 :] if "[" in line and "]" in line
    ]
    assert len(progress) == 2, lines
    assert all(re.search(r"\[ ?[12]/2\]$", line) for line in progress), lines


def test_a_short_run_says_nothing_about_running_scripts(px: ExecPytester) -> None:
    px.script("quick_script.py", "import time\ntime.sleep(1)\n")
    result = px.run("--exec-parallel")
    result.assert_outcomes(passed=1)
    assert " running: " not in result.stdout.str()


def test_report_to_an_unwritable_path_is_a_usage_error(px: ExecPytester) -> None:
    px.script("quick_script.py", "")
    result = px.run("--exec-report", str(px.path / "missing" / "results.jsonl"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--exec-report: cannot write *results.jsonl*"])


def test_live_lines_start_a_line_of_their_own_after_progress_dots(px: ExecPytester) -> None:
    px.script("a_script.py", "print('a 1')\n")
    for name in "bcd":
        px.script(f"{name}_script.py", f"import time\ntime.sleep(0.5)\nprint('{name} 1')\n")
    result = px.run("-q", "--exec-parallel", "--exec-workers", "1", "--exec-live")
    result.assert_outcomes(passed=4)
    for name in "abcd":
        assert _live_lines(result, f"{name}_script.py") == [f"{name} 1"], result.outlines


def test_live_output_of_a_retried_script_keeps_attempts_apart(px: ExecPytester, mode: Mode) -> None:
    px.script(
        "flaky_script.py",
        """\
        # pytest.mark.exec(max_runs=2)
        import sys
        print("attempt, no newline", end="")
        sys.exit(1)
        """,
    )
    result = px.run(*mode, "--exec-live")
    result.assert_outcomes(failed=1)
    assert _live_lines(result, "flaky_script.py") == ["attempt, no newline"] * 2


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


@pytest.mark.parametrize("key", ["exec_running_notice_after", "exec_stop_report_after"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_notice_time_is_a_usage_error_naming_the_key(
    px: ExecPytester, key: str, value: str
) -> None:
    px.script("quick_script.py", "")
    result = px.run_inprocess("-o", f"{key}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ini option {key!r}" in result.stderr.str()
    assert value in result.stderr.str()
