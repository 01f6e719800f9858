"""Leaked processes, plugin side: the run summary names what a script left running, the
results stream records it, and ini ``exec_leaks`` decides whether it fails the script."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from conftest import ExecPytester, Mode, still_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Leaves a `sleep 300` in its group and a daemon (double fork, output on /dev/null, so no
# pipe is held) out of it; their pids go to <script>.leftovers and to the tracker.
LEAKY = """\
import os, subprocess, time
sleeper = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL)
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
daemon = int(os.read(read, 100))
for pid in (sleeper.pid, daemon):
    _track(pid)
with open(os.path.basename(__file__) + ".leftovers", "w") as out:
    out.write(f"{sleeper.pid} {daemon}\\n")
"""

# Runs while the session goes on, once leaky_script.py has been reported: its leftovers must
# be dead by then, not only at the session's end.
CHECKS_THEY_ARE_GONE = """\
import os, time
_until_reported("leaky_script")
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
pids = [int(pid) for pid in open("leaky_script.py.leftovers").read().split()]
deadline = time.monotonic() + 5  # SIGKILL and init's reaping take a moment on a busy machine
while any(map(alive, pids)) and time.monotonic() < deadline:
    time.sleep(0.02)
left = [pid for pid in pids if alive(pid)]
if left:
    raise SystemExit(f"still running after leaky_script.py was reported: {left}")
"""


def write_tree(px: ExecPytester) -> None:
    px.script("leaky_script.py", LEAKY, track=True)
    px.script("clean_script.py", 'import subprocess\nsubprocess.run(["sleep", "0.1"])\n')
    px.script("z_check_script.py", CHECKS_THEY_ARE_GONE, waits=True)


def leftovers(px: ExecPytester, script: str = "leaky_script.py") -> list[int]:
    return [int(pid) for pid in (px.path / f"{script}.leftovers").read_text().split()]


def records(px: ExecPytester) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    return {str(line["nodeid"]).split("::")[0]: line for line in lines}


@pytest.mark.modes("inline", "process", "async-warm", "xdist")
def test_leftovers_are_killed_at_once_summed_up_and_recorded(px: ExecPytester, mode: Mode) -> None:
    write_tree(px)
    result = px.run(*mode, *px.report_args(), "--exec-workers", "3")

    result.assert_outcomes(passed=3)  # warn, the default: named, not failed
    sleeper, daemon = leftovers(px)
    result.stdout.fnmatch_lines(
        [
            "left processes running (killed when the script exited):",
            "  leaky_script.py: 2 processes",
            f"*{sleeper}  sleep 300",
            f"*{daemon}  *leaky_script.py",  # the forked interpreter's command line
        ]
    )
    assert "clean_script.py: " not in result.stdout.str()
    by_script = records(px)
    leaky = by_script["leaky_script.py"]
    assert leaky["leaked_count"] == 2
    listed = {entry["pid"]: entry["command"] for entry in leaky["leaked"]}
    assert listed.keys() == {sleeper, daemon}
    assert listed[sleeper] == "sleep 300"
    clean = by_script["clean_script.py"]
    assert (clean["leaked"], clean["leaked_count"]) == ([], 0)
    assert not still_alive([sleeper, daemon], within=1.0)


@pytest.mark.modes("inline", "async")
def test_exec_leaks_fail_fails_the_script_saying_what_it_left(px: ExecPytester, mode: Mode) -> None:
    px.script("leaky_script.py", LEAKY, track=True)
    px.script("broken_script.py", LEAKY + "raise SystemExit(3)\n", track=True)
    px.script("clean_script.py", "")
    px.ini(exec_leaks="fail")
    result = px.run(*mode, "-q", "-rf", *px.junit_args())

    result.assert_outcomes(passed=1, failed=2)
    sleeper, daemon = leftovers(px)
    words = f"left 2 processes running: {sleeper} (sleep 300), {daemon} (*leaky_script.py)"
    result.stdout.fnmatch_lines_random(
        [
            f"leaky_script.py failed: {words} (after *",
            # The short summary is cut at the terminal's width: the daemon's command line
            # holds the interpreter's path, so only what comes before it is certain to show.
            f"FAILED leaky_script.py*left 2 processes running: {sleeper} (sleep 300), {daemon} (*",
            # It failed by its exit code anyway: the leak is said beside it.
            "broken_script.py failed: exit code 3 after *",
            "it also left 2 processes running: *(sleep 300), *(*broken_script.py)",
            "FAILED broken_script.py*exit code 3; left 2 processes running: *",
            # -q: the summary's line, and one more for the leaks
            "codomyrmex-exec: left processes running: *broken_script.py (2)*",
        ]
    )
    assert "leaky_script.py (2)" in result.stdout.str()
    [message] = px.junit_by_name()["leaky_script"].messages
    assert f"{sleeper} (sleep 300)" in message
    px.assert_no_process_left(at_least=6)


def test_exec_leaks_ignore_says_nothing_and_a_bad_value_names_the_key(px: ExecPytester) -> None:
    px.script("leaky_script.py", LEAKY, track=True)
    quiet = px.run("-o", "exec_leaks=ignore", *px.report_args())
    quiet.assert_outcomes(passed=1)
    assert "left processes running" not in quiet.stdout.str()
    assert records(px)["leaky_script.py"]["leaked_count"] == 2  # the stream keeps the facts
    px.assert_no_process_left(at_least=3)

    bad = px.run_inprocess("-o", "exec_leaks=sometimes")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["*ini option 'exec_leaks': expected one of warn, fail, ignore, got 'sometimes'*"]
    )
