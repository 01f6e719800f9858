"""Nothing outlives pytest, however it ends: SIGTERM, SIGKILL, os._exit, -x, a dead backend.

Each test runs a real pytest session on real scripts that record their pids (and their
children's, one of which leaves the script's process group), ends it the way a CI runner,
the OOM killer or pytest-timeout would, and checks by pid that no process is left.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import pytest
from conftest import ExecPytester, Mode, is_alive, still_alive

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the guardian needs /proc (Linux)"
)

NO_GUARDIAN = ("-o", "exec_guardian=false")


def sleeper(px: ExecPytester, *, stubborn: bool = False) -> str:
    """A tracked script with a tracked child in its group and a tracked grandchild that left
    the group (``setsid``, as a daemon does); then it sleeps. ``stubborn``: ignores SIGTERM."""
    ignore = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if stubborn else ""
    return (
        px.tracker()
        + ignore
        + "import subprocess, sys, time\n"
        + "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        + "_track(child.pid)\n"
        + "daemon = subprocess.Popen(\n"
        + "    [sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True\n"
        + ")\n"
        + "_track(daemon.pid)\n"
        + "time.sleep(30)\n"
    )


class Session:
    """A pytest session in a subprocess that the test ends itself, with a signal."""

    def __init__(self, px: ExecPytester, args: Iterable[str]) -> None:
        self.px = px
        self.log = px.path / "session.log"
        self.out_path = px.path / "session.out"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"]
        logging = ["--log-file", str(self.log), "--log-file-level", "DEBUG"]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*command, *logging, *args],
                cwd=px.path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def end(self, *signals: int, pause: float = 0.3, within: float = 15.0) -> float:
        """Send ``signals`` (``pause`` s apart); seconds until pytest has exited."""
        started = time.monotonic()
        try:
            for index, signum in enumerate(signals):
                if index:
                    time.sleep(pause)
                self.proc.send_signal(signum)
            self.proc.wait(within)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - started

    def wait(self, within: float = 60.0) -> int:
        try:
            return self.proc.wait(within)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def guardian_pids(self) -> list[int]:
        text = self.log.read_text() if self.log.exists() else ""
        return [int(pid) for pid in re.findall(r"guardian started: pid (\d+)", text)]


# -- SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.modes("inline", "process", "async", "inline-warm", "async-warm")
def test_sigterm_stops_the_run_like_ctrl_c(px: ExecPytester, mode: Mode) -> None:
    scripts = 3 if mode.parallel else 1  # inline, one script runs at a time
    for i in range(scripts):
        px.script(f"sleep{i}_script.py", sleeper(px, stubborn=i == 0))
    # Without the guardian: this is pytest itself stopping the scripts.
    session = Session(px, [*mode, "--exec-workers", "4", *NO_GUARDIAN])
    px.wait_for_pids(3 * scripts)
    elapsed = session.end(signal.SIGTERM)
    output = session.output
    assert session.proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt: SIGTERM" in output
    assert "INTERNALERROR" not in output
    assert elapsed < 10, f"pytest took {elapsed:.1f} s to stop"  # the sleepers: 30 s
    px.assert_no_process_left(at_least=3 * scripts)


@pytest.mark.parametrize(
    ("signals", "pause"),
    [
        # Stubborn scripts ignore SIGTERM, so the stop takes the whole grace: time for the SIGTERM.
        pytest.param((signal.SIGINT, signal.SIGTERM), 0.3, id="sigterm-during-the-stop"),
        # pytest is stopped while both arrive, so both are pending when it runs again, as after
        # a stall of a loaded machine: the second is raised at the first line of the stop.
        pytest.param(
            (signal.SIGSTOP, signal.SIGINT, signal.SIGTERM, signal.SIGCONT), 0.1, id="both-at-once"
        ),
    ],
)
@pytest.mark.modes("process", "async")
def test_sigterm_while_ctrl_c_stops_the_scripts_does_not_abandon_them(
    px: ExecPytester, mode: Mode, signals: tuple[int, ...], pause: float
) -> None:
    for i in range(3):
        px.script(f"sleep{i}_script.py", sleeper(px, stubborn=True))
    session = Session(px, [*mode, "--exec-workers", "4", *NO_GUARDIAN])
    px.wait_for_pids(9)
    elapsed = session.end(*signals, pause=pause)
    output = session.output
    assert session.proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "INTERNALERROR" not in output
    # The backend stopped the scripts; the end-of-session sweep (Linux only) found none.
    assert "left running outside their process group" not in output, output
    assert elapsed < 10, f"pytest took {elapsed:.1f} s to stop"  # the sleepers: 30 s
    px.assert_no_process_left(at_least=9)


def test_sigterm_is_left_alone_in_a_session_without_scripts(px: ExecPytester) -> None:
    started = px.path / "started"
    px.pytester.makepyfile(
        test_plain=f"""
        import pathlib, time

        def test_waits():
            pathlib.Path({str(started)!r}).touch()
            time.sleep(30)
        """
    )
    session = Session(px, [])
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, session.output
        time.sleep(0.02)
    session.end(signal.SIGTERM)
    assert session.proc.returncode == -signal.SIGTERM, session.output


# -- the guardian: pytest killed outright -----------------------------------------------------


def inline_in_parallel(px: ExecPytester) -> None:
    """With --exec-parallel, a script with an xfail mark runs inline, in pytest's own loop."""
    px.script("inline_script.py", "# pytest.mark.xfail(reason='runs inline')\n" + sleeper(px))


