"""The outcome table: each way a script can end, as the terminal and junit show it.

Also what a failure shows (each --tb style, the short summary line), skip exit codes, a
script that cannot start, and junit's properties.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode, write_mixed_project

CANCELLING_HOOK = """\
def pytest_exec_script_finished(item, result):
    if item.name == "cancel_plain_script":
        result["status"] = "cancelled"
    elif item.name == "cancel_why_script":
        result["status"] = "cancelled"
        result["error"] = "network flaky"
"""

EXPECTED = {
    "pass_script": "passed",
    "fail_script": "failed",
    "segv_script": "failed",
    "timeout_script": "failed",
    "memory_script": "failed",
    "nocwd_script": "error",
    "cancel_plain_script": "skipped",
    "cancel_why_script": "skipped",
    "binary_pass_script": "passed",
    "binary_fail_script": "failed",
}


def write_outcome_project(px: ExecPytester) -> None:
    px.conftest(CANCELLING_HOOK)
    px.script(
        "pass_script.py",
        """\
        import sys
        print("hello from stdout")
        print("note on stderr", file=sys.stderr)
        """,
    )
    px.script(
        "fail_script.py",
        """\
        import sys
        print("partial output")
        for i in range(100):
            print(f"noise {i}", file=sys.stderr)

        def compute():
            raise ValueError("boom 42")

        compute()
        """,
    )
    px.script(
        "segv_script.py",
        "import os, signal\nprint('about to crash', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    px.script(
        "timeout_script.py",
        # 2 s, not less: the line must be out before the timeout, and a loaded machine can
        # take a good part of a second just to start the interpreter.
        """\
        # pytest.mark.exec(timeout=2)
        import time
        print("started, now hanging", flush=True)
        time.sleep(30)
        """,
    )
    px.script(
        "memory_script.py",
        "# pytest.mark.exec(memory_limit_mb=300)\nblock = bytearray(900 * 1024 * 1024)\n",
    )
    px.script("nocwd_script.py", '# pytest.mark.exec(cwd="missing")\n')
    px.script("cancel_plain_script.py", "print('ran')\n")
    px.script("cancel_why_script.py", "raise SystemExit(1)\n")
    junk = r"b'bad \xff\xfe bytes \x80 nul \x00 esc \x1b[31m red \xc3 end\n'"
    px.script(
        "binary_pass_script.py",
        f"import sys\nsys.stdout.buffer.write({junk})\nsys.stderr.buffer.write({junk})\n",
    )
    px.script(
        "binary_fail_script.py",
        f"import sys\nsys.stderr.buffer.write({junk})\nsys.stderr.flush()\nraise SystemExit(9)\n",
    )


def test_outcome_table(px: ExecPytester, mode: Mode) -> None:
    write_outcome_project(px)
    result = px.run("-rA", "-o", "junit_logging=all", *mode, *px.junit_args())
    everything = "\n".join(result.outlines + result.errlines)
    assert "INTERNALERROR" not in everything
    result.assert_outcomes(passed=2, failed=5, errors=1, skipped=2)
    assert {case.name: case.outcome for case in px.junit()} == EXPECTED

    # The short summary: one line each, in the script's own words (its last error line).
    result.stdout.fnmatch_lines_random(
        [
            "PASSED pass_script.py::pass_script",
            "FAILED fail_script.py::fail_script - ValueError: boom 42",
            "FAILED segv_script.py::segv_script - killed by signal SIGSEGV",
            "FAILED timeout_script.py::timeout_script - timed out after 2 s",
            "FAILED memory_script.py::memory_script - memory limit of 300 MB exceeded*",
            "ERROR nocwd_script.py::nocwd_script - nocwd_script.py could not run: "
            "working directory does not exist: *missing",
            "SKIPPED [[]1[]] cancel_plain_script.py*: cancelled",
            "SKIPPED [[]1[]] cancel_why_script.py*: cancelled: network flaky",
            "FAILED binary_fail_script.py::binary_fail_script - "
            "bad \ufffd\ufffd bytes \ufffd nul \\x00 esc \\x1b[[]31m red \ufffd end",
        ]
    )

    # A failure: the header line, then the stderr section with the traceback, shown once.
    failure = px.section(result, "script fail_script.py")
    assert failure == [failure[0]]
    assert failure[0].startswith("fail_script.py failed: exit code 1 after")
    stderr_section = result.outlines.index("noise 0")
    assert "Captured stderr call" in result.outlines[stderr_section - 1]
    assert result.outlines.count("ValueError: boom 42") == 1
    assert "noise 99" in result.outlines
    result.stdout.fnmatch_lines(
        ["*- Captured stdout call -*", "partial output", "*- Captured stderr call -*", "noise 0"]
    )

    # Output so far of a timed-out script, and the crash's own output.
    timeout_report = px.section(result, "script timeout_script.py")
    assert timeout_report[0] == "timeout_script.py timed out after 2 s"
    assert timeout_report[1:] == [
        "raise the limit with an exec(timeout=SECONDS) mark, --exec-timeout SECONDS "
        "or the ini key exec_timeout (0 = no limit)"
    ]
    timeout_section = result.outlines.index("started, now hanging")
    assert "Captured stdout call" in result.outlines[timeout_section - 1]

    # Passed scripts show their output in the usual sections (-rA).
    passed = px.section(result, "script pass_script.py")
    assert passed == []  # straight into the captured sections
    result.stdout.fnmatch_lines(
        [
            "*_ script pass_script.py _*",
            "*- Captured stdout call -*",
            "hello from stdout",
            "*- Captured stderr call -*",
            "note on stderr",
        ]
    )

    # Bytes that are not UTF-8 are shown with replacement characters, never a crash.
    result.stdout.fnmatch_lines(["bad \ufffd\ufffd bytes \ufffd nul * red \ufffd end"])
    binary = px.junit_by_name()["binary_fail_script"]
    assert "bad \ufffd\ufffd bytes" in binary.messages[0]


# -- the outcome follows the cause, never the words -----------------------------------------

REWORDING_HOOK = """\
def pytest_exec_script_finished(item, result):
    if result["status"] != "passed":
        result["error"] = "words chosen by someone else"
