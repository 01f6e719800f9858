"""The outcome table: each way a script can end, as the terminal and junit show it."""

from __future__ import annotations

from conftest import ExecPytester, Mode

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
