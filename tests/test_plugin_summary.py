"""The run summary (``=== codomyrmex-exec: script runs ===``): counts, script time, speed-up,
the slowest scripts and those that hit their limit."""

from __future__ import annotations

import re

import pytest
from conftest import (
    AFTER_THE_RUN,
    SUMMARY_LINE,
    ExecPytester,
    Mode,
    summary_lines,
    write_mixed_project,
)


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


def test_under_xdist_the_wall_time_leaves_out_the_workers_start(px: ExecPytester) -> None:
    # Workers that take 3 s to start, then two scripts that end at once: the wall time is
    # the scripts' (as a lone session's starts after collection), not the workers' start-up,
    # which had the headline call a real speed-up "0.3x".
    px.pytester.makeconftest(
        "import time\n\n"
        "def pytest_configure(config):\n"
        "    if hasattr(config, 'workerinput'):\n"
        "        time.sleep(3)\n"
    )
    px.script("one_script.py", "")
    px.script("two_script.py", "")
    result = px.run("-n", "2")
    result.assert_outcomes(passed=2)
    match = SUMMARY_LINE.search(result.stdout.str())
    assert match, result.stdout.str()
    assert float(match[3]) < 2.5, f"the workers' 3 s start-up counted as the scripts': {match[0]}"