"""

CAUSES = {  # script: (cause in the results file, pytest's outcome), as docs/plugin.md says
    "exit_script": ("exit_code", "failed"),
    "skip77_script": ("exit_code", "skipped"),
    "segv_script": ("signal", "failed"),
    "timeout_script": ("timeout", "failed"),
    "memory_script": ("memory_limit", "failed"),
    "nocwd_script": ("missing_path", "error"),
    "stdin_dir_script": ("missing_path", "error"),
    "nopython_script": ("start_failed", "error"),
    "pass_script": (None, "passed"),
}


def test_outcome_follows_the_cause_not_the_words(px: ExecPytester, mode: Mode) -> None:
    px.ini(exec_skip_exit_codes="77")
    px.conftest(REWORDING_HOOK)
    px.script("exit_script.py", "raise SystemExit(3)\n")
    px.script("skip77_script.py", "raise SystemExit(77)\n")
    px.script("segv_script.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    px.script("timeout_script.py", "# pytest.mark.exec(timeout=1)\nimport time\ntime.sleep(30)\n")
    px.script(
        "memory_script.py",
        "# pytest.mark.exec(memory_limit_mb=300)\nblock = bytearray(900 * 1024 * 1024)\n",
    )
    px.script("nocwd_script.py", '# pytest.mark.exec(cwd="missing")\n')
    (px.path / "a_folder").mkdir()
    px.script("stdin_dir_script.py", '# pytest.mark.exec(stdin_file="a_folder")\n')
    px.script("nopython_script.py", '# pytest.mark.exec(python="/no/such/python3")\n')
    px.script("pass_script.py", "")
    result = px.run(*mode, *px.report_args(), *px.junit_args())
    assert "INTERNALERROR" not in result.stdout.str()
    lines = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    found = {line["nodeid"].split("::")[-1]: (line["cause"], line["outcome"]) for line in lines}
    assert found == CAUSES
    assert {case.name: case.outcome for case in px.junit()} == {
        name: outcome for name, (_, outcome) in CAUSES.items()
    }
    # The words are the hook's, wherever the report shows them; the outcomes did not move.
    result.stdout.fnmatch_lines_random(
        [
            "*timeout_script.py words chosen by someone else",
            "*nocwd_script.py could not run: words chosen by someone else",
        ]
    )


# -- --tb styles: the traceback once ------------------------------------------------------------

TRACEBACK_SCRIPT = """\
import sys
for i in range(50):
    print(f"noise {i}", file=sys.stderr)
