"""Living with the rest: pytest-timeout, -x/--maxfail, Ctrl-C, pytest-xdist, pytest-cov, our own
hooks and a conftest's own backend."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

SLOW_TEST = """
import time

def test_slow_function():
    time.sleep(5)
"""


def sleeper_with_child(px: ExecPytester, *, stubborn: bool = False) -> str:
    """A tracked script that starts a tracked child in its group, then sleeps a long time.

    ``stubborn`` scripts ignore SIGTERM: only the SIGKILL after the grace period stops them.
    """
    ignore = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if stubborn else ""
    return (
        px.tracker()
        + ignore
        + (
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "_track(child.pid)\n"
            "time.sleep(30)\n"
        )
    )


def wait_then_fail(px: ExecPytester, pids: int) -> str:
    """A script that fails once ``pids`` processes have recorded themselves (all started)."""
    return (
        "import os, time\n"
        "deadline = time.monotonic() + 20\n"
        f"while len(os.listdir({str(px.pid_dir)!r})) < {pids} and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "raise SystemExit(1)\n"
    )


# Inline the item's protocol runs the script, in parallel it is replayed: which backend ran
# the script is nothing pytest-timeout can see.
@pytest.mark.modes("inline", "async")
@pytest.mark.parametrize("method", ["signal", "thread"])
def test_pytest_timeout_never_times_a_script_item(
    px: ExecPytester, mode: Mode, method: str
) -> None:
    px.script("steady_script.py", "import time\ntime.sleep(1.5)\nprint('done')\n")
    if method == "signal":
        # Ordinary tests are still pytest-timeout's: only script items time themselves.
        # (With the thread method pytest-timeout would end the whole process here.)
        px.pytester.makepyfile(test_slow=SLOW_TEST)
    args = ("--timeout", "0.5", "--timeout-method", method, "--exec-timeout", "10", *mode)
    result = px.run("-rA", *args)
    assert "INTERNALERROR" not in result.stdout.str()
    if method == "signal":
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["FAILED test_slow.py::test_slow_function - Failed: Timeout*"])
    else:
        result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASSED steady_script.py::steady_script"])


@pytest.mark.modes("process", "async")
@pytest.mark.parametrize(("option", "failing"), [("-x", 1), ("--maxfail=2", 2)])
def test_fail_fast_kills_running_scripts_and_ends_quickly(
    px: ExecPytester, mode: Mode, option: str, failing: int
) -> None:
    sleepers = 4
    for i in range(sleepers):
        px.script(f"sleep{i}_script.py", sleeper_with_child(px, stubborn=i == 0))
    for i in range(failing):
        px.script(f"fail{i}_script.py", wait_then_fail(px, 2 * sleepers))
    started = time.monotonic()
    result = px.run(option, *mode, "--exec-workers", "8", timeout=60)
    elapsed = time.monotonic() - started
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=failing)
    result.stdout.fnmatch_lines([f"*stopping after {failing} failures*"])
    # The sleepers' 30 s is what this rules out; the session also starts pytest and nine
    # interpreters, which on a loaded machine takes seconds.
    assert elapsed < 20, f"pytest took {elapsed:.1f} s to stop"
    px.assert_no_process_left(at_least=2 * sleepers)


def interrupt(
    px: ExecPytester, mode: Iterable[str], processes: int, presses: int
) -> tuple[str, float]:
    """Run pytest, press Ctrl-C ``presses`` times once ``processes`` are up; output, seconds."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--exec-workers", "4"]
    with subprocess.Popen(
        [*command, *mode],
        cwd=px.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        try:
            px.wait_for_pids(processes)
            started = time.monotonic()
            for press in range(presses):
                if press:
                    time.sleep(0.3)  # while the first one is still killing the scripts
                proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=15)
            elapsed = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output.decode(errors="replace")
    return output.decode(errors="replace"), elapsed


def test_ctrl_c_kills_every_script_tree(px: ExecPytester, mode: Mode) -> None:
    sleepers = 3 if mode.parallel else 1  # inline, only one script runs at a time
    for i in range(sleepers):
        px.script(f"sleep{i}_script.py", sleeper_with_child(px, stubborn=i == 0))
    text, elapsed = interrupt(px, mode, 2 * sleepers, presses=1)
    assert "KeyboardInterrupt" in text
    assert "INTERNALERROR" not in text
    assert elapsed < 10, f"pytest took {elapsed:.1f} s to stop"  # the sleepers: 30 s
    px.assert_no_process_left(at_least=2 * sleepers)