@linux_only
@pytest.mark.modes("inline", "process", "async", "inline-warm", "async-warm")
def test_guardian_kills_every_script_when_pytest_is_killed(px: ExecPytester, mode: Mode) -> None:
    parallel = mode.parallel
    scripts = 3 if parallel else 1
    for i in range(scripts - (1 if parallel else 0)):
        px.script(f"sleep{i}_script.py", sleeper(px, stubborn=i == 0))
    if parallel:
        inline_in_parallel(px)
    session = Session(px, [*mode, "--exec-workers", "4"])
    px.wait_for_pids(3 * scripts)
    session.end(signal.SIGKILL)
    assert session.proc.returncode == -signal.SIGKILL
    px.assert_no_process_left(at_least=3 * scripts)
    guardians = session.guardian_pids()
    assert len(guardians) == 1, session.log.read_text()
    assert not still_alive(guardians), "the guardian outlived its work"


@linux_only
@pytest.mark.modes("process", "async")
def test_guardian_kills_every_script_after_pytest_timeouts_os_exit(
    px: ExecPytester, mode: Mode
) -> None:
    # pytest-timeout's thread method ends a hanging test with os._exit(1): no finally, no
    # atexit, no hook of ours runs. (Inline no script runs while an ordinary test does.)
    px.script("sleep_script.py", sleeper(px))
    px.pytester.makepyfile(
        test_hangs=f"""
        import os, time
        import pytest

        @pytest.fixture
        def script_running():
            deadline = time.monotonic() + 20
            while len(os.listdir({str(px.pid_dir)!r})) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)

        # func_only: the timer starts with the call, once the fixture has seen the script's
        # three pids, however long they took to start on a loaded machine (a timer from the
        # test's start could end pytest before the script had started its children).
        @pytest.mark.timeout(1, method="thread", func_only=True)
        def test_hangs(script_running):
            time.sleep(30)
        """
    )
    session = Session(px, mode)
    px.wait_for_pids(3, within=30)
    returncode = session.wait()
    output = session.output
    assert returncode == 1, output
    assert "Timeout" in output
    px.assert_no_process_left(at_least=3)


@linux_only
def test_guardian_only_for_sessions_that_run_scripts(px: ExecPytester) -> None:
    px.pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    px.script("quick_script.py", "print('hi')\n")

    plain = Session(px, ["test_plain.py"])
    assert plain.wait() == 0, plain.output
    log = plain.log.read_text()
    assert "guardian started" not in log
    assert "end-of-session sweep" not in log  # no script: no /proc sweep either

    listed = Session(px, ["--collect-only"])
    assert listed.wait() == 0, listed.output
    assert "guardian started" not in listed.log.read_text()

    full = Session(px, [])
    assert full.wait() == 0, full.output
    log = full.log.read_text()
    assert "end-of-session sweep: 0 process(es)" in log
    guardians = full.guardian_pids()
    assert len(guardians) == 1, log
    assert not is_alive(guardians[0]), "the guardian outlived a normal end"

    disabled = Session(px, list(NO_GUARDIAN))
    assert disabled.wait() == 0, disabled.output
    assert "guardian started" not in disabled.log.read_text()


