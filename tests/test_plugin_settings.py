"""Per-script settings from the exec mark: cwd, env, args, exit codes, retries; in every mode."""

from __future__ import annotations

from conftest import ExecPytester, Mode

# Appends one line per run to <name>.runs next to the script; returns the run number.
COUNT_RUNS = """\
import pathlib
_runs = pathlib.Path(__file__).with_suffix(".runs")
with _runs.open("a") as _out:
    _out.write("run\\n")
RUN = len(_runs.read_text().splitlines())
"""

HOOKS = """\
def pytest_exec_script_started(item, settings):
    with open("hooks.txt", "a") as out:
        out.write(f"started {item.name}\\n")


def pytest_exec_script_finished(item, result):
    with open("hooks.txt", "a") as out:
        out.write(f"finished {item.name} {result['status']}\\n")
"""


def write_settings_project(px: ExecPytester) -> None:
    (px.path / "jobs" / "data").mkdir(parents=True)
    (px.path / "elsewhere").mkdir()
    px.conftest(HOOKS)
    px.script(
        "jobs/cwd_script.py",
        """\
        # pytest.mark.exec(cwd="data")
        import os
        here = os.path.dirname(os.path.abspath(__file__))
        assert os.path.samefile(os.getcwd(), os.path.join(here, "data")), os.getcwd()
        """,
    )
    px.script(
        "jobs/default_cwd_script.py",
        """\
        import os
        assert os.path.samefile(os.getcwd(), os.path.dirname(os.path.abspath(__file__)))
        """,
    )
    px.script(
        "jobs/absolute_cwd_script.py",
        f"""\
        # pytest.mark.exec(cwd={str(px.path / "elsewhere")!r})
        import os
        assert os.path.basename(os.getcwd()) == "elsewhere", os.getcwd()
        """,
    )
    px.script(
        "env_script.py",
        """\
        # pytest.mark.exec(env={"EXEC_GREETING": "hello", "HOME": None})
        import os
        assert os.environ["EXEC_GREETING"] == "hello"
        assert "HOME" not in os.environ
        leaked = [k for k in os.environ if k in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")]
        assert not leaked, leaked
        """,
    )
    px.script(
        "args_script.py",
        """\
        # pytest.mark.exec(args=["--name", "two words", "\u00fcn\u00efc\u00f6de"])
        import sys
        assert sys.argv[1:] == ["--name", "two words", "\u00fcn\u00efc\u00f6de"], sys.argv
        """,
    )
    px.script("allowed_script.py", "# pytest.mark.exec(allowed_exit_codes=[0, 3])\nexit(3)\n")
    px.script("refused_script.py", "# pytest.mark.exec(allowed_exit_codes=[3])\n")
    px.script(
        "flaky_script.py",
        "# pytest.mark.exec(max_runs=3)\n" + COUNT_RUNS + "assert RUN >= 2, 'first run fails'\n",
    )
    px.script("always_script.py", "# pytest.mark.exec(max_runs=2)\n" + COUNT_RUNS + "exit(1)\n")
    px.script("once_script.py", "# pytest.mark.exec(max_runs=3)\n" + COUNT_RUNS)
    # The first run must record itself before its timeout: 2 s leaves a loaded machine time
    # to start the interpreter.
    px.script(
        "hangs_once_script.py",
        "# pytest.mark.exec(max_runs=2, timeout=2)\n"
        + COUNT_RUNS
        + "import time\nif RUN == 1:\n    time.sleep(30)\n",
    )


def test_exec_mark_settings(px: ExecPytester, mode: Mode) -> None:
    write_settings_project(px)
    result = px.run("-rA", *mode, *px.junit_args())
    outcomes = {case.name: case.outcome for case in px.junit()}
    assert outcomes == {
        "cwd_script": "passed",
        "default_cwd_script": "passed",
        "absolute_cwd_script": "passed",
        "env_script": "passed",
        "args_script": "passed",
        "allowed_script": "passed",
        "refused_script": "failed",
        "flaky_script": "passed",
        "always_script": "failed",
        "once_script": "passed",
        "hangs_once_script": "passed",
    }, result.stdout.str()
    result.stdout.fnmatch_lines(["*refused_script.py failed: exit code 0 after*"])
    runs = {p.stem: len(p.read_text().splitlines()) for p in px.path.glob("*.runs")}
    assert runs == {"flaky_script": 2, "always_script": 2, "once_script": 1, "hangs_once_script": 2}
    # One start and one finish per script, whatever the retries.
    hooks = px.lines("hooks.txt")
    for name in outcomes:
        assert hooks.count(f"started {name}") == 1, hooks
        assert len([h for h in hooks if h.startswith(f"finished {name} ")]) == 1, hooks
    assert "finished flaky_script passed" in hooks
    assert "finished always_script failed" in hooks
