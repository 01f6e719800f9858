"""Cancellation that cannot be lost, and the guardian: engine tests with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import is_alive, still_alive, write_script

from pytest_codomyrmex_exec import (
    AsyncJobStatus,
    AsyncScheduler,
    ParallelRunner,
    ScriptStatus,
    run_script_async,
)
from pytest_codomyrmex_exec.engine.guardian import guardian_supported, start_guardian

linux_only = pytest.mark.skipif(not guardian_supported(), reason="the guardian needs /proc")


def recorder(folder: Path, name: str) -> Path:
    """A script that records that it ran (a file named after it in ``folder/ran``)."""
    ran = folder / "ran"
    ran.mkdir(exist_ok=True)
    return write_script(folder, f"{name}.py", f"open({str(ran / name)!r}, 'w').close()\n")


def ran(folder: Path) -> list[str]:
    ran_dir = folder / "ran"
    return sorted(os.listdir(ran_dir)) if ran_dir.exists() else []


def read_pids(folder: Path, count: int, within: float = 20.0) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        found = sorted(folder.glob("pid_*"))
        if len(found) >= count:
            return [int(path.name[4:]) for path in found]
        assert time.monotonic() < deadline, f"only {len(found)} of {count} processes started"
        time.sleep(0.02)


def ignoring(pid: int, signum: int, within: float = 10.0) -> None:
    """Wait until ``pid`` ignores ``signum`` (its SigIgn mask in /proc)."""
    deadline = time.monotonic() + within
    while True:
        status = Path(f"/proc/{pid}/status").read_text()
        mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigIgn")), 16)
        if mask & (1 << (signum - 1)):
            return
        assert time.monotonic() < deadline, f"{pid} never ignored signal {signum}"
        time.sleep(0.01)


# -- closed stays closed ----------------------------------------------------------------------


def test_scheduler_closed_before_run_all_cancels_everything(tmp_path: Path) -> None:
    scheduler = AsyncScheduler(max_concurrency=2)
    scripts = [recorder(tmp_path, f"s{i}") for i in range(4)]
    for script in scripts[:2]:
        scheduler.schedule(run_script_async, args=(script,))
    # From another thread, before any loop runs: the cancel must wait for nobody.
    closing = threading.Thread(target=lambda: scheduler.close_threadsafe().result(5))
    closing.start()
    closing.join(5)
    for script in scripts[2:]:  # work still being prepared when the close came
        scheduler.schedule(run_script_async, args=(script,))
    jobs = asyncio.run(scheduler.run_all())
    assert [job.status for job in jobs.values()] == [AsyncJobStatus.CANCELLED] * 4
    assert scheduler.metrics.total_runs == 0
    assert ran(tmp_path) == []


def test_runner_closed_before_run_scripts_starts_nothing(tmp_path: Path) -> None:
    scripts = [recorder(tmp_path, f"s{i}") for i in range(4)]
    runner = ParallelRunner(max_workers=2)
    runner.close()
    outcome = runner.run_scripts(scripts)
    assert [r["status"] for r in outcome.results] == [ScriptStatus.CANCELLED] * 4
    assert ran(tmp_path) == []


class _SlowConfigs(Mapping[Any, Any]):
    """Per-script configs whose reading blocks until the runner has been closed meanwhile."""

    def __init__(self, reading: threading.Event, closed: threading.Event) -> None:
        self._reading, self._closed = reading, closed

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        self._reading.set()
        assert self._closed.wait(10), "close() never came"
        return iter(())

    def __len__(self) -> int:
        return 0


def test_runner_closed_while_run_scripts_prepares_starts_nothing(tmp_path: Path) -> None:
    scripts = [recorder(tmp_path, f"s{i}") for i in range(4)]
    runner = ParallelRunner(max_workers=2)
    reading, closed = threading.Event(), threading.Event()

    def close_when_reading() -> None:
        assert reading.wait(10)
        runner.close()
        closed.set()

    closer = threading.Thread(target=close_when_reading)
    closer.start()
    outcome = runner.run_scripts(scripts, configs=_SlowConfigs(reading, closed))
    closer.join(5)
    assert closed.is_set()
    assert [r["status"] for r in outcome.results] == [ScriptStatus.CANCELLED] * 4
    assert ran(tmp_path) == []


# -- a cancelled async run returns only once its tree is dead ---------------------------------


def test_run_script_async_cancelled_twice_returns_only_after_the_tree_is_dead(
    tmp_path: Path,
) -> None:
    stubborn = f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(os.path.join({str(tmp_path)!r}, f"pid_{{os.getpid()}}"), "w").close()
        if len(sys.argv) < 2:  # the script itself; its child in its group runs with an argument
            subprocess.Popen([sys.executable, __file__, "child"])
        time.sleep(60)
        """
    script = write_script(tmp_path, "stubborn.py", stubborn)

    async def main() -> tuple[list[int], float, list[int]]:
        task = asyncio.create_task(run_script_async(script, timeout=None))
        pids = await asyncio.to_thread(read_pids, tmp_path, 2)
        started = time.monotonic()
        task.cancel()
        await asyncio.sleep(0.2)  # inside the grace period: SIGTERM is ignored
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - started
        # Right now, before anything else runs, the tree must be dead. kill() returns before
        # the kernel has finished tearing a SIGKILLed process down (its pipes close first,
        # which is what ends our drain, then it turns zombie): allow it that moment, no more.
        return pids, elapsed, still_alive(pids, within=0.5)

    pids, elapsed, alive = asyncio.run(main())
    assert alive == [], f"returned while {alive} still ran"
    assert elapsed >= 0.9, f"returned after {elapsed:.2f} s, before the grace period ended"
    assert not still_alive(pids)


