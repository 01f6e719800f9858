"""Collection: which files become script items, how selection applies, and that none is imported."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from importlib.metadata import entry_points

import pytest
from conftest import ExecPytester, Mode

# A script whose top level leaves a trace: if collection imported or ran it, the file appears.
TRACE_BODY = """\
import pathlib
pathlib.Path(__file__).with_suffix(".ran").write_text("ran")
"""


def collected(result: pytest.RunResult) -> list[str]:
    """Node ids printed by ``--collect-only -q``."""
    return [line for line in result.outlines if "::" in line]


def test_entry_point_points_at_the_plugin_module() -> None:
    points = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert points.get("codomyrmex_exec") == "pytest_codomyrmex_exec.plugin"


def test_plugin_loads_without_being_asked_for(px: ExecPytester) -> None:
    px.script("hello_script.py", "print('hello')\n")
    version = px.run("--version", "--version")
    version.stdout.fnmatch_lines(
        ["*pytest-codomyrmex-exec-* at *pytest_codomyrmex_exec*plugin*__init__.py"]
    )
    result = px.run("-v")
    result.stdout.fnmatch_lines(["hello_script.py::hello_script PASSED*"])
    result.assert_outcomes(passed=1)


def test_default_pattern_collects_script_files_only(px: ExecPytester) -> None:
    px.script("a_script.py", TRACE_BODY)
    px.script("sub/b_script.py", TRACE_BODY)
    px.script("pkg/__init__.py", "")
    px.script("pkg/c_script.py", TRACE_BODY)
    px.script("script.py", TRACE_BODY)
    px.script("notes_script.txt", TRACE_BODY)
    px.script("helpers.py", TRACE_BODY)
    px.script("test_plain.py", "def test_x():\n    pass\n")
    result = px.run_inprocess("--collect-only", "-q")
    assert collected(result) == [
        "a_script.py::a_script",
        "pkg/c_script.py::c_script",
        "sub/b_script.py::b_script",
        "test_plain.py::test_x",
    ]
    assert not list(px.path.rglob("*.ran")), "a script ran at collection"


def test_ini_patterns_replace_the_default(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="check_*.py job_*.py")
    px.script("check_disk.py", TRACE_BODY)
    px.script("jobs/job_nightly.py", TRACE_BODY)
    px.script("a_script.py", TRACE_BODY)
    result = px.run_inprocess("--collect-only", "-q")
    assert collected(result) == ["check_disk.py::check_disk", "jobs/job_nightly.py::job_nightly"]


def test_empty_patterns_turn_collection_off(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="")
    px.script("a_script.py", TRACE_BODY)
    px.script("test_plain.py", "def test_x():\n    pass\n")
    result = px.run_inprocess("--collect-only", "-q")
    assert collected(result) == ["test_plain.py::test_x"]


def test_testpaths_norecursedirs_and_ignore(px: ExecPytester) -> None:
    px.ini(testpaths="jobs", norecursedirs="skipme")
    px.script("jobs/a_script.py", TRACE_BODY)
    px.script("jobs/skipme/b_script.py", TRACE_BODY)
    px.script("jobs/ignored/c_script.py", TRACE_BODY)
    px.script("elsewhere/d_script.py", TRACE_BODY)
    result = px.run_inprocess("--collect-only", "-q", "--ignore=jobs/ignored")
    assert collected(result) == ["jobs/a_script.py::a_script"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-k", "alpha"], ["alpha_script.py::alpha_script"]),
        (["-k", "not alpha"], ["beta_script.py::beta_script", "gamma_script.py::gamma_script"]),
        (["-m", "slow"], ["gamma_script.py::gamma_script"]),
        (["-m", "not slow"], ["alpha_script.py::alpha_script", "beta_script.py::beta_script"]),
        (
            ["--deselect", "beta_script.py::beta_script"],
            ["alpha_script.py::alpha_script", "gamma_script.py::gamma_script"],
        ),
    ],
)
def test_selection_options(px: ExecPytester, args: list[str], expected: list[str]) -> None:
    px.ini(markers="slow: takes a while")
    px.script("alpha_script.py", TRACE_BODY)
    px.script("beta_script.py", TRACE_BODY)
    px.script("gamma_script.py", "# pytest.mark.slow\n" + TRACE_BODY)
    result = px.run_inprocess("--collect-only", "-q", "--strict-markers", *args)
    assert collected(result) == expected


def test_last_failed_reruns_only_the_failed_script(px: ExecPytester) -> None:
    counting = "open('runs.txt', 'a').write(__file__.rsplit('/', 1)[1] + '\\n')\n"
    px.script("ok_script.py", counting)
    px.script("bad_script.py", counting + "raise SystemExit(1)\n")
    px.run().assert_outcomes(passed=1, failed=1)
    again = px.run("--lf")
    again.assert_outcomes(failed=1)
    assert px.lines("runs.txt") == ["bad_script.py", "ok_script.py", "bad_script.py"]


@pytest.mark.parametrize("where", ["folder", "file"])
def test_scripts_are_never_imported_at_collection(px: ExecPytester, where: str) -> None:
    px.script("jobs/setup_script.py", TRACE_BODY)
    px.script("jobs/report_script.py", "# pytest.mark.exec(timeout=5)\n" + TRACE_BODY)
    # Named on the command line, pytest would make a test module of any .py file.
    args = ["jobs"] if where == "folder" else ["jobs/setup_script.py", "jobs/report_script.py"]
    result = px.run_inprocess("--collect-only", "-q", *args)
    assert sorted(collected(result)) == [
        "jobs/report_script.py::report_script",
        "jobs/setup_script.py::setup_script",
    ]
    assert not list(px.path.rglob("*.ran")), "a script ran at collection"


def test_a_test_module_matching_a_script_pattern_stays_a_test_module(px: ExecPytester) -> None:
    px.script("test_db_script.py", "def test_db():\n    pass\n")
    result = px.run_inprocess("--collect-only", "-q")
    assert collected(result) == ["test_db_script.py::test_db"]


@pytest.mark.modes("inline", "async")
def test_unparsable_script_fails_alone_showing_the_syntax_error(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("a_broken_script.py", "print('fine')\ndef oops(:\n    pass\n")
    (px.path / "c_latin1_script.py").write_bytes(b"# pytest.mark.slow\nprint('caf\xe9')\n")
    px.script("b_good_script.py", "print('fine')\n")
    px.script("test_plain.py", "def test_x():\n    pass\n")
    result = px.run("-rA", *mode)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*a_broken_script.py failed: exit code 1*", "*SyntaxError*"])
    result.stdout.fnmatch_lines(["*c_latin1_script.py failed: exit code 1*", "*SyntaxError*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


@pytest.mark.parametrize("parallel", [(), ("--exec-parallel",)], ids=["inline", "parallel"])
def test_collect_only_runs_nothing(px: ExecPytester, parallel: tuple[str, ...]) -> None:
    px.script("a_script.py", TRACE_BODY)
    result = px.run("--collect-only", "-q", *parallel)
    assert collected(result) == ["a_script.py::a_script"]
    assert not list(px.path.rglob("*.ran"))


@pytest.mark.parametrize("option", ["--setup-plan", "--setup-only"])
@pytest.mark.parametrize("parallel", [(), ("--exec-parallel",)], ids=["inline", "parallel"])
def test_setup_plan_and_setup_only_run_no_script(
    px: ExecPytester, parallel: tuple[str, ...], option: str
) -> None:
    px.script("a_script.py", TRACE_BODY)
    result = px.run(option, *parallel)
    assert result.ret == pytest.ExitCode.OK
    assert not list(px.path.rglob("*.ran"))


@pytest.mark.modes("inline", "async")
def test_collection_error_stops_the_run_unless_told_to_continue(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("a_script.py", TRACE_BODY)
    px.script("b_bad_script.py", "# pytest.mark.exec(timeout=\n")
    stopped = px.run(*mode)
    assert stopped.ret == pytest.ExitCode.INTERRUPTED
    stopped.stdout.fnmatch_lines(["*Interrupted: 1 error during collection*"])
    assert not list(px.path.rglob("*.ran"))
    continued = px.run("--continue-on-collection-errors", *mode)
    continued.assert_outcomes(passed=1, errors=1)
    assert [p.name for p in px.path.rglob("*.ran")] == ["a_script.ran"]


# -- script names that look like node id syntax -------------------------------------------------


@pytest.mark.modes("inline", "async")
def test_a_script_with_brackets_in_its_name_is_rerun_by_last_failed(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("fail[1]_script.py", "import os\nraise SystemExit(int(os.environ['CODE']))\n")
    px.script("ok_script.py", "open('ok.ran', 'a').write('x')\n")
    first = px.run("-rA", *mode)  # CODE unset: KeyError, exit code 1
    first.assert_outcomes(failed=1, passed=1)
    first.stdout.fnmatch_lines(["FAILED fail[[]1[]]_script.py::fail(1)_script - *"])
    again = px.run("--lf", "-rA", *mode)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*"])
    assert (px.path / "ok.ran").read_text() == "x"  # not run the second time


@pytest.mark.modes("inline", "async")
def test_a_script_with_double_colons_in_its_name_is_labelled_by_its_path(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("c::d_script.py", "raise SystemExit(3)\n")
    result = px.run("-rA", *mode, *px.junit_args())
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ script c::d_script.py _*",
            "c::d_script.py failed: exit code 3 after *",
            "FAILED c::d_script.py::c::d_script - exit code 3*",
        ]
    )
    assert [case.outcome for case in px.junit()] == ["failed"]


RUNS_ITS_OWN_TESTS = """\
import sys

import pytest


def test_adds():
    assert 1 + 1 == 2


if __name__ == "__main__":
    with open("depth.txt", "a") as out:
        out.write("ran\\n")
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--junitxml=inner.xml", __file__]))
"""


@pytest.mark.modes("inline", "async-warm")
def test_a_script_that_runs_pytest_on_itself_runs_its_tests_once(
    px: ExecPytester, mode: Mode
) -> None:
    # TheAlgorithms' maths/test_factorial.py ends in pytest.main([__file__]): picked by a
    # script pattern, it ran itself as a script item again, and again, past every timeout.
    px.script("selftest_script.py", RUNS_ITS_OWN_TESTS)
    result = px.run(*mode, "--exec-timeout", "60", *px.junit_args())

    result.assert_outcomes(passed=1)
    assert px.junit_by_name()["selftest_script"].outcome == "passed"
    assert px.lines("depth.txt") == ["ran"]  # the script ran once: no script inside itself
    inner = ET.parse(px.path / "inner.xml").getroot()
    assert [case.get("name") for case in inner.iter("testcase")] == ["test_adds"]
    assert inner.find(".//failure") is None
