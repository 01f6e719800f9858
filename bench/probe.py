"""Run pytest in this process and record what it cost the pytest process itself.

    python bench/probe.py OUT_DIR [--threads] -- PYTEST_ARGS...

Runs pytest as ``python -m pytest`` would, then writes ``OUT_DIR/probe.json`` with the CPU and
peak RSS of this process alone (``RUSAGE_SELF``) and of the scripts it ran
(``RUSAGE_CHILDREN``). From outside only the sum over the whole tree can be had.

With ``--threads`` every thread is profiled on its own CPU clock (``time.thread_time``) and
each profile is dumped to ``OUT_DIR``: ``python -m cProfile`` profiles only the main thread,
which in ``--exec-parallel`` mostly waits, while the scripts are started and supervised on
background threads.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import re
import resource
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_profiles: list[tuple[str, cProfile.Profile]] = []


def _profile_every_thread() -> None:
    """Give each thread started from now on a profiler of its own, on its own CPU clock."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profiler = cProfile.Profile(time.thread_time)
        with _lock:
            _profiles.append((self.name, profiler))
        profiler.enable()
        try:
            original(self)
        finally:
            profiler.disable()

    threading.Thread.run = run  # type: ignore[method-assign]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _dump(out: Path, index: int, name: str, profiler: cProfile.Profile) -> dict[str, Any] | None:
    try:
        stats = pstats.Stats(profiler)
    except TypeError:  # a thread that never ran any Python code has no stats
        return None
    path = out / f"thread-{index:04d}-{_safe(name)}.prof"
    stats.dump_stats(str(path))
    return {"name": name, "file": path.name, "cpu": stats.total_tt}  # type: ignore[attr-defined]


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv or not argv or argv[0] == "--":
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    out, options, pytest_args = Path(argv[0]), argv[1:split], argv[split + 1 :]
    out.mkdir(parents=True, exist_ok=True)
    threads = "--threads" in options

    main_profiler: cProfile.Profile | None = None
    if threads:
        _profile_every_thread()
        main_profiler = cProfile.Profile(time.thread_time)
        main_profiler.enable()

    # As under ``python -m pytest``: the current folder first on sys.path, not bench/.
    sys.path[0] = os.getcwd()
    sys.argv = ["pytest", *pytest_args]
    try:
        runpy.run_module("pytest", run_name="__main__", alter_sys=True)
        code: object = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        if main_profiler is not None:
            main_profiler.disable()

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    record: dict[str, Any] = {
        "exit": code if isinstance(code, int) else 1,
        "self_cpu": own.ru_utime + own.ru_stime,
        "self_user": own.ru_utime,
        "self_sys": own.ru_stime,
        "self_maxrss_mb": own.ru_maxrss / 1024,
        "children_cpu": children.ru_utime + children.ru_stime,
        "children_maxrss_mb": children.ru_maxrss / 1024,
        "threads": [],
    }
    if main_profiler is not None:
        dumped = [_dump(out, 0, "MainThread", main_profiler)]
        with _lock:
            finished = list(_profiles)
        dumped += [_dump(out, i, name, prof) for i, (name, prof) in enumerate(finished, 1)]
        record["threads"] = [entry for entry in dumped if entry is not None]
    (out / "probe.json").write_text(json.dumps(record, indent=2) + "\n")
    sys.stdout.flush()
    return record["exit"] if isinstance(record["exit"], int) else 1


if __name__ == "__main__":
    sys.exit(main())