# -- the guardian -----------------------------------------------------------------------------

OWNER = """
import os, subprocess, sys, time
sys.path.insert(0, {root!r})
from pytest_codomyrmex_exec.engine.guardian import start_guardian

guardian = start_guardian("GUARDIAN_TEST_TAG", "tag-{name}")
print(guardian.pid, flush=True)
env = dict(os.environ, GUARDIAN_TEST_TAG="tag-{name}")
for _ in range(2):
    subprocess.Popen(
        [sys.executable, {sleeper!r}],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # as scripts are: a kill of our group misses them
    )
while len([n for n in os.listdir({folder!r}) if n.startswith("pid_")]) < 2:
    time.sleep(0.02)
{ending}
"""


def run_owner(tmp_path: Path, name: str, ending: str) -> tuple[int, list[int]]:
    """Run an owner process that starts a guardian and two tagged sleepers, then ends."""
    folder = tmp_path / name
    root = str(Path(__file__).resolve().parent.parent)
    sleeper = write_script(
        folder,
        "sleeper.py",
        f"""
        import os, time
        open(os.path.join({str(folder)!r}, f"pid_{{os.getpid()}}"), "w").close()
        time.sleep(60)
        """,
    )
    code = OWNER.format(
        root=root, folder=str(folder), sleeper=str(sleeper), name=name, ending=ending
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return int(done.stdout.split()[0]), read_pids(folder, 2)


@linux_only
@pytest.mark.parametrize("ending", ["os._exit(1)", "os.kill(os.getpid(), 9)"])
def test_guardian_kills_the_tagged_processes_when_its_owner_dies(
    tmp_path: Path, ending: str
) -> None:
    guardian, pids = run_owner(tmp_path, "dies", ending)
    assert not still_alive(pids, within=5.0), "tagged processes outlived their owner"
    assert not still_alive([guardian], within=5.0), "the guardian outlived its work"


@linux_only
def test_a_released_guardian_exits_and_kills_nothing(tmp_path: Path) -> None:
    guardian, pids = run_owner(tmp_path, "released", "guardian.release()")
    try:
        assert not is_alive(guardian)
        time.sleep(0.3)
        assert still_alive(pids, within=0) == pids, "a released guardian must not sweep"
    finally:
        for pid in pids:
            os.kill(pid, 9)


@linux_only
def test_guardian_survives_signals_to_its_owners_group(tmp_path: Path) -> None:
    guardian = start_guardian("GUARDIAN_TEST_TAG", "unused")
    try:
        assert os.getpgid(guardian.pid) == guardian.pid  # a session of its own
        ignoring(guardian.pid, signal.SIGTERM)  # once its start-up has got that far
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(guardian.pid, signum)
        time.sleep(0.2)
        assert is_alive(guardian.pid), "SIGTERM/SIGINT are for pytest, not the guardian"
    finally:
        guardian.release()
    assert not is_alive(guardian.pid)
