"""Checking what scripts print: expectation files, matching, redaction, failures, updates."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import xml.etree.ElementTree as ET

import pytest
from conftest import ExecPytester

MODES = [
    pytest.param([], id="inline"),
    pytest.param(["--exec-parallel", "--exec-backend", "process"], id="process"),
    pytest.param(["--exec-parallel", "--exec-backend", "async"], id="async"),
    pytest.param(["--exec-warm"], id="warm"),
    pytest.param(["-n", "2"], id="xdist"),
    pytest.param(
        ["--exec-parallel", "--exec-workers", "2", "--exec-backend", "dask"],
        id="dask",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("distributed") is None, reason="needs distributed"
        ),
    ),
]


def assert_mode_ran(px: ExecPytester, how: list[str], scripts: int) -> None:
    """The session ran ``scripts`` script items in ``mode``, not a fallback."""
    cases = ET.parse(px.junit_path).getroot().iter("testcase")
    warm = [
        [p.get("value") for p in case.iter("property") if p.get("name") == "warm"] for case in cases
    ]
    assert len(warm) == scripts
    if "--exec-parallel" in how:
        assert px.backend_used() == how[-1]
    else:
        assert not (px.path / "backend.txt").exists()
    if "--exec-warm" in how:
        assert warm == [["warm"]] * scripts
    else:
        assert warm == [[]] * scripts
    records = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    workers = {record["worker"] for record in records}
    assert len(records) == scripts
    if "-n" in how:
        assert workers == {"gw0", "gw1"}
    else:  # where a Dask worker ran a script is on its result, not the report's worker
        assert workers == {None}


def write_matching_project(px: ExecPytester) -> None:
    px.conftest(px.backend_recorder())
    px.ini(exec_redact="\n    ADDR=0x[0-9a-f]+\n    TIME=\\d\\d:\\d\\d:\\d\\d")
    px.script(
        "sub/paths_script.py",
        """\
        import os, sys, tempfile, time
        print("script", __file__)
        print("cwd", os.getcwd())
        print("root", os.path.dirname(os.getcwd()))
        print("tmp", tempfile.gettempdir() + "/cache")
        print("python", sys.executable)
        print("object at", hex(id(object())), "at", time.strftime("%H:%M:%S"))
        """,
    )
    (px.path / "sub/paths_script.stdout").write_text(
        "script [SCRIPT]\ncwd [CWD]\nroot [ROOT]\ntmp [TMP]/cache\npython [PYTHON]\n"
        "object at [ADDR] at [TIME]\n"
    )
    px.script(
        "ansi_script.py",
        """\
        import sys
        sys.stdout.write("\\x1b[1;32mgreen\\x1b[0m bold\\r\\n")
        sys.stdout.write("\\x1b]0;a title\\x07plain\\r\\n")
        """,
    )
    (px.path / "ansi_script.stdout").write_text("green bold\nplain\n")
    px.script(
        "wild_script.py",
        """\
        import random
        print("header")
        for i in range(random.randint(0, 5)):
            print("noise", random.random())
        print("took", random.random(), "s")
        print("footer")
        """,
    )
    (px.path / "wild_script.stdout").write_text("header\n...\ntook [..] s\nfooter\n")
    px.script(
        "stderr_script.py",
        """\
        import sys
        print("fine")
        print("warning: careful", file=sys.stderr)
        """,
    )
    (px.path / "stderr_script.stderr").write_text("warning: careful\n")
    px.script(
        "cli_script.py",
        """\
        # pytest.mark.exec(exit_code=2, args=["--nope"])
        import argparse
        argparse.ArgumentParser(prog="cli").parse_args()
        """,
    )
    (px.path / "cli_script.stderr").write_text(
        "usage: cli [-h]\ncli: error: unrecognized arguments: --nope\n"
    )
    px.script("differ_script.py", 'print("one")\nprint("Two")\nprint("three")\n')
    (px.path / "differ_script.stdout").write_text("one\ntwo\nthree\n")
    px.script("crash_script.py", 'print("before")\nraise SystemExit("gave up")\n')
    (px.path / "crash_script.stdout").write_text("before\nafter\n")


MATCHING_OUTCOMES = {
    "paths_script": "passed",
    "ansi_script": "passed",
    "wild_script": "passed",
    "stderr_script": "passed",
    "cli_script": "passed",
    "differ_script": "failed",
    "crash_script": "failed",
}


@pytest.mark.parametrize("how", MODES)
def test_the_same_output_gives_the_same_outcome_in_every_mode(
    px: ExecPytester, how: list[str]
) -> None:
    write_matching_project(px)
    result = px.run(*how, *px.junit_args(), *px.report_args(), "-rf")
    assert_mode_ran(px, how, scripts=len(MATCHING_OUTCOMES))
    assert {case.name: case.outcome for case in px.junit()} == MATCHING_OUTCOMES
    result.stdout.fnmatch_lines_random(
        [
            "FAILED crash_script.py::crash_script - gave up; stdout differs "
            "from crash_script.stdout at line 2: expected 'after', got nothing",
            "FAILED differ_script.py::differ_script - stdout differs from differ_script.stdout"
            " at line 2: expected 'two', got 'Two'",
        ]
    )


def test_a_difference_shows_a_unified_diff_coloured_on_a_colour_terminal(
    px: ExecPytester,
) -> None:
    px.script("differ_script.py", 'print("one")\nprint("Two")\nprint("three")\n')
    (px.path / "differ_script.stdout").write_text("one\ntwo\nthree\n")
    plain = px.run()
    assert px.section(plain, "script differ_script.py") == [
        "differ_script.py failed: stdout differs from differ_script.stdout at line 2: "
        f"expected 'two', got 'Two' (after {_seconds(plain)} s)",
        "stdout differs from differ_script.stdout at line 2: expected 'two', got 'Two'",
    ]
    plain.stdout.fnmatch_lines(
        [
            "--- expected (differ_script.stdout)",
            "+++ actual",
            "@@ -1,3 +1,3 @@",
            " one",
            "-two",
            "+Two",
            " three",
            "*Captured stdout call*",
        ],
        consecutive=True,
    )
    coloured = px.run("--color=yes")
    assert "\x1b[31m-two" in coloured.stdout.str()
    assert "\x1b[32m+Two" in coloured.stdout.str()


def _seconds(result: pytest.RunResult) -> str:
    """The run time the failure header gives (the one part of it that varies)."""
    line = next(line for line in result.outlines if line.startswith("differ_script.py failed"))
    return line.rsplit("(after ", 1)[1].split(" s)")[0]


def test_the_exit_code_mark_passes_only_that_code(px: ExecPytester) -> None:
    px.script("two_script.py", "# pytest.mark.exec(exit_code=2)\nraise SystemExit(2)\n")
    px.script("zero_script.py", "# pytest.mark.exec(exit_code=2)\nprint('fine')\n")
    px.script(
        "both_script.py",
        "# pytest.mark.exec(exit_code=2, allowed_exit_codes=[2])\nraise SystemExit(2)\n",
    )
    result = px.run("-rfE")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR both_script.py::both_script - *give exit_code or allowed_exit_codes, not both",
            "FAILED zero_script.py::zero_script - exit code 0",
        ]
    )


def test_bad_expectation_files_error_naming_the_file_and_spare_the_other_scripts(
    px: ExecPytester,
) -> None:
    px.script("latin_script.py", "print('caf\\xe9')\n")
    (px.path / "latin_script.stdout").write_bytes("café\n".encode("latin-1"))
    px.script("folder_script.py", "print('x')\n")
    (px.path / "folder_script.stdout").mkdir()
    px.script("outside_script.py", "# pytest.mark.exec(stdout='../../elsewhere.txt')\n")
    px.script("missing_script.py", "# pytest.mark.exec(stderr='expected/missing.txt')\n")
    px.script("good_script.py", "print('good')\n")
    (px.path / "good_script.stdout").write_text("good\n")
    result = px.run("-rE")
    result.assert_outcomes(passed=1, errors=4)
    root = px.path
    result.stdout.fnmatch_lines_random(
        [
            f"latin_script.py::latin_script: expectation file {root}/latin_script.stdout"
            " is not UTF-8 (byte 3: invalid continuation byte)",
            f"folder_script.py::folder_script: expectation file {root}/folder_script"
            ".stdout is a directory",
            "outside_script.py::outside_script: exec mark: stdout='../../elsewhere.txt' points "
            f"outside the rootdir {root}",
            "missing_script.py::missing_script: exec mark: stderr='expected/missing.txt': no "
            f"such file {root}/expected/missing.txt (create it with pytest --exec-update-output)",
        ]
    )


def test_a_bad_redaction_is_a_usage_error_naming_the_line(px: ExecPytester) -> None:
    px.ini(exec_redact="\n    ADDR=0x[0-9a-f]+\n    WHEN=(\\d+")
    px.script("any_script.py", "print('x')\n")
    result = px.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: ini option 'exec_redact': line 2 'WHEN=(\\d+': bad regular expression: "
            "missing ), unterminated subpattern at position 0"
        ]
    )


def test_output_over_the_capture_limit_is_compared_head_and_tail(px: ExecPytester) -> None:
    body = "# pytest.mark.exec(output_limit=600)\nfor i in range(200):\n    print('line', i)\n"
    full = "".join(f"line {i}\n" for i in range(200))
    px.script("long_script.py", body)
    (px.path / "long_script.stdout").write_text(full)
    px.script("head_script.py", body)
    (px.path / "head_script.stdout").write_text(full.replace("line 3\n", "line three\n"))
    px.script("tail_script.py", body)
    (px.path / "tail_script.stdout").write_text(full.replace("line 198\n", "line 98\n"))
    result = px.run("-rf")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED head_script.py::head_script - stdout differs from head_script.stdout at "
            "line 4: expected 'line three', got 'line 3'",
            "FAILED tail_script.py::tail_script - stdout differs from tail_script.stdout at "
            "line 199: expected 'line 98', got 'line 198'",
        ]
    )
    head = px.section(result, "script head_script.py")
    assert any(line.startswith("stdout went over its capture limit (600 bytes)") for line in head)
    result.stdout.fnmatch_lines(
        ["@@ -1,7 +1,7 @@", " line 0", " line 1", " line 2", "-line three", "+line 3", " line 4"]
    )


def test_a_tree_opted_in_must_have_stdout_files_and_is_told_how_to_create_them(
    px: ExecPytester,
) -> None:
    px.ini(exec_check_output="true")
    px.script("bare_script.py", "print('x')\n")
    px.script("sub/marked_script.py", "# pytest.mark.exec(check_output=False)\nprint('y')\n")
    result = px.run("-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["FAILED bare_script.py::bare_script - stdout not checked: bare_script.stdout is missing"]
    )
    result.stdout.fnmatch_lines(
        [
            "bare_script.stdout is missing: this script's stdout must be checked; create it "
            "with: pytest --exec-update-output bare_script.py::bare_script"
        ]
    )


# -- updating ----------------------------------------------------------------------------------


def write_update_project(px: ExecPytester) -> None:
    px.ini(exec_check_output="true", exec_redact="ADDR=0x[0-9a-f]+")
    px.script(
        "report_script.py",
        """\
        import os, random
        print("Report for", os.getcwd())
        print("items:", random.randint(1, 9))
        print("at", hex(id(object())))
        print("new last line")
        """,
    )
    (px.path / "report_script.stdout").write_text(
        "Report for [CWD]\nitems: [..]\nat [ADDR]\nold last line\n"
    )
    px.script("fresh_script.py", "import sys\nprint('made', sys.executable)\n")
    px.script("same_script.py", "print('unchanged')\n")
    (px.path / "same_script.stdout").write_text("unchanged\n")
    (px.path / "gone_script.stdout").write_text("a script that is no more\n")


def test_update_rewrites_only_what_no_longer_matches_and_lists_it(px: ExecPytester) -> None:
    write_update_project(px)
    same_before = (px.path / "same_script.stdout").stat().st_mtime_ns
    result = px.run("--exec-update-output")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*codomyrmex-exec: expectation files*",
            "updated report_script.stdout",
            "created fresh_script.stdout",
            "checked by no script: gone_script.stdout",
        ],
        consecutive=True,
    )
    assert (px.path / "report_script.stdout").read_text() == (
        "Report for [CWD]\nitems: [..]\nat [ADDR]\nnew last line\n"
    )
    assert (px.path / "fresh_script.stdout").read_text() == "made [PYTHON]\n"
    assert (px.path / "same_script.stdout").stat().st_mtime_ns == same_before
    assert (px.path / "gone_script.stdout").exists()  # nothing is deleted
    px.run().assert_outcomes(passed=3)


def test_update_touches_only_the_scripts_selected(px: ExecPytester) -> None:
    write_update_project(px)
    result = px.run("--exec-update-output", "-k", "fresh")
    result.assert_outcomes(passed=1, deselected=2)
    assert (px.path / "fresh_script.stdout").exists()
    assert (px.path / "report_script.stdout").read_text().endswith("old last line\n")
    assert "report_script" not in result.stdout.str().split("expectation files")[1]


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(["-n", "2"], id="xdist"),
        pytest.param(["--exec-parallel", "--exec-backend", "process"], id="process"),
        pytest.param(["--exec-parallel", "--exec-backend", "async", "--exec-warm"], id="warm"),
        *[how for how in MODES if how.id == "dask"],
    ],
)
def test_update_writes_each_file_once_from_the_process_that_logs_reports(
    px: ExecPytester, how: list[str]
) -> None:
    write_update_project(px)
    for i in range(6):
        px.script(f"many{i}_script.py", f"print('script {i}')\n")
    result = px.run("--exec-update-output", *how)
    result.assert_outcomes(passed=9)
    created = [line for line in result.outlines if line.startswith("created ")]
    assert sorted(created) == sorted(
        ["created fresh_script.stdout", *(f"created many{i}_script.stdout" for i in range(6))]
    )
    assert (px.path / "many4_script.stdout").read_text() == "script 4\n"
    px.run(*how).assert_outcomes(passed=9)


def test_a_file_two_scripts_disagree_about_is_not_written(px: ExecPytester) -> None:
    px.script("a_script.py", "# pytest.mark.exec(stdout='shared.out')\nprint('a')\n")
    px.script("b_script.py", "# pytest.mark.exec(stdout='shared.out')\nprint('b')\n")
    result = px.run("--exec-update-output")
    result.stdout.fnmatch_lines(["not written shared.out: two scripts wrote different text to it"])
    assert (px.path / "shared.out").read_text() == "a\n"


def test_a_failing_script_output_is_not_written(px: ExecPytester) -> None:
    px.script("crash_script.py", "print('partial')\nraise SystemExit(3)\n")
    (px.path / "crash_script.stdout").write_text("complete\n")
    result = px.run("--exec-update-output")
    result.assert_outcomes(failed=1)
    assert (px.path / "crash_script.stdout").read_text() == "complete\n"


def test_placeholders_name_this_machines_paths(px: ExecPytester) -> None:
    """The written text holds no path of this machine: the rootdir, temp folder, python."""
    px.ini(exec_check_output="true")
    px.script(
        "where_script.py",
        "import os, sys, tempfile\nprint(os.getcwd(), tempfile.gettempdir(), sys.executable)\n",
    )
    px.run("--exec-update-output").assert_outcomes(passed=1)
    written = (px.path / "where_script.stdout").read_text()
    assert written == "[CWD] [TMP] [PYTHON]\n"
    for path in (str(px.path), tempfile.gettempdir(), sys.executable):
        assert path not in written


# -- cases -------------------------------------------------------------------------------------

CASES = {
    "help": {"args": ["--help"]},
    "bad": {"args": ["--nope"], "exit_code": 2},
    "name": {"args": ["--greeting", "Hi", "Ann"]},
}
CLI_WITH_CASES = (
    f"""\
