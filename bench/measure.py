"""Run one command and measure it: wall time, peak RSS and CPU of its process tree.

Each run is a ``Popen`` reaped with ``os.wait4``, which returns the resource usage of that one
child and the descendants it waited for. ``resource.getrusage(RUSAGE_CHILDREN)`` would not do:
its ``ru_maxrss`` is the maximum over every child this process ever had, so one big run would
mask all later ones.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, final

RUN_TIMEOUT = 1800.0
"""Seconds after which a run is killed: a hung run must not hang the benchmark."""

# Variables that would change what pytest does in a child, and the bytecode switch of this
# sandbox's environment: with it, every run would recompile pytest and the plugin from source,
# which is a cost no ordinary install pays.
_DROPPED_ENV = (
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_CURRENT_TEST",
    "PYTHONDONTWRITEBYTECODE",
)
_DROPPED_PREFIXES = ("PYTEST_XDIST_",)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_QUIET_WINDOW = 0.5

_NO_TESTS_COLLECTED = 5
_PASSED = re.compile(r"\b(\d+) passed\b")
_COLLECTED = re.compile(r"\b(\d+) tests? collected\b")


@final
@dataclass(frozen=True, slots=True)
class Sample:
    """One measured run."""

    wall: float
    """Seconds from ``Popen`` to reaping, by ``time.perf_counter``."""
    maxrss_mb: float
    """Largest resident set of any one process in the tree (``ru_maxrss`` from ``wait4``)."""
    cpu: float
    """User plus system CPU seconds of the whole tree (the process and its reaped children)."""
    returncode: int
    ok: bool
    """Exit code 0 and, for pytest, the expected number of passed or collected tests."""
    problem: str = ""
    others_cpu: float = 0.0
    """CPU seconds the rest of the machine used meanwhile (``/proc/stat`` less our tree)."""
    waited: float = 0.0
    """Seconds spent before the run waiting for the machine to go quiet."""
    attempts: int = 1
    """Runs it took to get one undisturbed by the rest of the machine (the last one counts)."""
    disturbed: bool = False
    """Still disturbed after the last attempt: counted, but flagged in the table."""


def child_environment(pycache: Path) -> dict[str, str]:
    """The environment every measured command gets (pytest, peers and floor alike)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED_ENV and not key.startswith(_DROPPED_PREFIXES)
    }
    # Bytecode goes to a cache of the benchmark's own, so nothing is written into the repo or
    # site-packages, and after the warm-up round no run pays for compiling.
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _check(
    output: str, returncode: int, expect_passed: int | None, expect_collected: int | None
) -> str:
    """Empty if the run did what it should; else what went wrong, with the output's tail."""
    problem = ""
    # pytest exits with 5 when it collected nothing, which is what an empty folder should do.
    expected_code = _NO_TESTS_COLLECTED if expect_collected == 0 else 0
    if returncode != expected_code:
        problem = f"exit code {returncode}"
    elif expect_passed is not None:
        found = _PASSED.findall(output)
        if not found or int(found[-1]) != expect_passed:
            problem = f"expected {expect_passed} passed, saw {found[-1] if found else 'none'}"
    elif expect_collected:
        found = _COLLECTED.findall(output)
        if not found or int(found[-1]) != expect_collected:
            problem = f"expected {expect_collected} collected, saw {found[-1] if found else 'none'}"
    if problem:
        tail = "\n".join(output.rstrip().splitlines()[-15:])
        problem += "\n" + tail
    return problem


def run_once(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdin: Path | None = None,
    expect_passed: int | None = None,
    expect_collected: int | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Sample:
    """Run ``argv`` to completion and measure it; never raises for a failing command."""
    with (
        open(stdin if stdin is not None else os.devnull, "rb") as stdin_file,
        tempfile.TemporaryFile() as output,
    ):
        # Output goes to a file, not a pipe: nobody has to read it while we block in wait4.
        busy_before = busy_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=stdin_file, stdout=output, stderr=output
        )
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - start
        busy = busy_seconds() - busy_before
        returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode  # reaped here; keep Popen from waiting for it again
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    problem = _check(text, returncode, expect_passed, expect_collected)
    cpu = usage.ru_utime + usage.ru_stime
    return Sample(
        wall=wall,
        maxrss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        cpu=cpu,
        returncode=returncode,
        ok=not problem,
        problem=problem,
        others_cpu=max(busy - cpu, 0.0),
    )


def busy_seconds() -> float:
    """CPU seconds all processors have been busy since boot (steal counts: time we lacked)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def wait_for_quiet(threshold: float, limit: float) -> float:
    """Wait until the machine uses under ``threshold`` cores; give up after ``limit`` seconds.

    Other people's test runs on a shared machine would otherwise land on one arm and not the
    next. Returns the seconds waited.
    """
    if threshold <= 0:
        return 0.0
    start = time.monotonic()
    while True:
        before = busy_seconds()
        time.sleep(_QUIET_WINDOW)
        cores = (busy_seconds() - before) / _QUIET_WINDOW
        waited = time.monotonic() - start
        if cores < threshold or waited >= limit:
            return waited


def real_interpreter(candidate: str) -> str:
    """``candidate`` if it is a real interpreter; a launcher script (a pyenv shim) is refused.

    A shim would add its own start-up (a shell, pyenv's lookup) to every floor run and every
    peer subprocess, so the comparison would measure the shim. A virtualenv's ``python``
    symlink is fine and is kept as is: resolving it would lose the virtualenv.
    """
    with open(candidate, "rb") as handle:
        if handle.read(2) == b"#!":
            raise SystemExit(f"{candidate} is a launcher script, not an interpreter: pass --python")
    return candidate


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


@final
@dataclass(frozen=True, slots=True)
class Machine:
    """Where and with what the numbers were taken."""

    cpu_model: str
    cores: int
    usable_cores: int
    memory_gb: float
    system: str
    python: str
    interpreter: str
    pytest: str
    pytest_xdist: str
    plugin: str
    commit: str
    dirty: bool
    date: str
    load_before: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine(interpreter: str, repo: Path) -> Machine:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Machine(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        memory_gb=round(pages / 2**30, 1),
        system=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        interpreter=interpreter,
        pytest=_version("pytest"),
        pytest_xdist=_version("pytest-xdist"),
        plugin=_version("pytest-codomyrmex-exec"),
        commit=_git(repo, "rev-parse", "--short", "HEAD"),
        dirty=bool(_git(repo, "status", "--porcelain", "--", "pytest_codomyrmex_exec")),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=load_average(),
    )


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])