@pytest.mark.modes("process", "async")
def test_second_ctrl_c_does_not_abandon_the_scripts(px: ExecPytester, mode: Mode) -> None:
    # SIGTERM is ignored, so killing them takes the whole grace period: time for a second press.
    for i in range(3):
        px.script(f"sleep{i}_script.py", sleeper_with_child(px, stubborn=True))
    text, elapsed = interrupt(px, mode, 6, presses=2)
    assert "INTERNALERROR" not in text
    assert elapsed < 10, f"pytest took {elapsed:.1f} s to stop"  # the sleepers: 30 s
    px.assert_no_process_left(at_least=6)


# Under xdist --exec-parallel is ignored: each worker runs its scripts inline (the mode's check).
@pytest.mark.modes("xdist")
@pytest.mark.parametrize("parallel", [(), ("--exec-parallel",)], ids=["plain", "exec-parallel"])
def test_xdist_runs_every_script_exactly_once(
    px: ExecPytester, mode: Mode, parallel: tuple[str, ...]
) -> None:
    record = "import pathlib\nwith open('runs.txt', 'a') as out:\n    out.write(__file__ + '\\n')\n"
    names = [f"s{i}" for i in range(8)]
    for name in names:
        failing = name in ("s2", "s5")
        px.script(f"jobs/{name}_script.py", record + ("raise SystemExit(1)\n" if failing else ""))
    px.pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = px.run(*mode, *parallel, *px.junit_args())
    result.assert_outcomes(passed=7, failed=2)
    runs = sorted(line.rsplit("/", 1)[1] for line in px.lines("jobs/runs.txt"))
    assert runs == sorted(f"{name}_script.py" for name in names)
    outcomes = {case.name: case.outcome for case in px.junit()}
    assert outcomes == {
        **{f"{name}_script": "passed" for name in names if name not in ("s2", "s5")},
        "s2_script": "failed",
        "s5_script": "failed",
        "test_plain": "passed",
    }


HOOK_LOG = """\
import json

def pytest_exec_script_started(item, settings):
    with open("hooks.jsonl", "a") as out:
        out.write(json.dumps(["started", item.nodeid, settings.timeout, list(settings.args)]))
        out.write("\\n")

def pytest_exec_script_finished(item, result):
    with open("hooks.jsonl", "a") as out:
        out.write(json.dumps(["finished", item.nodeid, result["status"], result["exit_code"]]))
        out.write("\\n")
    # Re-shaping what the report shows.
    result["stdout"] += "seen by the hook\\n"
"""


def test_own_hooks_see_every_script_once(px: ExecPytester, mode: Mode) -> None:
    import json

    px.conftest(HOOK_LOG)
    px.script("a_script.py", '# pytest.mark.exec(timeout=7, args=["x"])\nprint("from a")\n')
    px.script("b_script.py", "raise SystemExit(3)\n")
    px.script("c_script.py", '# pytest.mark.skip(reason="never started")\n')
    result = px.run("-rA", *mode)
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["from a", "seen by the hook"])
    calls = [json.loads(line) for line in px.lines("hooks.jsonl")]
    assert sorted(map(tuple, calls)) == sorted(
        [
            ("started", "a_script.py::a_script", 7, ["x"]),
            ("finished", "a_script.py::a_script", "passed", 0),
            ("started", "b_script.py::b_script", 60.0, []),
            ("finished", "b_script.py::b_script", "failed", 3),
        ]
    )
    for nodeid in ("a_script.py::a_script", "b_script.py::b_script"):
        kinds = [kind for kind, seen, *_ in calls if seen == nodeid]
        assert kinds == ["started", "finished"]


def test_a_raising_hook_fails_its_script_not_the_session(px: ExecPytester, mode: Mode) -> None:
    # Each hook fails one script, in one session: neither takes the others down.
    px.conftest(
        """\
        def pytest_exec_script_started(item):
            if item.name == "b_script":
                raise ValueError("the started hook broke")

        def pytest_exec_script_finished(item):
            if item.name == "c_script":
                raise ValueError("the finished hook broke")
        """
    )
    for name in "abcd":
        px.script(f"{name}_script.py")
    result = px.run("-rf", *mode)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "conftest.py:3: ValueError",
            "conftest.py:7: ValueError",
            "FAILED b_script.py::b_script - ValueError: the started hook broke",
            "FAILED c_script.py::c_script - ValueError: the finished hook broke",
        ]
    )
    # The hook's own frames, not a trail through pytest's and pluggy's.
    result.stdout.no_fnmatch_line("*site-packages*")