# pytest.mark.exec(args=["--greeting", "Hi"])
# pytest.mark.exec(cases={CASES!r})
"""
    + """\
import argparse
parser = argparse.ArgumentParser(prog="greet")
parser.add_argument("--greeting", required=True)
parser.add_argument("name", nargs="?", default="world")
options = parser.parse_args()
print(f"{options.greeting}, {options.name}!")
"""
)


def test_cases_make_an_item_each_with_their_own_files_selectable_and_rerun_alone(
    px: ExecPytester,
) -> None:
    px.ini(exec_check_output="true")
    px.script("cli_script.py", CLI_WITH_CASES)
    px.pytester.runpytest_subprocess("--exec-update-output").assert_outcomes(passed=3)
    assert (px.path / "cli_script.name.stdout").read_text() == "Hi, Ann!\n"
    assert (px.path / "cli_script.bad.stdout").read_text() == ""
    assert "usage: greet" in (px.path / "cli_script.help.stdout").read_text()
    (px.path / "cli_script.name.stdout").write_text("Hello, Ann!\n")

    first = px.pytester.runpytest_subprocess("-rf")
    first.assert_outcomes(passed=2, failed=1)
    first.stdout.fnmatch_lines(
        [
            "FAILED cli_script.py::cli_script[name] - stdout differs from cli_script.name.stdout"
            " at line 1: expected 'Hello, Ann!', got 'Hi, Ann!'"
        ]
    )
    rerun = px.pytester.runpytest_subprocess("--lf", "-v")
    rerun.assert_outcomes(failed=1)
    rerun.stdout.fnmatch_lines(["cli_script.py::cli_script[[]name] FAILED*"])
    selected = px.pytester.runpytest_subprocess("-k", "help", "-v")
    selected.assert_outcomes(passed=1, deselected=2)
    selected.stdout.fnmatch_lines(["cli_script.py::cli_script[[]help] PASSED*"])


def test_a_bad_cases_mark_is_a_collection_error_naming_the_file(px: ExecPytester) -> None:
    px.script("odd_script.py", "# pytest.mark.exec(cases={'a b': {}})\n")
    px.script("fine_script.py", "print('fine')\n")
    result = px.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*{px.path}/odd_script.py: exec mark: cases: case name 'a b' must be letters, *"]
    )
