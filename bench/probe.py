"""Run pytest in this process and record what it cost the pytest process itself.

    python bench/probe.py OUT_DIR [--profile] [--sides] -- PYTEST_ARGS...

Runs ``pytest.main(PYTEST_ARGS)`` with one more plugin, a clock on pytest's own session hooks
(collection, the run loop, session finish, terminal summary), and writes ``OUT_DIR/probe.json``:
the CPU and peak RSS of this process alone (``RUSAGE_SELF``) and of the scripts it ran
(``RUSAGE_CHILDREN``), which from outside can only be had summed over the whole tree, and the
wall and main-thread CPU of each phase.

With ``--profile`` every thread runs under ``cProfile`` on its own CPU clock, and the profiles
are dumped to ``OUT_DIR``: the scripts are started and supervised on background threads,
which ``python -m cProfile`` (the main thread only) does not see. Nothing here names a function
of the plugin: the seams are pytest's public hooks and ``threading.Thread``.

With ``--sides`` the record also holds two snapshots, after the first ``SIDES_SKIP`` items and
as the session finishes (before any plugin's own ``pytest_sessionfinish``), of the CPU and
minor page faults of this process, of its reaped children, and of a warm-start server among
its children (found by its command line, read from ``/proc``): its own and its reaped
children's, which are the scripts it forked. Their difference is the steady state of the run,
without anyone's start-up.
"""

from __future__ import annotations

import cProfile
import json
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

PHASES = ("collection", "run loop", "session finish", "terminal summary")
SIDES_SKIP = 20
"""Items finished before the first snapshot of ``--sides``: the servers are up by then."""
_WARM_SERVER = b"_warm_server.py"
_TICK = os.sysconf("SC_CLK_TCK")


class PhaseClock:
    """Wall and main-thread CPU seconds of each of pytest's session phases."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    def _time(self, phase: str) -> Generator[None, object, object]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return (yield)
        finally:
            self.phases[phase] = {
                "wall": time.perf_counter() - wall,
                "cpu": time.thread_time() - cpu,
            }

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection(self) -> Generator[None, object, object]:
        return (yield from self._time("collection"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self) -> Generator[None, object, object]:
        return (yield from self._time("run loop"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        return (yield from self._time("session finish"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self) -> Generator[None, object, object]:
        return (yield from self._time("terminal summary"))


def _server_pids() -> list[int]:
    """This process's children that run the warm-start server."""
    me = str(os.getpid())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            if stat.rsplit(b")", 1)[1].split()[1].decode() != me:
                continue
            if _WARM_SERVER in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except (OSError, IndexError):
            continue  # it ended meanwhile
    return found


def _proc_usage(pid: int) -> dict[str, float]:
    """A process's own and its reaped children's CPU seconds and minor faults (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    # After the name: state ppid ... minflt(8) cminflt(9) ... utime(12) stime(13) cutime(14)
    return {
        "cpu": (int(fields[11]) + int(fields[12])) / _TICK,
        "minflt": int(fields[7]),
        "children_cpu": (int(fields[13]) + int(fields[14])) / _TICK,
        "children_minflt": int(fields[8]),
    }


class SidesProbe:
    """Snapshots of what each side (pytest, the scripts, a warm server) has spent so far."""

    def __init__(self) -> None:
        self.items = 0
        self.snapshots: dict[str, dict[str, Any]] = {}

    def _snapshot(self, label: str) -> None:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        servers: list[dict[str, float]] = []
        for pid in _server_pids():
            try:
                servers.append(_proc_usage(pid))
            except OSError:
                continue
        self.snapshots[label] = {
            "items": self.items,
            "self_cpu": own.ru_utime + own.ru_stime,
            "self_minflt": own.ru_minflt,
            "children_cpu": children.ru_utime + children.ru_stime,
            "children_minflt": children.ru_minflt,
            "servers": servers,
        }

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        self.items += 1
        if self.items == SIDES_SKIP:
            self._snapshot("start")

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        self._snapshot("end")
        return (yield)


_lock = threading.Lock()
_profiles: list[tuple[str, cProfile.Profile]] = []


def _profile_every_thread() -> None:
    """Give each thread started from now on a profiler of its own, on its own CPU clock."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profiler = cProfile.Profile(time.thread_time)
        with _lock:
            _profiles.append((self.name, profiler))
        profiler.runcall(original, self)

    threading.Thread.run = run  # type: ignore[method-assign]


def _dump(out: Path, index: int, name: str, profiler: cProfile.Profile) -> dict[str, Any] | None:
    profiler.create_stats()
    if not profiler.stats:
        return None  # a thread that never ran Python code
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    path = out / f"thread-{index:04d}-{safe}.prof"
    profiler.dump_stats(path)
    cpu = sum(entry[2] for entry in profiler.stats.values())
    return {"name": name, "file": path.name, "cpu": cpu}


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv or argv[0] == "--":
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    out, options, pytest_args = Path(argv[0]), argv[1:split], argv[split + 1 :]
    out.mkdir(parents=True, exist_ok=True)
    profile = "--profile" in options
    sys.path.insert(0, os.getcwd())  # as under ``python -m pytest``

    clock = PhaseClock()
    sides = SidesProbe()
    plugins: list[object] = [clock, *([sides] if "--sides" in options else [])]
    started, started_cpu = time.perf_counter(), time.thread_time()
    main_profiler = cProfile.Profile(time.thread_time)
    if profile:
        _profile_every_thread()
        code = main_profiler.runcall(pytest.main, pytest_args, plugins=plugins)
    else:
        code = pytest.main(pytest_args, plugins=plugins)
    clock.phases["pytest.main in all"] = {
        "wall": time.perf_counter() - started,
        "cpu": time.thread_time() - started_cpu,
    }

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    record: dict[str, Any] = {
        "exit": int(code),
        "self_cpu": own.ru_utime + own.ru_stime,
        "self_maxrss_mb": own.ru_maxrss / 1024,
        "children_cpu": children.ru_utime + children.ru_stime,
        "phases": clock.phases,
        "threads": [],
        "sides": sides.snapshots,
    }
    if profile:
        with _lock:
            finished = [("MainThread", main_profiler), *_profiles]
        dumped = [_dump(out, index, name, prof) for index, (name, prof) in enumerate(finished)]
        record["threads"] = [entry for entry in dumped if entry is not None]
    (out / "probe.json").write_text(json.dumps(record, indent=2) + "\n")
    sys.stdout.flush()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