def inner():
    raise ValueError("boom 42")
inner()
"""


def failures_part(result: pytest.RunResult) -> list[str]:
    """The lines of the FAILURES part of the output (none when pytest printed none)."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if line.strip("= ") == "FAILURES"]
    if not starts:
        return []
    part = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("="):
            break
        part.append(line)
    return part


@pytest.mark.modes("inline", "xdist")
def test_every_tb_style_shows_the_traceback_once(px: ExecPytester, mode: Mode) -> None:
    px.script("fail_script.py", TRACEBACK_SCRIPT)
    for style in ("line", "short", "long", "native", "no"):
        result = px.run(f"--tb={style}", "--exec-summary=no", "-rf", *mode)
        result.assert_outcomes(failed=1)
        part = failures_part(result)
        shown = [line for line in part if "ValueError: boom 42" in line]
        if style == "no":
            assert part == [], "--tb=no prints no failure"
        else:
            assert len(shown) == 1, (style, part)
        if style in ("short", "long", "native"):
            # Under the header, the captured stderr: all of it, the traceback at its end.
            assert "noise 0" in part, style
        # The short summary line names the error whatever the style.
        result.stdout.fnmatch_lines(["FAILED fail_script.py::fail_script - ValueError: boom 42*"])


def test_without_a_stderr_section_the_tail_is_under_the_header(px: ExecPytester) -> None:
    px.script("fail_script.py", TRACEBACK_SCRIPT)
    for style, tail_lines in (("short", 6), ("long", 40)):
        result = px.run(f"--tb={style}", "--show-capture=stdout", "--exec-summary=no")
        result.assert_outcomes(failed=1)
        failure = px.section(result, "script fail_script.py")
        assert failure[0].startswith("fail_script.py failed: exit code 1 after"), style
        assert len(failure) == 1 + tail_lines, (style, failure)
        assert failure[-1] == "ValueError: boom 42", style
        assert "Captured stderr" not in result.stdout.str()


# -- stdin_file that would block --------------------------------------------------------------


def test_a_stdin_file_that_would_block_is_an_error_saying_what_it_is(
    px: ExecPytester, mode: Mode
) -> None:
    os.mkfifo(px.path / "pipe")  # no writer: opening it for reading would wait forever
    (px.path / "zeros").symlink_to("/dev/zero")  # never ends: reading it would never stop
    reader = "import sys\nsys.stdin.read()\n"
    px.script("fifo_script.py", "# pytest.mark.exec(stdin_file='pipe')\n" + reader)
    px.script("zeros_script.py", "# pytest.mark.exec(stdin_file='zeros')\n" + reader)
    px.script("ok_script.py", "")  # one that starts, so the mode is seen to run
    result = px.run("-rE", *mode, timeout=60)
    result.assert_outcomes(errors=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR fifo_script.py::fifo_script - fifo_script.py could not run: "
            "stdin_file is not a regular file (a FIFO): */pipe",
            "ERROR zeros_script.py::zeros_script - zeros_script.py could not run: "
            "stdin_file is not a regular file (a character device): */zeros",
        ]
    )


# -- a script that cannot start is an error, inline and in parallel -----------------------------

# A conftest that gives one script an argument of 3 MB: execve refuses it (E2BIG).
HUGE_ARGS = """\
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        if item.name == "huge_args_script":
            item.add_marker(pytest.mark.exec(args=["x" * 3_000_000]))
"""


def test_a_script_that_cannot_start_is_an_error(px: ExecPytester, mode: Mode) -> None:
    # An "interpreter" whose shebang points nowhere: exec fails with ENOENT.
    broken = px.path / "broken-python"
    broken.write_text("#!/nonexistent/python\n")
    broken.chmod(0o755)
    px.conftest(HUGE_ARGS)
    px.script("no_python_script.py", f"# pytest.mark.exec(python={str(broken)!r})\n")
    px.script("huge_args_script.py")
    px.script("fine_script.py")
    result = px.run("-rA", *mode, *px.junit_args())
    result.assert_outcomes(errors=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR no_python_script.py::no_python_script - *could not run*",
            "ERROR huge_args_script.py::huge_args_script - *could not run*",
            "*no_python_script.py could not run: cannot start: *the interpreter its '#!' line "
            "names does not*",
            "*huge_args_script.py could not run: cannot start: *Argument list too long*",
        ]
    )
    cases = px.junit_by_name()
    assert cases["no_python_script"].outcome == "error"
    assert cases["huge_args_script"].outcome == "error"
    assert "Traceback" not in result.stdout.str()


