"""Regression tests for defects found by using the plugin as a new user would (issue 7).

Each test runs a real pytest session on real scripts and would fail before its fix.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from conftest import ExecPytester, Mode

# Prints each script's resolved timeout as the run starts (the hook pytest calls per script).
TIMEOUT_HOOK = """\
def pytest_exec_script_started(item, settings):
    with open("timeouts.txt", "a") as out:
        out.write(f"{item.name} {settings.timeout}\\n")
"""


# -- --dist without workers -------------------------------------------------------------------

# "waiter" passes only if "maker" runs at the same time: proof that scripts ran in parallel.
WAITER = """\
import pathlib, sys, time
deadline = time.monotonic() + 30
while not pathlib.Path("made").exists():
    if time.monotonic() > deadline:
        sys.exit("maker never ran alongside me")
    time.sleep(0.02)
"""
MAKER = "import pathlib\npathlib.Path('made').touch()\n"


@pytest.mark.parametrize(
    "addopts",
    [
        pytest.param("--dist loadscope", id="dist-only"),
        pytest.param("--dist load -n 0", id="zero-workers"),
    ],
)
def test_dist_mode_without_xdist_workers_keeps_exec_parallel_on(
    px: ExecPytester, addopts: str
) -> None:
    # xdist distributes nothing without workers: every item runs here, so --exec-parallel
    # must still run the scripts side by side (it used to switch itself off silently).
    px.ini(addopts=addopts, exec_order="collection")
    px.script("a_waiter_script.py", WAITER)
    px.script("b_maker_script.py", MAKER)
    result = px.run("--exec-parallel", "--exec-workers", "2")
    result.assert_outcomes(passed=2)


def test_with_xdist_workers_xdist_still_distributes(px: ExecPytester) -> None:
    px.ini(addopts="--dist loadscope")
    px.conftest(
        """\
        def pytest_exec_script_started(item, settings):
            import os
            with open("workers.txt", "a") as out:
                out.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")
        """
    )
    px.script("a_script.py")
    px.script("b_script.py")
    px.run("-n", "2", "--exec-parallel").assert_outcomes(passed=2)
    assert all(line.startswith("gw") for line in px.lines("workers.txt")), px.lines("workers.txt")


# -- pytest-timeout's 0, and huge timeouts ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "marks"),
    [
        pytest.param(["--timeout", "0"], [], id="option"),
        pytest.param(["--timeout", "5"], ["timeout(0)"], id="mark"),
    ],
)
@pytest.mark.modes("inline", "async")
def test_pytest_timeout_zero_means_no_timeout(
    px: ExecPytester, args: list[str], marks: list[str], mode: Mode
) -> None:
    px.conftest(TIMEOUT_HOOK)
    px.ini(timeout="3")
    lines = "".join(f"# pytest.mark.{mark}\n" for mark in marks)
    px.script("slow_script.py", lines + "import time\ntime.sleep(0.2)\n")
    px.run(*args, *mode).assert_outcomes(passed=1)
    # Not the 60 s default, not the ini's 3 s: none at all.
    assert px.lines("timeouts.txt") == ["slow_script None"]


def test_library_huge_timeout_means_no_timeout(px: ExecPytester) -> None:
    from pytest_codomyrmex_exec import ScriptSpec, run_script, run_script_async

    script = px.script("quick_script.py", "print('done')\n")
    for timeout in (1e9, 30 * 24 * 3600.0, float("inf")):
        for result in (
            run_script(script, timeout=timeout),
            asyncio.run(run_script_async(script, timeout=timeout)),
        ):
            assert result["status"] == "passed", result
            assert result["stdout"].strip() == "done"
        assert ScriptSpec.build(script, timeout=timeout).timeout is None
    # Just under the longest single wait the OS takes (about 24.8 days): kept as a timeout,
    # and a quick script still passes (no wait handed to the OS overflows).
    assert ScriptSpec.build(script, timeout=20 * 24 * 3600.0).timeout == 20 * 24 * 3600.0
    assert run_script(script, timeout=20 * 24 * 3600.0)["status"] == "passed"


def test_huge_timeouts_behave_as_no_timeout(px: ExecPytester, mode: Mode) -> None:
    px.conftest(TIMEOUT_HOOK)
    px.script("option_script.py", "print('ran')\n")
    px.script("mark_script.py", "# pytest.mark.exec(timeout=2592000)\nprint('ran')\n")
    result = px.run("--exec-timeout", "1e9", *mode)
    result.assert_outcomes(passed=2)
    assert sorted(px.lines("timeouts.txt")) == ["mark_script None", "option_script None"]


# -- values the engine cannot take are usage errors naming the option ---------------------------


@pytest.mark.parametrize(
    ("source", "value", "named"),
    [
        pytest.param("option", "1e300", "--exec-memory-limit", id="memory-option"),
        pytest.param("ini", "1e300", "ini option 'exec_memory_limit'", id="memory-ini"),
        pytest.param("option", "1e20", "--exec-memory-limit", id="memory-option-1e20"),
    ],
)
def test_memory_limit_beyond_any_address_space_is_a_usage_error(
    px: ExecPytester, source: str, value: str, named: str
) -> None:
    px.script("a_script.py", "open('ran', 'w').close()\n")
    if source == "ini":
        px.ini(exec_memory_limit=value)
        result = px.run()
    else:
        result = px.run("--exec-memory-limit", value)
    # One usage error naming where the value came from, not an error per script.
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {named}: '{value}' *larger than any address space*"])
    assert not (px.path / "ran").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "None"), ("inf", "None"), ("1e300", "None"), ("2.5", "2.5")],
)
def test_timeout_option_follows_the_engine_rules(
    px: ExecPytester, value: str, expected: str
) -> None:
    px.conftest(TIMEOUT_HOOK)
    px.script("a_script.py")
    px.run_inprocess("--exec-timeout", value).assert_outcomes(passed=1)
    assert px.lines("timeouts.txt") == [f"a_script {expected}"]


# -- --exec-python PATH as two arguments ---------------------------------------------------------


def test_exec_python_with_equals_keeps_the_rootdir_and_ini(px: ExecPytester) -> None:
    px.ini(exec_timeout="7")
    px.conftest(TIMEOUT_HOOK)
    px.script("a_script.py", "import sys\nprint(sys.executable)\n")
    # An interpreter outside the project: as a test path it would move the rootdir to "/".
    result = px.run(f"--exec-python={sys.executable}", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"rootdir: {px.path}", "configfile: tox.ini"])
    assert px.lines("timeouts.txt") == ["a_script 7.0"]  # the project's ini was read


@pytest.mark.parametrize("where", ["command-line", "PYTEST_ADDOPTS"])
def test_exec_python_as_two_arguments_is_a_usage_error(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    px.ini(exec_timeout="7")
    px.script("a_script.py", "open('ran', 'w').close()\n")
    if where == "command-line":
        result = px.run("--exec-python", sys.executable)
    else:
        addopts = os.environ.get("PYTEST_ADDOPTS", "")
        monkeypatch.setenv("PYTEST_ADDOPTS", f"{addopts} --exec-python {sys.executable}")
        result = px.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --exec-python: write --exec-python={sys.executable} *"])
    assert not (px.path / "ran").exists()


def test_exec_python_as_two_arguments_in_ini_addopts_is_harmless(px: ExecPytester) -> None:
    # The ini file's addopts are read after pytest has chosen the rootdir: nothing moves.
    px.ini(addopts=f"--exec-python {sys.executable}")
    px.script("a_script.py")
    result = px.run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"rootdir: {px.path}"])


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


# -- values execve cannot take are short errors naming the mark --------------------------------


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


# -- script names that look like node id syntax --------------------------------------------------


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


# -- the backend hook, as docs/plugin.md describes it ------------------------------------------

SMALL_BACKEND = """\
import threading

