"""Options and ini keys: validation, and which source wins for each script's settings."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from conftest import TIMEOUT_HOOK, ExecPytester, Mode

SLEEPER = "import time\ntime.sleep(30)\n"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--exec-workers", "0"),
        ("--exec-workers", "-2"),
        ("--exec-workers", "two"),
        ("--exec-workers", "1.5"),
        ("--exec-backend", "threads"),
        ("--exec-timeout", "-1"),
        ("--exec-timeout", "nan"),
        ("--exec-timeout", "soon"),
        ("--exec-memory-limit", "0"),
        ("--exec-memory-limit", "-1"),
        ("--exec-memory-limit", "nan"),
        ("--exec-memory-limit", "inf"),
        ("--exec-memory-limit", "lots"),
        ("--exec-python", "/no/such/python"),
        ("--exec-python", "."),
        ("--exec-python", "not_executable.txt"),
        ("--exec-order", "random"),
        ("--exec-kill-grace", "-1"),
        ("--exec-kill-grace", "inf"),
        ("--exec-kill-grace", "never"),
    ],
)
def test_bad_option_value_is_a_usage_error_naming_it(
    px: ExecPytester, option: str, value: str
) -> None:
    (px.path / "not_executable.txt").write_text("")
    px.script("a_script.py")
    result = px.run_inprocess(f"{option}={value}")  # one argument, as --exec-python needs
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {option}: *{value}*"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exec_parallel", "maybe"),
        ("exec_workers", "0"),
        ("exec_backend", "threads"),
        ("exec_timeout", "-3"),
        ("exec_memory_limit", "0"),
        ("exec_python", "/no/such/python"),
        ("exec_order", "random"),
        ("exec_kill_grace", "nan"),
        ("exec_args", "'unclosed"),
    ],
)
def test_bad_ini_value_is_a_usage_error_naming_the_key(
    px: ExecPytester, key: str, value: str
) -> None:
    px.ini(**{key: value})
    px.script("a_script.py")
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: ini option '{key}': *{value}*"])


def test_command_line_value_is_checked_before_the_ini_value_is_used(px: ExecPytester) -> None:
    px.ini(exec_workers="0")
    px.script("a_script.py")
    px.run_inprocess("--exec-workers", "2").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("ini", "args", "marks", "expected"),
    [
        pytest.param(
            {"exec_timeout": "3", "timeout": "4"},
            ["--exec-timeout", "2", "--timeout", "5"],
            ["exec(timeout=0.5)", "timeout(6)"],
            "0.5",
            id="exec-mark",
        ),
        pytest.param(
            {"exec_timeout": "3", "timeout": "4"},
            ["--exec-timeout", "0.6", "--timeout", "5"],
            ["timeout(6)"],
            "0.6",
            id="command-line",
        ),
        pytest.param(
            {"exec_timeout": "0.7", "timeout": "4"},
            ["--timeout", "5"],
            ["timeout(6)"],
            "0.7",
            id="ini",
        ),
        pytest.param(
            {"timeout": "4"}, ["--timeout", "5"], ["timeout(0.8)"], "0.8", id="timeout-mark"
        ),
        pytest.param({"timeout": "4"}, ["--timeout", "0.9"], [], "0.9", id="timeout-option"),
        pytest.param({"timeout": "0.6"}, [], [], "0.6", id="timeout-ini"),
    ],
)
def test_timeout_precedence(
    px: ExecPytester, ini: dict[str, str], args: list[str], marks: list[str], expected: str
) -> None:
    px.ini(**ini)
    lines = "".join(f"# pytest.mark.{mark}\n" for mark in marks)
    px.script("sleepy_script.py", lines + SLEEPER, track=True)
    started = time.monotonic()
    result = px.run(*args)
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*sleepy_script.py timed out after {expected} s*"])
    # The sleeper's 30 s is what this rules out (which timeout decided, the message says);
    # a whole pytest session on a loaded machine can take several seconds by itself.
    assert elapsed < 20, "no timeout stopped the script"
    px.assert_no_process_left(at_least=1)


def test_pytest_timeout_environment_variable_sits_between_option_and_ini(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_TIMEOUT", "0.7")
    px.ini(timeout="4")
    px.script("sleepy_script.py", SLEEPER)
    px.script("sleepier_script.py", "# pytest.mark.timeout(0.4)\n" + SLEEPER)
    result = px.run("-v")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*sleepy_script.py timed out after 0.7 s*",
            "*sleepier_script.py timed out after 0.4 s*",
        ]
    )


@pytest.mark.parametrize(
    ("args", "marks"),
    [
        pytest.param(["--exec-timeout", "0", "--timeout", "0.3"], [], id="option-zero"),
        pytest.param(["--exec-timeout", "0.3"], ["exec(timeout=0)"], id="mark-zero"),
    ],
)
def test_zero_means_no_timeout_and_still_wins(
    px: ExecPytester, args: list[str], marks: list[str]
) -> None:
    lines = "".join(f"# pytest.mark.{mark}\n" for mark in marks)
    px.script("slow_script.py", lines + "import time\ntime.sleep(1)\n")
    px.run(*args).assert_outcomes(passed=1)


SETTINGS_HOOK = """\
def pytest_exec_script_started(item, settings):
    with open("settings.txt", "a") as out:
        out.write(f"{item.name} {settings.timeout} {settings.memory_limit_mb}\\n")
