"""Trees laid out like real projects, not *_script.py: path patterns, doctests, stdin, modules,
the working folder and run_for.

An ``examples/`` folder of plain demos, an ``algorithms/`` folder with doctests and ``input()``
prompts, a package run as a module. Every behaviour runs in a real pytest session, inline and
with ``--exec-parallel``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

from pytest_codomyrmex_exec.plugin.patterns import ScriptPatterns


def collected(result: pytest.RunResult) -> list[str]:
    return sorted(line for line in result.outlines if "::" in line)


def outcomes(px: ExecPytester) -> dict[str, str]:
    return {f"{case.classname}.{case.name}": case.outcome for case in px.junit()}


# -- doctests stay ------------------------------------------------------------------------------

GCD = '''\
def gcd(a, b):
    """
    >>> gcd(12, 18)
    6
    """
    while b:
        a, b = b, a % b
    return a


if __name__ == "__main__":
    import doctest

    doctest.testmod()
    print(gcd(int(input("a? ")), int(input("b? "))))
'''


BROKEN_DOCTEST = '''\
def square(x):
    """
    >>> square(3)
    10
    """
    return x * x


if __name__ == "__main__":
    import doctest

    doctest.testmod()  # prints the failure but exits 0: only the doctest item can catch it
'''


@pytest.mark.modes("inline", "async")
def test_doctests_run_beside_the_script_items(px: ExecPytester, mode: Mode) -> None:
    px.ini(exec_script_patterns="algorithms/*.py")
    px.script("algorithms/gcd.py", "# pytest.mark.exec(stdin='12\\n18\\n')\n" + GCD)
    px.script("algorithms/square.py", BROKEN_DOCTEST)
    result = px.run("--doctest-modules", "-v", *mode, *px.junit_args())
    result.assert_outcomes(passed=3, failed=1)
    assert outcomes(px) == {
        "algorithms.gcd.gcd": "passed",  # the script, fed its two numbers
        "algorithms.gcd.gcd.gcd": "passed",  # its doctest
        "algorithms.square.square": "passed",  # the script: testmod() exits 0
        "algorithms.square.square.square": "failed",  # the doctest that testmod() hid
    }
    result.stdout.fnmatch_lines(["*FAILED algorithms/square.py::square.square*"])


def test_without_doctest_modules_a_script_is_still_never_imported(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="algorithms/*.py")
    px.script("algorithms/noisy.py", "open('imported.txt', 'w').close()\n")
    result = px.run_inprocess("--collect-only", "-q", "algorithms/noisy.py")
    assert collected(result) == ["algorithms/noisy.py::noisy"]
    assert not (px.path / "imported.txt").exists()


# -- path patterns ------------------------------------------------------------------------------


def test_path_globs_unit() -> None:
    root = Path("/repo")
    patterns = ScriptPatterns(("examples/**/*.py", "tools/*.py", "*_demo.py", "x/[ab]?.py"), root)
    selected = {
        "examples/a.py": True,
        "examples/deep/er/b.py": True,
        "examplesX/a.py": False,
        "tools/t.py": True,
        "tools/sub/t.py": False,
        "lib/run_demo.py": True,
        "x/a1.py": True,
        "x/c1.py": False,
        "setup.py": False,
    }
    for relative, expected in selected.items():
        assert patterns.matches(root / relative) is expected, relative
    assert patterns.matches(Path("/elsewhere/tools/t.py")) is False
    assert patterns.unmatched() == []
    assert ScriptPatterns(("docs/*.py",), root).unmatched() == ["docs/*.py"]
    with pytest.raises(pytest.UsageError, match=r"'x/\[z-a\].py' is not a valid glob"):
        ScriptPatterns(("x/[z-a].py",), root)
    # Brackets that a newer re would read as nested sets: no FutureWarning (-W error here).
    assert ScriptPatterns(("x/[[]a].py",), root).matches(root / "x" / "[a].py")


def test_a_name_glob_no_file_can_match_is_a_usage_error_like_a_path_glob(
    px: ExecPytester,
) -> None:
    px.ini(exec_script_patterns="*_script.py [z-a].py")
    px.script("a_script.py")
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "ERROR: ini option 'exec_script_patterns': '[z-a].py' is not a valid glob: "
        "bad character range z-a\n" in result.stderr.str() + "\n"
    )


def write_example_repo(px: ExecPytester) -> None:
    px.script("setup.py", "raise SystemExit('setup.py must not run')\n")
    px.script("docs/conf.py", "raise SystemExit('conf.py must not run')\n")
    px.script("mylib/core.py", "raise SystemExit('a library module must not run')\n")
    px.script("examples/table.py", "print('table')\n")
    px.script("examples/live/progress.py", "print('progress')\n")
    px.script("examples/live/deeper/spinner.py", "print('spinner')\n")
    px.script("tools/release.py", "print('release')\n")
    px.script("tools/internal/helper.py", "raise SystemExit('not selected')\n")


@pytest.mark.modes("inline", "async")
def test_path_patterns_select_by_folder(px: ExecPytester, mode: Mode) -> None:
    px.ini(exec_script_patterns="examples/**/*.py tools/*.py")
    write_example_repo(px)
    result = px.run("-v", *mode)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*examples/table.py::table PASSED*",
            "*examples/live/progress.py::progress PASSED*",
            "*examples/live/deeper/spinner.py::spinner PASSED*",
            "*tools/release.py::release PASSED*",
        ]
    )
    assert "matched no collected file" not in result.stdout.str()


@pytest.mark.modes("inline", "async")
def test_a_pattern_that_matches_nothing_is_named(px: ExecPytester, mode: Mode) -> None:
    # The project's own filterwarnings = error must not turn the hint into a failure.
    px.ini(exec_script_patterns="demos/*.py examples/*.py", filterwarnings="error")
    px.script("examples/table.py", "print('table')\n")
    result = px.run(*mode)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*codomyrmex-exec: exec_script_patterns 'demos/*.py' matched no collected file*"]
    )
    assert "'examples/*.py' matched no" not in result.stdout.str()

    # The run that used to exit 5 with no hint at all.
    px.ini(exec_script_patterns="example/*.py")
    result = px.run()
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        ["*exec_script_patterns 'example/*.py' matched no collected file (relative to the*"]
    )


def test_conftest_and_init_are_never_scripts(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="*.py")
    px.conftest("")
    px.script("pkg/__init__.py", "")
    px.script("pkg/conftest.py", "")
    px.script("pkg/demo.py", "print('demo')\n")
    result = px.run_inprocess("--collect-only", "-q")
    assert collected(result) == ["pkg/demo.py::demo"]


@pytest.mark.modes("inline", "async")
def test_conftest_tells_script_items_apart_by_the_public_name(px: ExecPytester, mode: Mode) -> None:
    px.ini(exec_script_patterns="examples/*.py")
    px.conftest(
        """
        import pytest
        from pytest_codomyrmex_exec.plugin import ScriptItem

        def pytest_collection_modifyitems(items):
            for item in items:
                if isinstance(item, ScriptItem):
                    item.add_marker(pytest.mark.demo)
        """
    )
    px.script("examples/table.py", "print('table')\n")
    px.script("test_lib.py", "def test_lib():\n    pass\n")
    result = px.run("-m", "demo", "-p", "no:warnings", *mode)
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["examples/table.py .*"])


def test_a_script_lost_to_python_files_is_named_in_one_line(px: ExecPytester) -> None:
    # Repositories often name demos *_test.py (a speed test, an I/O test), and many set
    # python_files to include *_test.py: such a file silently became an empty test module.
    px.ini(
        exec_script_patterns="examples/**/*.py",
        python_files="test_*.py *_test.py",
        filterwarnings="error",
    )
    demo = "def main():\n    print('demo')\n\nif __name__ == '__main__':\n    main()\n"
    px.script("examples/io/speed_test.py", demo)
    px.script("examples/table.py", demo)
    px.script("examples/checks_test.py", "def test_checks():\n    pass\n")  # a real test module
    result = px.run_inprocess()
    result.assert_outcomes(passed=2)
    notices = [line for line in result.stdout.lines if "codomyrmex-exec: matching" in line]
    assert len(notices) == 1, notices
    assert "did not run as scripts: examples/io/speed_test.py (narrow" in notices[0]
    assert "checks_test" not in notices[0]


# -- what a script gets: stdin, modules, pythonpath ---------------------------------------------

PROMPT = """\
a = int(input("first? "))
b = int(input("second? "))
assert a + b == 7, (a, b)
print("sum", a + b)
"""


def test_stdin_text_and_file(px: ExecPytester, mode: Mode) -> None:
    px.ini(exec_script_patterns="algorithms/*.py")
    px.script("algorithms/text_prompt.py", "# pytest.mark.exec(stdin='3\\n4\\n')\n" + PROMPT)
    px.script(
        "algorithms/file_prompt.py", "# pytest.mark.exec(stdin_file='data/in.txt')\n" + PROMPT
    )
    (px.path / "algorithms" / "data").mkdir()
    (px.path / "algorithms" / "data" / "in.txt").write_text("5\n2\n")
    px.script("algorithms/no_input.py", PROMPT)
    px.script("algorithms/lost_input.py", "# pytest.mark.exec(stdin_file='gone.txt')\n" + PROMPT)
    result = px.run("-rA", *mode, *px.junit_args())
    assert outcomes(px) == {
        "algorithms.text_prompt.text_prompt": "passed",
        "algorithms.file_prompt.file_prompt": "passed",
        "algorithms.no_input.no_input": "failed",  # empty stdin: EOF at once, never a hang
        "algorithms.lost_input.lost_input": "error",  # could not start: says which file
    }
    result.stdout.fnmatch_lines_random(
        ["*EOFError*", "*lost_input.py could not run: stdin_file not found: *algorithms/gone.txt"]
    )


@pytest.mark.modes("inline", "async")
def test_a_package_module_with_relative_imports(px: ExecPytester, mode: Mode) -> None:
    px.ini(exec_script_patterns="shop/cli.py shop/cli_plain.py")
    px.script("shop/__init__.py", "")
    px.script("shop/prices.py", "TAX = 0.25\n")
    body = "from .prices import TAX\nassert __package__ == 'shop'\nprint('tax', TAX)\n"
    px.script("shop/cli.py", "# pytest.mark.exec(as_module=True)\n" + body)
    px.script("shop/cli_plain.py", body)
    result = px.run("-rA", *mode, *px.junit_args())
    assert outcomes(px) == {"shop.cli.cli": "passed", "shop.cli_plain.cli_plain": "failed"}
    result.stdout.fnmatch_lines_random(["tax 0.25", "*ImportError: attempted relative import*"])


@pytest.mark.modes("inline", "async")
def test_pytest_pythonpath_reaches_scripts_ahead_of_the_inherited_one(
    px: ExecPytester, mode: Mode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    inherited = tmp_path / "inherited"
    (inherited / "shared.py").parent.mkdir()
    (inherited / "shared.py").write_text("WHO = 'inherited'\n")
    monkeypatch.setenv("PYTHONPATH", str(inherited), prepend=os.pathsep)
    px.ini(exec_script_patterns="tools/*.py", pythonpath="lib")
    px.script("lib/shared.py", "WHO = 'lib'\n")
    px.script("tools/use.py", "import shared\nassert shared.WHO == 'lib', shared.__file__\n")
    result = px.run(*mode)
    result.assert_outcomes(passed=1)


def test_module_runs_a_demo_of_a_namespace_package_as_python_m(px: ExecPytester) -> None:
    # rich-style examples: no __init__.py, imports through the top folder's name.
    px.ini(exec_script_patterns="examples/**/*.py")
    px.script("examples/helpers.py", "GREETING = 'hello from helpers'\n")
    px.script(
        "examples/tiny/tiny_run.py",
        "# pytest.mark.exec(module='examples.tiny.tiny_run')\n"
        "from examples.helpers import GREETING\n"
        "print(GREETING, __spec__.name)\n",
    )
    px.script("examples/tiny/wrong.py", "# pytest.mark.exec(module='examples.wrong')\n")
    result = px.run("-rA", "-k", "tiny_run or wrong")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "hello from helpers examples.tiny.tiny_run",
            "*examples/tiny/wrong.py::wrong: exec mark: module='examples.wrong' is not valid: "
            "*its path must end in examples/wrong.py or examples/wrong/__main__.py*",
        ]
    )


PROMPTS = """\
n = int(input("How many? "))
word = input("Which word? ")
print(" ".join([word] * n))
"""


def test_ini_stdin_answers_the_prompts_of_a_collection_of_algorithms(px: ExecPytester) -> None:
    # TheAlgorithms-style: many scripts ask with input(); one ini line answers them all.
    px.ini(exec_script_patterns="maths/*.py", exec_stdin="\n    3\n    ant")
    px.script("maths/repeat.py", PROMPTS)
    px.script("maths/repeat_again.py", PROMPTS)
    px.script("maths/fixed.py", "# pytest.mark.exec(stdin='2\\nbee\\n')\n" + PROMPTS)
    px.script("maths/argv.py", "import sys\nprint(sys.argv[1:])\n")
    result = px.run("-rA", "-o", "exec_args=--rounds 2 'a b'")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        [
            "How many? Which word? ant ant ant",
            "How many? Which word? bee bee",
            "*'--rounds', '2', 'a b'*",
        ]
    )


# -- the working folder -------------------------------------------------------------------------

WRITER = """\
import os, pathlib, sys
pathlib.Path("table.svg").write_text("<svg/>")
with open(os.environ["CWD_LOG"], "a") as log:
    log.write(f"{pathlib.Path(__file__).stem} {os.getcwd()}\\n")
