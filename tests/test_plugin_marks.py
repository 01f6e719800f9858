"""Marks: in-script ``# pytest.mark`` lines, conftest-added marks, and the exec marker's checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

# The script leaves a file behind if it runs: proof that a skipped script never started.
RAN = "open(__file__ + '.ran', 'w').close()\n"


def test_exec_marker_is_registered_with_its_help_line(px: ExecPytester) -> None:
    from pytest_codomyrmex_exec.plugin.marks import EXEC_KEYWORDS

    result = px.run_inprocess("--markers")
    result.stdout.fnmatch_lines([f"@pytest.mark.exec({', '.join(EXEC_KEYWORDS)}): *"])


def test_in_script_exec_mark_sets_the_timeout(px: ExecPytester) -> None:
    px.script(
        "sleepy_script.py",
        """\
        # pytest.mark.exec(priority=-5, timeout=0.5)
        import time
        time.sleep(30)
        """,
    )
    result = px.run("--strict-markers", "--exec-timeout", "20")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sleepy_script.py timed out after 0.5 s*"])


@pytest.mark.modes("inline", "async")
def test_skip_and_skipif_marks_never_start_the_script(px: ExecPytester, mode: Mode) -> None:
    px.script("gpu_script.py", '# pytest.mark.skip(reason="needs a GPU")\n' + RAN)
    px.script("win_script.py", '# pytest.mark.skipif(True, reason="not on this OS")\n' + RAN)
    px.script("other_script.py", '# pytest.mark.skipif(False, reason="never")\n' + RAN)
    px.script("plain_script.py")  # with --exec-parallel, the only one not run inline
    result = px.run("-rs", *mode)
    result.assert_outcomes(skipped=2, passed=2)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED [[]1[]] gpu_script.py*: needs a GPU",
            "SKIPPED [[]1[]] win_script.py*: not on this OS",
        ]
    )
    assert sorted(p.name for p in px.path.glob("*.ran")) == ["other_script.py.ran"]


@pytest.mark.modes("inline", "async")
def test_xfail_marks(px: ExecPytester, mode: Mode) -> None:
    px.script("known_script.py", '# pytest.mark.xfail(reason="known bug")\nraise SystemExit(2)\n')
    px.script("fixed_script.py", '# pytest.mark.xfail(reason="was a bug")\n')
    px.script("strict_script.py", '# pytest.mark.xfail(reason="was a bug", strict=True)\n')
    px.script("notrun_script.py", '# pytest.mark.xfail(run=False, reason="hangs")\n' + RAN)
    px.script("plain_script.py")  # with --exec-parallel, the only one not run inline
    result = px.run("-rxXf", *mode, *px.junit_args())
    result.assert_outcomes(xfailed=2, xpassed=1, failed=1, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "XFAIL known_script.py::known_script - known bug",
            "XPASS fixed_script.py::fixed_script - was a bug",
            "FAILED strict_script.py::strict_script*XPASS(strict)*was a bug*",
            # pytest 9.2 says "XFAIL at setup of ...", earlier ones "XFAIL ..."
            "XFAIL *notrun_script.py::notrun_script - *hangs*",
        ]
    )
    assert not list(px.path.glob("*.ran"))
    cases = px.junit_by_name()
    assert cases["strict_script"].outcome == "failed"
    assert cases["known_script"].outcome == "skipped"


def test_custom_in_script_mark_selects_with_dash_m(px: ExecPytester) -> None:
    px.ini(markers="slow: takes a while")
    px.script("slow_script.py", "# pytest.mark.slow\n" + RAN)
    px.script("quick_script.py", RAN)
    result = px.run("-m", "not slow", "--strict-markers")
    result.assert_outcomes(passed=1, deselected=1)
    assert [p.name for p in px.path.glob("*.ran")] == ["quick_script.py.ran"]


@pytest.mark.parametrize(
    "line",
    [
        '# pytest.mark.exec(timeout=__import__("os").system("touch pwned"))',
        '# pytest.mark.skipif(__import__("os").system("touch pwned") == 0, reason="x")',
        "# pytest.mark.exec(env={'A': open('pwned', 'w').name})",
        "# pytest.mark.exec(args=[f\"{open('pwned', 'w')}\"])",
        "# pytest.mark.exec(**{'timeout': open('pwned', 'w')})",
        "# pytest.mark.exec(timeout=(lambda: open('pwned', 'w'))())",
    ],
)
def test_mark_arguments_are_never_evaluated(px: ExecPytester, line: str) -> None:
    px.script("other_script.py", RAN)
    px.script("evil_script.py", f"print('first')\n\n{line}\n" + RAN)
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting evil_script.py*", "*evil_script.py:3: *"])
    assert not (px.path / "pwned").exists()
    assert not list(px.path.glob("*.ran")), "nothing runs after a collection error"


@pytest.mark.parametrize(
    "line",
    [
        "# pytest.mark.exec(timeout=",
        "# pytest.mark.exec(timeout=1",
        "# pytest.mark.",
        "# pytest.mark.exec timeout=1",
        "# pytest.mark.9lives",
        "# pytest.mark.exec(timeout=1) trailing",
        "# pytest.mark.exec(env={[1]: 'x'})",
        "# pytest.mark.exec(args={[1], [2]})",
        "# pytest.mark._private",
        "# pytest.mark.exec(timeout=1)(priority=2)",
        "# pytest.mark.exec(timeout=1, timeout=2)",
    ],
)
def test_malformed_mark_line_is_a_collection_error_naming_file_and_line(
    px: ExecPytester, line: str
) -> None:
    px.script("good_script.py", "# pytest.mark.exec(timeout=5)\n")
    px.script("bad_script.py", f"import sys\n# pytest.mark.exec(priority=1)\n{line}\n")
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting bad_script.py*", "*bad_script.py:3: *"])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_unknown_in_script_mark_under_strict_markers_names_file_and_line(
    px: ExecPytester,
) -> None:
    px.script("typo_script.py", "\n# pytest.mark.slwo\n")
    result = px.run_inprocess("--strict-markers")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*typo_script.py:2: *slwo*"])


@pytest.mark.modes("inline", "async")
def test_conftest_added_exec_marks_apply_and_beat_the_file(px: ExecPytester, mode: Mode) -> None:
    px.conftest(
        """\
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                if item.name.startswith("nightly"):
                    item.add_marker(pytest.mark.exec(timeout=0.5))
        """
    )
    sleeper = "import time\ntime.sleep(30)\n"
    px.script("nightly_script.py", sleeper)
    px.script("nightly_marked_script.py", "# pytest.mark.exec(timeout=20)\n" + sleeper)
    px.script("daily_script.py", "")
    result = px.run(*mode)
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*nightly_script.py timed out after 0.5 s*",
            "*nightly_marked_script.py timed out after 0.5 s*",
        ]
    )


@pytest.mark.parametrize(
    ("mark", "named"),
    [
        ("exec(timout=1)", "unknown keyword 'timout'"),
        ("exec(timeout='1')", "timeout='1'"),
        ("exec(timeout=-1)", "timeout=-1"),
        ("exec(priority=1.5)", "priority=1.5"),
        ("exec(priority=True)", "priority=True"),
        ("exec(env={'A': 1})", "env="),
        ("exec(env=['A'])", "env="),
        ("exec(cwd=3)", "cwd=3"),
        ("exec(memory_limit_mb=0)", "memory_limit_mb=0"),
        ("exec(args='--flag')", "args='--flag'"),
        ("exec(allowed_exit_codes=[])", "allowed_exit_codes=[]"),
        ("exec(allowed_exit_codes=[0, 'x'])", "allowed_exit_codes="),
        ("exec(max_runs=0)", "max_runs=0"),
        ("exec(5)", "positional"),
    ],
)
def test_bad_exec_mark_is_an_error_naming_the_script(
    px: ExecPytester, mark: str, named: str
) -> None:
    px.script("bad_script.py", f"# pytest.mark.{mark}\n" + RAN)
    px.script("good_script.py", "")
    result = px.run_inprocess("-rE")
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of script bad_script.py*",
            f"bad_script.py::bad_script: exec mark*{named}*",
            "ERROR bad_script.py::bad_script - bad_script.py::bad_script: exec mark*",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert not list(px.path.glob("*.ran"))


@pytest.mark.modes("inline", "async")
def test_bad_conftest_exec_mark_is_an_error_naming_the_script(px: ExecPytester, mode: Mode) -> None:
    px.conftest(
        """\
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                if item.name == "bad_script":
                    item.add_marker(pytest.mark.exec(timeout="soon"))
        """
    )
    px.script("bad_script.py", RAN)
    px.script("good_script.py", "")
    result = px.run("-rE", *mode)
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(["bad_script.py::bad_script: exec mark: timeout='soon' is not *"])
    assert not list(px.path.glob("*.ran"))


def test_a_mark_value_no_backend_can_carry_is_an_error_naming_script_and_mark(
    px: ExecPytester, mode: Mode
) -> None:
    # A lone surrogate broke the launch ("the engine broke", a traceback, or a warm pass);
    # 10**30 broke the Dask connection. Both are refused before anything starts.
    px.script("surrogate_script.py", '# pytest.mark.exec(args=["\\udc80"])\n' + RAN)
    px.script("huge_script.py", f"# pytest.mark.exec(priority={10**30})\n" + RAN)
    px.script("good_script.py", "")
    result = px.run("-rE", *mode)
    result.assert_outcomes(errors=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "surrogate_script.py::surrogate_script: exec mark: args=* is not valid: "
            "args must be valid Unicode text*",
            "huge_script.py::huge_script: exec mark: priority=* is not valid: "
            "priority must be from -2147483648 to 2147483647*",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert not list(px.path.glob("*.ran"))


# -- marks are comments, read as Python reads the file -----------------------------------------


def test_a_mark_on_the_first_line_after_a_utf8_bom_counts(px: ExecPytester) -> None:
    (px.path / "bom_script.py").write_bytes(
        b"\xef\xbb\xbf# pytest.mark.skip(reason='after a BOM')\n" + RAN.encode()
    )
    result = px.run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] bom_script.py*: after a BOM"])
    assert not list(px.path.glob("*.ran"))


def test_mark_like_lines_inside_strings_are_not_marks(px: ExecPytester) -> None:
    px.script(
        "documented_script.py",
        '''\
        """How to skip a script: put this line at the top of it:

        # pytest.mark.skip(reason="in the docstring")
        """
        USAGE = """
        # pytest.mark.xfail(reason="in a string literal")
        """
        TEMPLATE = '\\
        # pytest.mark.this is no mark( at all'
        # pytest.mark.slow
        open(__file__ + ".ran", "w").close()
        ''',
    )
    result = px.run("-m", "slow", "--strict-markers", "-o", "markers=slow: a real mark")
    result.assert_outcomes(passed=1)
    assert [p.name for p in px.path.glob("*.ran")] == ["documented_script.py.ran"]


def test_a_coding_cookie_decodes_the_marks(px: ExecPytester) -> None:
    source = (
        "# -*- coding: latin-1 -*-\n"
        '# pytest.mark.exec(args=["café"], env={"WHO": "Zoë"})\n'
        "import os, sys\n"
        'assert sys.argv[1:] == ["café"], ascii(sys.argv)\n'
        'assert os.environ["WHO"] == "Zoë", ascii(os.environ["WHO"])\n'
    )
    (px.path / "latin_script.py").write_bytes(source.encode("latin-1"))
    result = px.run("-rA")
    result.assert_outcomes(passed=1)


def test_malformed_mark_after_a_bom_names_the_right_line(px: ExecPytester) -> None:
    (px.path / "bad_script.py").write_bytes(b"\xef\xbb\xbfimport sys\n# pytest.mark.exec(\n")
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*bad_script.py:2: malformed mark line*"])


def test_a_file_that_does_not_tokenize_keeps_its_marks(px: ExecPytester) -> None:
    # Before the broken point: read from tokens, so the skip holds and nothing runs.
    px.script(
        "unterminated_script.py",
        "# pytest.mark.skip(reason='not finished')\n" + RAN + "text = '''never closed\n",
    )
    # After it (a bad dedent on line 3): read as text lines, as in a file that tokenizes.
    px.script(
        "dedent_script.py",
        "if True:\n        x = 1\n    y = 2\n# pytest.mark.xfail(reason='known broken')\n",
    )
    result = px.run("-rsx")
    result.assert_outcomes(skipped=1, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED [[]1[]] unterminated_script.py*: not finished",
            "XFAIL *dedent_script.py::dedent_script - known broken",
        ]
    )
    assert not list(px.path.glob("*.ran"))


def test_reading_the_marks_of_5000_scripts_takes_under_two_seconds(tmp_path: Path) -> None:
    from pytest_codomyrmex_exec.plugin.marks import read_script_marks

    # Marks on top, then a docstring and a body: only the head is tokenized.
    marked = '# pytest.mark.exec(timeout=5, env={"A": "1"})\n"""Doc."""\n' + "x = 1\n" * 200
    paths = []
    for i in range(5000):
        path = tmp_path / f"s{i:04}_script.py"
        path.write_text(marked if i % 2 else "import sys\nprint(sys.argv)\n" * 100)
        paths.append(path)
    timings = []
    for _ in range(3):  # the best of three: the machine may be busy with other work
        started = time.monotonic()
        marks = [read_script_marks(path) for path in paths]
        timings.append(time.monotonic() - started)
    assert sum(len(found) for found in marks) == 2500
    assert min(timings) < 2.0, timings  # about 0.4 s on an idle laptop


# -- values execve cannot take are short errors naming the mark ---------------------------------


@pytest.mark.parametrize(
    ("mark", "complaint"),
    [
        pytest.param('exec(env={"A=B": "1"})', "env={'A=B': '1'} is not valid", id="env-key-eq"),
        pytest.param(
            'exec(env={"A": "x\\x00y"})', "env={'A': 'x\\x00y'} is not valid", id="nul-env"
        ),
        pytest.param('exec(args=["a\\x00b"])', "args=['a\\x00b'] is not valid", id="nul-arg"),
    ],
)
@pytest.mark.modes("inline", "async")
def test_env_and_args_execve_refuses_are_short_errors_naming_the_mark(
    px: ExecPytester, mark: str, complaint: str, mode: Mode
) -> None:
    px.script("bad_script.py", f"# pytest.mark.{mark}\nopen('ran', 'w').close()\n")
    px.script("fine_script.py")
    result = px.run(*mode)
    result.assert_outcomes(errors=1, passed=1)
    section = px.section(result, "ERROR at setup of script bad_script.py")
    text = "\n".join(section)
    assert f"bad_script.py::bad_script: exec mark: {complaint}" in text
    assert "subprocess.py" not in result.stdout.str()
    assert len([line for line in section if line.strip()]) <= 2, section
    assert not (px.path / "ran").exists()
