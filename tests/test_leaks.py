"""Leaked processes, engine side: what a script leaves running when it exits is named in its
result and killed at once, in its group or out of it, attributed to the script that left it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import still_alive

from pytest_codomyrmex_exec import (
    ParallelRunner,
    ScriptResult,
    ScriptStatus,
    WarmLauncher,
    run_script,
    run_script_async,
)
from pytest_codomyrmex_exec.engine.launch import COLD
from pytest_codomyrmex_exec.engine.leaks import LEAKS_LISTED, sweep

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Each script writes the pids it leaves to the file named by argv[1], one a line, so the
# test can check them, and kill them should the engine not.
PREAMBLE = """\
import os, subprocess, sys, time
def note(pid):
    with open(sys.argv[1], "a") as out:
        out.write(f"{pid}\\n")
"""

IN_GROUP = (
    PREAMBLE
    + """\
child = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
note(child.pid)
"""
)

# A daemon's double fork, out of the script's group and session, its output on /dev/null so
# that it holds no pipe: only the run's tag can find it. No exec: a forked interpreter
# (warm too) is found by the environment block it started with.
DAEMON = (
    PREAMBLE
    + """\
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.write(write, f"{os.getpid()}\\n".encode())
        time.sleep(300)
    os._exit(0)
os.wait()
os.close(write)
note(int(os.read(read, 100)))
"""
)

WAITS = (
    PREAMBLE
    + """\
subprocess.run(["sleep", "0.2"], check=True)
"""
)

# Its child ends on its own (never waited for: a zombie) before the script does.
CHILD_ENDS_FIRST = (
    PREAMBLE
    + """\
child = subprocess.Popen(["true"])
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    with open(f"/proc/{child.pid}/stat") as stat:
        if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    time.sleep(0.01)
"""
)


# A child with threads of its own, in the script's group: the script ends once they run.
WITH_THREADS = (
    PREAMBLE
    + """\
