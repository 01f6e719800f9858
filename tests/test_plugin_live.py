"""What shows while scripts run: live output (``--exec-live``) and the notice naming scripts
that run long."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import PEAK_MEMORY_CONFTEST, ExecPytester, Mode


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
    # flush: on a pipe Python buffers stdout, so unflushed 'one' could come after 'two'. The
    # pause: two lines on two pipes that are both waiting when the run reads come in no set
    # order (seen once on CI's py313); a line shown live is shown before a later one is made.
    px.script(
        "a_script.py",
        "import sys, time\nprint('one', flush=True)\ntime.sleep(0.3)\n"
        "print('two', file=sys.stderr)\n",
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


# 200 MB in lines of 100 bytes, as fast as the script can write them.
FLOOD_SCRIPT = """\
# pytest.mark.exec(timeout=30)
import sys
block = (b"x" * 99 + b"\\n") * 10_000
for _ in range(200):
    sys.stdout.buffer.write(block)
"""


FLOOD_LINES = 2_000_000


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


# -- the running notice -------------------------------------------------------------------------


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