# -- the short failure line ---------------------------------------------------------------------


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


# -- --tb styles --------------------------------------------------------------------------------

FAILING = """\
import sys
for i in range(30):
    print(f"noise {i}", file=sys.stderr)
def inner():
    raise ValueError("boom 42")
inner()
"""


def write_failures(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="examples/*.py")
    px.script("examples/fail.py", FAILING)
    px.script("examples/slow.py", "# pytest.mark.exec(timeout=0.5)\nimport time\ntime.sleep(30)\n")
    px.script("examples/ok.py", "print('fine')\n")


@pytest.mark.modes("inline", "async", "xdist")
def test_tb_line_is_one_line_per_failing_script(px: ExecPytester, mode: Mode) -> None:
    write_failures(px)
    result = px.run("--tb=line", "--exec-summary=no", *mode)
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    failures = out.split("= FAILURES =", 1)[1].split("short test summary", 1)[0]
    lines = [
        line
        for line in failures.splitlines()
        if line.strip() and not line.startswith(("=", "[gw"))  # [gw0]: xdist's worker line
    ]
    # path:line (the raising frame of the script, for editors), the error and the exit code.
    assert sorted(lines) == [
        "examples/fail.py:5: ValueError: boom 42 (exit code 1)",
        # No line is known for a timeout; pytest-xdist's copy of the location always has one.
        "examples/slow.py:0: timed out after 0.5 s"
        if mode.xdist
        else "examples/slow.py: timed out after 0.5 s",
    ]
    assert "noise" not in out, "the captured output is left out with --tb=line"
    result.stdout.fnmatch_lines(
        ["FAILED examples/fail.py::fail - ValueError: boom 42 (exit code 1)"]
    )


@pytest.mark.modes("inline", "async")
def test_tb_short_long_native_and_no(px: ExecPytester, mode: Mode) -> None:
    write_failures(px)
    result = px.run("--tb=short", "--exec-summary=no", *mode)
    short = px.section(result, "script examples/fail.py")
    assert short[0].startswith("examples/fail.py failed: exit code 1 after")
    # The traceback is in the captured stderr section, so not under the header as well.
    assert short == [short[0]]
    assert "Captured stderr call" in result.stdout.str()

    for style in ("long", "native"):  # auto is long for a script (pytest's own default)
        result = px.run(f"--tb={style}", "--exec-summary=no", *mode)
        full = px.section(result, "script examples/fail.py")
        assert full[0].startswith("examples/fail.py failed: exit code 1 after"), style
        # The whole stderr follows once, in the captured section: the traceback is not
        # repeated under the header (issue 9), and nothing of it is cut (the long report).
        out = result.stdout.str()
        assert out.count("Traceback (most recent call last):") == 1, style
        assert "noise 29" in out, style
        assert "ValueError: boom 42" in out.split("Captured stderr call", 1)[1], style
        # The timeout says how to raise the limit: mark keyword, option and ini key.
        timeout = px.section(result, "script examples/slow.py")
        assert timeout[0] == "examples/slow.py timed out after 0.5 s"
        assert "exec(timeout=SECONDS)" in timeout[1]
        assert "--exec-timeout" in timeout[1]
        assert "exec_timeout" in timeout[1]

    quiet = px.run("--tb=no", "--exec-summary=no", *mode)
    quiet.assert_outcomes(passed=1, failed=2)
    assert "FAILURES" not in quiet.stdout.str()
    # Only pytest's one-line short summary names the error, as it does for any test.
    assert [line for line in quiet.outlines if "boom 42" in line] == [
        "FAILED examples/fail.py::fail - ValueError: boom 42"
    ]


# -- skip exit codes ----------------------------------------------------------------------------


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


# -- junit properties ---------------------------------------------------------------------------


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