body = (
    "import threading, time\\n"
    "for _ in range(3):\\n"
    "    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(300)\\n"
)
child = subprocess.Popen([sys.executable, "-c", body], stdout=subprocess.PIPE)
note(child.pid)
child.stdout.readline()
"""
)


@pytest.fixture
def started() -> Iterator[list[Path]]:
    """The pid files the test's scripts write; every pid in them is killed at the end."""
    files: list[Path] = []
    yield files
    for path in files:
        for pid in pids_in(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pids_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def script(tmp_path: Path, name: str, body: str, started: list[Path]) -> tuple[Path, str]:
    """The script's path and the pid file it is given as its argument."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    pid_file = tmp_path / f"{path.stem}.pids"
    started.append(pid_file)
    return path, str(pid_file)


def leaked_pids(result: ScriptResult) -> list[int]:
    return sorted(entry["pid"] for entry in result["leaked"])


def test_a_child_left_in_the_group_is_named_and_dead_when_the_result_comes_back(
    tmp_path: Path, started: list[Path]
) -> None:
    path, pids = script(tmp_path, "in_group.py", IN_GROUP, started)
    result = run_script(path, args=[pids])
    [pid] = pids_in(Path(pids))
    assert result["status"] == ScriptStatus.PASSED, result
    assert result["leaked"] == [{"pid": pid, "command": "sleep 300"}]
    assert result["leaked_count"] == 1
    assert not still_alive([pid], within=2.0)  # killed at the script's end, not the run's


def test_a_daemon_that_left_the_group_is_found_by_its_tag(
    tmp_path: Path, started: list[Path]
) -> None:
    path, pids = script(tmp_path, "daemon.py", DAEMON, started)
    result = run_script(path, args=[pids])
    [pid] = pids_in(Path(pids))
    assert leaked_pids(result) == [pid], result
    assert str(path) in result["leaked"][0]["command"]  # the forked interpreter's command line
    assert not still_alive([pid], within=2.0)


def test_a_leftover_with_threads_is_one_leftover(tmp_path: Path, started: list[Path]) -> None:
    # Its threads' ids lie among the pids made after the script, and /proc/<tid> opens too.
    path, pids = script(tmp_path, "threads.py", WITH_THREADS, started)
    result = run_script(path, args=[pids])
    [pid] = pids_in(Path(pids))
    assert result["status"] == ScriptStatus.PASSED, result
    assert (result["leaked_count"], leaked_pids(result)) == (1, [pid])
    assert not still_alive([pid], within=2.0)


@pytest.mark.parametrize("body", [WAITS, CHILD_ENDS_FIRST], ids=["waits", "child-ends-first"])
def test_children_that_ended_before_the_script_are_no_leak(
    tmp_path: Path, started: list[Path], body: str
) -> None:
    path, pids = script(tmp_path, "clean.py", body, started)
    result = run_script(path, args=[pids])
    assert result["status"] == ScriptStatus.PASSED, result
    assert result["leaked"] == []
    assert result["leaked_count"] == 0


def test_a_timed_out_scripts_daemon_is_killed_but_no_leak(
    tmp_path: Path, started: list[Path]
) -> None:
    # The timeout is the finding: the tree kill took the daemon down with the script.
    path, pids = script(tmp_path, "slow.py", DAEMON + "time.sleep(300)\n", started)
    result = run_script(path, args=[pids], timeout=1.0, kill_grace=0.1)
    [pid] = pids_in(Path(pids))
    assert result["status"] == ScriptStatus.TIMEOUT, result
    assert result["leaked"] == []
    assert not still_alive([pid], within=2.0)


def test_many_leftovers_are_all_killed_and_counted_but_only_the_first_listed(
    tmp_path: Path, started: list[Path]
) -> None:
    body = PREAMBLE + textwrap.dedent(
        f"""\
        for _ in range({LEAKS_LISTED + 5}):
            note(subprocess.Popen(["sleep", "300"]).pid)
        """
    )
    path, pids = script(tmp_path, "many.py", body, started)
    result = run_script(path, args=[pids])
    spawned = pids_in(Path(pids))
    assert len(spawned) == LEAKS_LISTED + 5
    assert result["leaked_count"] == LEAKS_LISTED + 5
    assert len(result["leaked"]) == LEAKS_LISTED
    assert set(leaked_pids(result)) <= set(spawned)
    assert not still_alive(spawned, within=2.0)


# Two scripts at once: "leaky" leaves a daemon; "clean" leaves nothing and ends while that
# daemon runs (it waits for leaky's pid file). leaky ends once clean has been reaped (its pid
# gone), so clean's sweep has looked while the daemon ran: it must not have been taken for
# clean's, nor killed.
PAIR_CLEAN = (
    PREAMBLE
    + """\
other = sys.argv[1].replace("clean", "leaky")
deadline = time.monotonic() + 20
while not os.path.exists(other) and time.monotonic() < deadline:
    time.sleep(0.01)
note(os.getpid())
"""
)
PAIR_LEAKY = (
    DAEMON
    + """\
other = sys.argv[1].replace("leaky", "clean")
deadline = time.monotonic() + 20
while not os.path.exists(other) and time.monotonic() < deadline:
    time.sleep(0.01)
with open(other) as clean_pid:
    clean = int(clean_pid.read())
def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
while not gone(clean) and time.monotonic() < deadline:
    time.sleep(0.01)
"""
)


@pytest.mark.parametrize("runner", ["threads", "asyncio", "warm"])
def test_parallel_scripts_each_own_their_leftovers(
    tmp_path: Path, started: list[Path], runner: str
) -> None:
    leaky, leaky_pids = script(tmp_path, "leaky.py", PAIR_LEAKY, started)
    clean, clean_pids = script(tmp_path, "clean.py", PAIR_CLEAN, started)
    if runner == "asyncio":

        async def both() -> list[ScriptResult]:
            return list(
                await asyncio.gather(
                    run_script_async(leaky, args=[leaky_pids]),
                    run_script_async(clean, args=[clean_pids]),
                )
            )

        results = asyncio.run(both())
    else:
        with contextlib.ExitStack() as stack:
            warm = stack.enter_context(WarmLauncher()) if runner == "warm" else None
            pool = stack.enter_context(ParallelRunner(2, launcher=warm or COLD))
            configs = {str(leaky): {"args": [leaky_pids]}, str(clean): {"args": [clean_pids]}}
            results = pool.run_scripts([leaky, clean], configs=configs).results
            if warm is not None:
                assert warm.warm_starts == 2  # the warm way really ran
    by_name = {result["name"]: result for result in results}
    [daemon] = pids_in(Path(leaky_pids))
    assert by_name["clean.py"]["status"] == ScriptStatus.PASSED, by_name
    assert by_name["clean.py"]["leaked"] == []
    assert leaked_pids(by_name["leaky.py"]) == [daemon]
    assert not still_alive([daemon], within=2.0)


def test_after_a_long_run_every_process_is_read(tmp_path: Path) -> None:
    # Long enough for the pids to have wrapped round: the pid order proves nothing, so a
    # process made before the "script" (here: this test) is found by its tag all the same.
    tag = f"CODOMYRMEX_EXEC_RUN=test-{os.getpid()}"
    name, value = tag.split("=")
    daemon = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, name: value}, start_new_session=True
    )
    try:
        later = subprocess.Popen(["true"])
        later.wait()
        no_group = 2**31 - 1
        assert sweep(tag.encode(), no_group, later.pid, 0.0) == []  # made before: not looked at
        [found] = sweep(tag.encode(), no_group, later.pid, 1e9)
        assert (found.pid, found.command) == (daemon.pid, "sleep 60")
        assert daemon.wait(timeout=10) == -signal.SIGKILL
    finally:
        daemon.kill()
        daemon.wait()


def test_finding_nothing_is_cheap(tmp_path: Path, started: list[Path]) -> None:
    # Only processes made after the script are read; a script that leaves nothing pays about
    # a listing of /proc. Bound: far below a script's own start-up (tens of ms).
    no_group = 2**31 - 1  # above any pid_max: no process is in it
    began = time.perf_counter()
    for _ in range(20):
        assert sweep(b"CODOMYRMEX_EXEC_RUN=none", no_group, os.getpid(), 0.0) == []
    assert (time.perf_counter() - began) / 20 < 0.02


def test_a_daemon_caught_inside_exec_is_found_once_it_can_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside ``execve`` a process's environment and command line read empty for a moment
    (its old memory is gone, the new one not yet set up). A daemon the script started just
    before it exited can be there when the sweep looks: it must still be found by its tag,
    not left for the session's end (CI saw this once on a loaded machine). The kernel's
    moment cannot be held open from here, so the first reads of a real daemon's files are
    made to return what they would return inside it."""
    from pytest_codomyrmex_exec.engine import leaks

    tag = f"CODOMYRMEX_EXEC_RUN=exec-{os.getpid()}"
    name, value = tag.split("=")
    script = subprocess.Popen(["true"])  # the script: the daemon is made after it
    script.wait()
    daemon = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, name: value}, start_new_session=True
    )
    try:
        still_in_exec = {f"/proc/{daemon.pid}/environ": 3, f"/proc/{daemon.pid}/cmdline": 3}
        real_read = leaks._read

        def read(path: str, chunk_size: int = 16384) -> bytes | None:
            if still_in_exec.get(path, 0) > 0:
                still_in_exec[path] -= 1
                return b""
            return real_read(path, chunk_size)

        monkeypatch.setattr(leaks, "_read", read)
        no_group = 2**31 - 1
        [found] = sweep(tag.encode(), no_group, script.pid, 0.0)
        assert found.pid == daemon.pid
        assert daemon.wait(timeout=10) == -signal.SIGKILL
        assert still_in_exec[f"/proc/{daemon.pid}/environ"] == 0, "the empty reads were not met"
    finally:
        daemon.kill()
        daemon.wait()