from pytest_codomyrmex_exec.engine import CancelEvent, Subscription, run_spec


class OneAtATime:
    '''A backend as docs/plugin.md describes one: the engine does the runs.'''

    def __init__(self):
        self.stop = CancelEvent()
        self.thread = None

    def start(self, jobs, base_env, sink):
        def work():
            for job in jobs:
                with open("custom.txt", "a") as out:
                    out.write(job.spec.script.rsplit("/", 1)[1] + "\\n")
                events = Subscription(sink, job.key, output=job.output)
                run_spec(job.spec, base_env=base_env, cancel_event=self.stop, events=events)

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def cancel(self):
        self.stop.set()

    def join(self, timeout):
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.alive()

    def alive(self):
        return self.thread is None or self.thread.is_alive()


def pytest_exec_make_backend(config):
    with open("backends.txt", "a") as out:
        out.write("asked\\n")
    return OneAtATime() if config.getoption("exec_backend") is None else None
"""


def test_a_conftest_backend_runs_the_scripts(px: ExecPytester) -> None:
    px.conftest(SMALL_BACKEND)
    px.script("ok_script.py", "import os\nprint(os.environ['CODOMYRMEX_EXEC_SESSION'])\n")
    px.script("bad_script.py", "raise SystemExit(3)\n")
    result = px.run("--exec-parallel", "-rA", *px.junit_args())
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*bad_script.py failed: exit code 3*"])
    assert px.lines("backends.txt") == ["asked"]  # once per session
    assert sorted(px.lines("custom.txt")) == ["bad_script.py", "ok_script.py"]
    # Returning None leaves the choice to --exec-backend.
    builtin = px.run("--exec-parallel", "--exec-backend", "process")
    builtin.assert_outcomes(passed=1, failed=1)
    assert px.lines("backends.txt") == ["asked", "asked"]
    assert len(px.lines("custom.txt")) == 2