sys.exit(int(os.environ.get("EXIT", "0")) if "fail" in __file__ else 0)
"""


def cwd_log(px: ExecPytester) -> dict[str, Path]:
    return {
        name: Path(folder) for name, folder in (line.split(" ", 1) for line in px.lines("cwd.log"))
    }


@pytest.mark.modes("inline", "async")
def test_exec_cwd_tmp_leaves_the_source_folder_untouched(
    px: ExecPytester, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWD_LOG", str(px.path / "cwd.log"))
    monkeypatch.setenv("EXIT", "3")
    px.ini(exec_script_patterns="examples/*.py", tmp_path_retention_policy="failed")
    px.script("examples/one.py", WRITER)
    px.script("examples/two.py", WRITER)
    px.script("examples/fail.py", WRITER)
    px.script("examples/marked.py", "# pytest.mark.exec(cwd='.')\n" + WRITER)
    before = sorted(p.name for p in (px.path / "examples").iterdir())
    result = px.run("--exec-cwd", "tmp", *mode)
    result.assert_outcomes(passed=3, failed=1)

    # Only the script whose exec mark names its cwd wrote into the source folder.
    after = sorted(p.name for p in (px.path / "examples").iterdir())
    assert after == sorted([*before, "table.svg"])
    folders = cwd_log(px)
    assert folders["marked"] == px.path / "examples"
    tmp_folders = [folders["one"], folders["two"], folders["fail"]]
    assert len(set(tmp_folders)) == 3, "each script gets its own folder"
    # Under pytest's basetemp (pytester passes --basetemp=<path>/runpytest-N).
    assert all(f.parent.name.startswith("runpytest-") for f in tmp_folders), tmp_folders
    # Kept for the failed script, removed for passed ones (tmp_path_retention_policy=failed).
    assert (folders["fail"] / "table.svg").is_file()
    assert not folders["one"].exists()
    assert not folders["two"].exists()


def test_exec_cwd_rootdir_and_bad_value(px: ExecPytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWD_LOG", str(px.path / "cwd.log"))
    px.ini(exec_script_patterns="examples/*.py", exec_cwd="rootdir")
    px.script("examples/one.py", WRITER)
    px.run().assert_outcomes(passed=1)
    assert cwd_log(px)["one"] == px.path
    assert (px.path / "table.svg").is_file()

    result = px.run("--exec-cwd", "home")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--exec-cwd: expected one of script, tmp, rootdir, copy, got*"])


# -- run_for ------------------------------------------------------------------------------------


def test_run_for_passes_an_endless_demo_and_fails_an_early_crash(
    px: ExecPytester, mode: Mode
) -> None:
    px.ini(exec_script_patterns="examples/*.py")
    px.script(
        "examples/server.py",
        "# pytest.mark.exec(run_for=1.0, timeout=30)\n"
        "import time\nprint('serving', flush=True)\nwhile True:\n    time.sleep(0.05)\n",
        track=True,
    )
    px.script(
        "examples/crashy.py",
        "# pytest.mark.exec(run_for=20)\n"
        "import time\ntime.sleep(0.2)\nraise RuntimeError('crashed inside the window')\n",
    )
    px.script("examples/quick.py", "# pytest.mark.exec(run_for=20)\nprint('done early, exit 0')\n")
    result = px.run("-rA", *mode, *px.junit_args())
    assert outcomes(px) == {
        "examples.server.server": "passed",
        "examples.crashy.crashy": "failed",
        "examples.quick.quick": "passed",
    }
    result.stdout.fnmatch_lines(["*RuntimeError: crashed inside the window*"])
    # The crash ended its run at once, not after the 20 s window.
    assert px.junit_by_name()["crashy"].time < 10
    px.assert_no_process_left(at_least=1)