DAEMON = """\
import subprocess, sys
# setsid and no inherited pipes: out of reach of the group kill and of the output drain.
daemon = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
_track(daemon.pid)
print("started a daemon")
"""


def test_a_daemon_left_outside_the_group_does_not_outlive_the_run(
    px: ExecPytester, mode: Mode
) -> None:
    px.script("daemon_script.py", DAEMON, track=True)
    result = px.run(*mode)
    result.assert_outcomes(passed=1)
    # Killed as the script exited, found by the script's own tag, and named as its leak.
    result.stdout.fnmatch_lines(["  daemon_script.py: 1 process", "*  *time.sleep(60)"])
    px.assert_no_process_left(at_least=2)


# -- the backend hook, as docs/plugin.md describes it -------------------------------------------

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


# -- coverage of what scripts run ---------------------------------------------------------------


@AFTER_THE_RUN
def test_coverage_counts_the_lines_scripts_run(px: ExecPytester, mode: Mode) -> None:
    """pytest-cov with coverage's ``patch = subprocess``: the one setting a user adds."""
    px.script(
        "mypkg/__init__.py",
        """\
        def used_by_one():
            return 1


        def never_used():
            return 2


        def used_by_two():
            return 3
        """,
    )
    px.script("one_script.py", "import mypkg\nmypkg.used_by_one()\n")
    px.script(
        "jobs/two_script.py",
        "import sys\nsys.path.insert(0, '..')\nimport mypkg\nmypkg.used_by_two()\n",
    )
    (px.path / ".coveragerc").write_text("[run]\npatch = subprocess\n")
    report = px.path / "cov.json"
    result = px.run("--cov=mypkg", f"--cov-report=json:{report}", *mode)
    result.assert_outcomes(passed=2)
    files = json.loads(report.read_text())["files"]
    executed = set(files["mypkg/__init__.py"]["executed_lines"])
    missing = set(files["mypkg/__init__.py"]["missing_lines"])
    assert {2, 10} <= executed, "the lines the scripts ran were not counted"
    assert missing == {6}, "never_used() ran?"


# The pattern of pytest-json-report and allure-pytest: state that their protocol and setup
# hooks make, read by their makereport wrapper; and the location that
# pytest-github-actions-annotate-failures points its annotation at.
PHASE_WATCHER = """\
import json, pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.phases_seen = []
    yield
    del item.phases_seen

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.phases_seen.append("setup")
    yield

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    item.phases_seen.append("call")
    yield

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    item.phases_seen.append("teardown")
    yield

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    row = {
        "nodeid": item.nodeid,
        "when": call.when,
        "hook_ran": item.phases_seen[-1],
        "outcome": report.outcome,
        "duration": report.duration,
        "line": report.location[1],
    }
    with open("watched.jsonl", "a") as out:
        out.write(json.dumps(row) + "\\n")
"""


@AFTER_THE_RUN
def test_other_plugins_see_each_script_through_the_whole_test_protocol(
    px: ExecPytester, mode: Mode
) -> None:
    px.conftest(PHASE_WATCHER)
    px.script("nap_script.py", "import time\ntime.sleep(0.4)\n")
    px.script(
        "broken_script.py",
        """\
        def compute():
            raise RuntimeError("boom")

        compute()
        """,
    )
    result = px.run(*mode)
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    rows = [json.loads(line) for line in px.lines("watched.jsonl")]
    by_item: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_item.setdefault(str(row["nodeid"]), []).append(row)
    assert sorted(by_item) == ["broken_script.py::broken_script", "nap_script.py::nap_script"]
    for nodeid, phases in by_item.items():
        # Each report made inside the protocol, right after its own phase's hook ran.
        assert [(row["when"], row["hook_ran"]) for row in phases] == [
            ("setup", "setup"),
            ("call", "call"),
            ("teardown", "teardown"),
        ], nodeid
    nap_call = by_item["nap_script.py::nap_script"][1]
    broken_call = by_item["broken_script.py::broken_script"][1]
    assert nap_call["outcome"] == "passed"
    assert 0.4 <= float(str(nap_call["duration"])) < 20  # the script's own run time
    assert broken_call["outcome"] == "failed"
    # The failing line in the script (0-based, as pytest counts): `raise` on line 2.
    assert broken_call["line"] == 1
    assert nap_call["line"] == 0