def test_scripts_inherit_no_descriptor_but_their_own(px: ExecPytester, mode: Mode) -> None:
    # The guardian learns of pytest's death when the last write end of its pipe closes; a
    # script holding a copy would keep it from ever noticing.
    px.script(
        "fds_script.py",
        """
        import os
        listing = os.listdir("/proc/self/fd")
        extra = []
        for fd in sorted(int(name) for name in listing):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # the listing's own descriptor, closed already
            # The recorder's own record (exec_dirty records by default): written, never a pipe.
            if fd > 2 and "codomyrmex-record" not in target:
                extra.append(f"{fd} -> {target}")
        assert not extra, extra
        """,
    )
    result = px.run(*mode)
    result.assert_outcomes(passed=1)


# -- -x and a backend that dies ---------------------------------------------------------------


@pytest.mark.modes("process", "async")
def test_x_after_an_ordinary_failure_cancels_hundreds_of_scripts_at_once(
    px: ExecPytester, mode: Mode
) -> None:
    count = 300
    body = px.tracker() + "import time\ntime.sleep(30)\n"
    for i in range(count):
        px.script(f"s{i:04d}_script.py", body)
    # Fails once the two workers' scripts run, so the cancel meets running and queued ones.
    px.pytester.makepyfile(
        test_a_first=f"""
        import os, time

        def test_fails():
            deadline = time.monotonic() + 20
            while len(os.listdir({str(px.pid_dir)!r})) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert False
        """
    )
    started = time.monotonic()
    result = px.run("-x", *mode, "--exec-workers", "2")
    elapsed = time.monotonic() - started
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    result.assert_outcomes(failed=1)
    assert "cannot submit" not in text
    # The running scripts' 30 s is what this rules out; collecting 300 scripts and starting
    # pytest take seconds of it on a loaded machine.
    assert elapsed < 25, f"pytest took {elapsed:.1f} s"
    px.assert_no_process_left(at_least=2)


DYING_BACKEND = """
import threading

from pytest_codomyrmex_exec.engine import Subscription, run_spec


class DyingBackend:
    '''Runs the first script, reports it, then its thread ends with the rest unreported.'''

    def start(self, jobs, base_env, sink):
        def serve():
            first = jobs[0]
            run_spec(first.spec, base_env=base_env, events=Subscription(sink, first.key))

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    def cancel(self):
        pass

    def join(self, timeout):
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self):
        return self._thread.is_alive()


def pytest_exec_make_backend(config):
    return DyingBackend()
"""


def test_a_backend_that_dies_leaves_no_script_unreported(px: ExecPytester) -> None:
    px.conftest(DYING_BACKEND)
    names = [f"s{i}_script" for i in range(4)]
    for name in names:
        px.script(f"{name}.py", "print('ran')\n")
    result = px.run("--exec-parallel", "--exec-order", "collection", *px.junit_args(), timeout=60)
    result.assert_outcomes(passed=1, errors=3)
    cases = px.junit()
    assert sorted(case.name for case in cases) == sorted(names)  # exactly one report each
    errors = [case for case in cases if case.outcome == "error"]
    assert len(errors) == 3
    for case in errors:
        assert "the backend stopped before the script was reported" in "".join(case.messages)


SLOW_TO_STOP_BACKEND = """
import threading, time

from pytest_codomyrmex_exec.engine import Subscription, run_spec


class SlowToStop:
    '''Reports every script, then ignores cancel() and ends 2.5 s later.'''

    def start(self, jobs, base_env, sink):
        def serve():
            for job in jobs:
                run_spec(job.spec, base_env=base_env, events=Subscription(sink, job.key))
            time.sleep(2.5)

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    def cancel(self):
        pass

    def join(self, timeout):
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self):
        return self._thread.is_alive()


def pytest_exec_make_backend(config):
    return SlowToStop()
"""


def test_a_backend_that_does_not_stop_is_reported_and_waited_for(px: ExecPytester) -> None:
    px.conftest(SLOW_TO_STOP_BACKEND)
    px.script("quick_script.py", "print('ran')\n")
    started = time.monotonic()
    result = px.run("--exec-parallel", "-o", "exec_stop_report_after=0.5", timeout=60)
    elapsed = time.monotonic() - started
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*the backend did not stop within 0.5 s; waiting for it*"])
    assert elapsed >= 2.5, "returned while the backend's thread still ran"
