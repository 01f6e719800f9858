"""Run pytest in this process and record what it cost the pytest process itself.

    python bench/probe.py OUT_DIR [--profile] -- PYTEST_ARGS...

Runs ``pytest.main(PYTEST_ARGS)`` with one more plugin, a clock on pytest's own session hooks
(collection, the run loop, session finish, terminal summary), and writes ``OUT_DIR/probe.json``:
the CPU and peak RSS of this process alone (``RUSAGE_SELF``) and of the scripts it ran
(``RUSAGE_CHILDREN``), which from outside can only be had summed over the whole tree, and the
wall and main-thread CPU of each phase.

With ``--profile`` every thread runs under ``cProfile`` on its own CPU clock, and the profiles
are dumped to ``OUT_DIR``: the scripts are started and supervised on background threads,
which ``python -m cProfile`` (the main thread only) does not see. Nothing here names a function
of the plugin: the seams are pytest's public hooks and ``threading.Thread``.
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
    started, started_cpu = time.perf_counter(), time.thread_time()
    main_profiler = cProfile.Profile(time.thread_time)
    if profile:
        _profile_every_thread()
        code = main_profiler.runcall(pytest.main, pytest_args, plugins=[clock])
    else:
        code = pytest.main(pytest_args, plugins=[clock])
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