"""


def test_defaults_without_any_option(px: ExecPytester) -> None:
    px.conftest(SETTINGS_HOOK)
    px.script("plain_script.py")
    px.run_inprocess("-p", "no:timeout").assert_outcomes(passed=1)
    assert px.lines("settings.txt") == ["plain_script 60.0 None"]


def test_memory_limit_option_ini_and_mark(px: ExecPytester) -> None:
    report_limit = """\
import resource
soft, _ = resource.getrlimit(resource.RLIMIT_AS)
print("limit", soft // (1024 * 1024))
assert soft // (1024 * 1024) == EXPECTED, soft
"""
    px.ini(exec_memory_limit="500")
    px.script("ini_script.py", report_limit.replace("EXPECTED", "500"))
    px.script(
        "mark_script.py",
        "# pytest.mark.exec(memory_limit_mb=300)\n" + report_limit.replace("EXPECTED", "300"),
    )
    px.script("hog_script.py", "block = bytearray(900 * 1024 * 1024)\n")
    result = px.run("-rA")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*hog_script.py failed: memory limit of 500 MB exceeded*"])
    cli = px.run("-rA", "--exec-memory-limit", "400", "-k", "hog")
    cli.assert_outcomes(failed=1, deselected=2)
    cli.stdout.fnmatch_lines(["*hog_script.py failed: memory limit of 400 MB exceeded*"])


@pytest.mark.parametrize("source", ["option", "ini"])
def test_exec_python_is_the_interpreter_scripts_run_with(px: ExecPytester, source: str) -> None:
    wrapper = px.path / "wrapped-python"
    log = px.path / "wrapper.log"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    px.script("a_script.py", "import sys\nprint(sys.argv)\n")
    px.script("b_script.py", "raise SystemExit(3)\n")
    if source == "ini":
        px.ini(exec_python=str(wrapper))
        args: tuple[str, ...] = ()
    else:
        args = (f"--exec-python={os.path.relpath(wrapper, px.path)}",)
    result = px.run(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*b_script.py failed: exit code 3*"])
    assert sorted(line.rsplit("/", 1)[1] for line in px.lines("wrapper.log")) == [
        "a_script.py",
        "b_script.py",
    ]


# Each script records the most scripts it saw running at once while it ran. It stays 0.5 s,
# and longer (up to 10 s) until some script has seen EXPECTED at once: on a loaded machine one
# interpreter can start more than 0.5 s after another, which must not hide the concurrency.
CONCURRENCY = """\
import os, pathlib, time
running = pathlib.Path("running")
running.mkdir(exist_ok=True)
me = running / str(os.getpid())
me.touch()
reached = pathlib.Path("reached")
peak = 0
hold, give_up = time.monotonic() + 0.5, time.monotonic() + 10
while time.monotonic() < hold or (not reached.exists() and time.monotonic() < give_up):
    peak = max(peak, len(list(running.iterdir())))
    if peak >= EXPECTED:
        reached.touch()
    time.sleep(0.02)
with open("concurrency.txt", "a") as out:
    out.write(f"{peak}\\n")
me.unlink()
"""


def concurrency(expected: int) -> str:
    return CONCURRENCY.replace("EXPECTED", str(expected))


@pytest.mark.modes("process", "async")
def test_workers_bound_the_scripts_running_at_once(px: ExecPytester, mode: Mode) -> None:
    for name in "abcde":
        px.script(f"{name}_script.py", concurrency(2))
    result = px.run(*mode, "--exec-workers", "2")
    result.assert_outcomes(passed=5)
    counts = [int(n) for n in px.lines("concurrency.txt")]
    assert len(counts) == 5
    assert max(counts) == 2


def test_parallel_workers_and_backend_from_ini(px: ExecPytester) -> None:
    px.ini(exec_parallel="true", exec_workers="3", exec_backend="async")
    for name in "abcdef":
        px.script(f"{name}_script.py", concurrency(3))
    result = px.run()
    result.assert_outcomes(passed=6)
    counts = [int(n) for n in px.lines("concurrency.txt")]
    assert max(counts) == 3


NO_TIMEOUT_HOOK = """\
def pytest_exec_script_started(item, settings):
    with open("timeouts.txt", "a") as out:
        out.write(f"{item.name} {settings.timeout!r}\\n")
"""


@pytest.mark.parametrize(
    ("ini", "args", "mark", "session_timeout"),
    [
        pytest.param({}, ["--exec-timeout=0"], "", None, id="option-zero"),
        pytest.param({}, ["--exec-timeout=inf"], "", None, id="option-infinity"),
        pytest.param({}, ["--exec-timeout=1e12"], "", None, id="option-beyond-longest-wait"),
        pytest.param({"exec_timeout": "0"}, [], "", None, id="ini-zero"),
        pytest.param({"exec_timeout": "5"}, [], "exec(timeout=0)", 5.0, id="mark-zero"),
        pytest.param({}, ["--timeout=0"], "", None, id="pytest-timeout-zero"),
    ],
)
def test_no_timeout_reaches_the_script_as_none_from_every_source(
    px: ExecPytester,
    ini: dict[str, str],
    args: list[str],
    mark: str,
    session_timeout: float | None,
) -> None:
    px.ini(**ini)
    px.conftest(NO_TIMEOUT_HOOK)
    px.script("a_script.py", f"# pytest.mark.{mark}\n" if mark else "")
    px.run_inprocess(*args, *px.report_args()).assert_outcomes(passed=1)
    assert px.lines("timeouts.txt") == ["a_script None"]
    header = json.loads(px.results_path.read_text().splitlines()[0])
    assert header["options"]["timeout"] == session_timeout  # null: none, or not given


KILL_GRACE_HOOK = """\
def pytest_exec_script_started(item, settings):
    with open("graces.txt", "a") as out:
        out.write(f"{item.name} {settings.kill_grace}\\n")
"""


def test_kill_grace_precedence_mark_command_line_ini_default(px: ExecPytester) -> None:
    px.conftest(KILL_GRACE_HOOK)
    px.script("plain_script.py")
    px.script("marked_script.py", "# pytest.mark.exec(kill_grace=4)\n")
    px.run_inprocess().assert_outcomes(passed=2)
    px.ini(exec_kill_grace="2")
    px.run_inprocess().assert_outcomes(passed=2)
    px.run_inprocess("--exec-kill-grace=3").assert_outcomes(passed=2)
    assert sorted(px.lines("graces.txt")) == sorted(
        [
            "plain_script 1.0",
            "marked_script 4.0",
            "plain_script 2.0",
            "marked_script 4.0",
            "plain_script 3.0",
            "marked_script 4.0",
        ]
    )


# Cleans up for 1.5 s after SIGTERM, then records that it finished cleaning up.
TRAPS_SIGTERM = """\
# pytest.mark.exec(timeout=3MARK)
import pathlib, signal, sys, time
def clean_up(signum, frame):
    time.sleep(1.5)
    pathlib.Path(__file__).with_suffix(".cleaned").touch()
    sys.exit(1)
signal.signal(signal.SIGTERM, clean_up)
time.sleep(60)
"""


def test_kill_grace_gives_a_stopped_script_time_to_clean_up(px: ExecPytester) -> None:
    px.script("patient_script.py", TRAPS_SIGTERM.replace("MARK", ", kill_grace=3"), track=True)
    px.script("hasty_script.py", TRAPS_SIGTERM.replace("MARK", ""), track=True)
    started = time.monotonic()
    result = px.run("--exec-parallel", "--exec-workers=2")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        ["*patient_script.py timed out after 3 s*", "*hasty_script.py timed out after 3 s*"]
    )
    assert (px.path / "patient_script.cleaned").exists()  # SIGKILL waited past its clean-up
    assert not (px.path / "hasty_script.cleaned").exists()  # the default 1 s cut it short
    assert time.monotonic() - started < 40  # not the scripts' 60 s sleep
    px.assert_no_process_left(at_least=2)


STDIN_AND_ARGS = """\
import sys
print(repr(sys.stdin.read()), sys.argv[1:])
"""


def test_ini_stdin_and_args_reach_every_script_without_its_own(px: ExecPytester) -> None:
    px.ini(exec_stdin="\n    5\n    three words", exec_args="--fast 'a b'")
    px.script("plain_script.py", STDIN_AND_ARGS)
    px.script("own_script.py", "# pytest.mark.exec(stdin='mine', args=['x'])\n" + STDIN_AND_ARGS)
    (px.path / "input.txt").write_text("from a file\n")
    px.script("file_script.py", "# pytest.mark.exec(stdin_file='input.txt')\n" + STDIN_AND_ARGS)
    result = px.run_inprocess("-rA", "-s")
    result.assert_outcomes(passed=3)
    printed = set(result.stdout.lines)  # -s: the scripts' own lines
    assert "'5\\nthree words\\n' ['--fast', 'a b']" in printed
    assert "'mine' ['x']" in printed  # the mark's own values win, both of them
    assert "'from a file\\n' ['--fast', 'a b']" in printed  # stdin_file wins over exec_stdin


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


# -- --exec-python PATH as two arguments --------------------------------------------------------


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


@pytest.mark.parametrize("option", ["--exec-timeline", "--exec-report"])
def test_an_output_file_outside_the_folder_as_two_arguments_is_a_usage_error(
    px: ExecPytester, tmp_path_factory: pytest.TempPathFactory, option: str
) -> None:
    # "pytest --exec-timeline /tmp/t.html", run again once the page exists: pytest took it for
    # a test path, the rootdir moved to /tmp, the ini file went unread and no script ran.
    elsewhere = tmp_path_factory.mktemp("out") / "run.out"
    elsewhere.write_text("")
    px.ini(exec_script_patterns="jobs/*.py")
    px.script("jobs/a.py", "open('ran', 'w').close()\n")
    refused = px.run(option, str(elsewhere))
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines([f"ERROR: {option}: write {option}={elsewhere} *"])
    assert not (px.path / "jobs" / "ran").exists()
    # Inside the folder (as the docs write it) the file leads pytest to the same ini file.
    (px.path / "out.html").write_text("")
    px.run(option, "out.html").assert_outcomes(passed=1)


def test_exec_python_as_two_arguments_in_ini_addopts_is_harmless(px: ExecPytester) -> None:
    # The ini file's addopts are read after pytest has chosen the rootdir: nothing moves.
    px.ini(addopts=f"--exec-python {sys.executable}")
    px.script("a_script.py")
    result = px.run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"rootdir: {px.path}"])
