"""Background engines for the parallel session: the process-pool runner or the async scheduler.

Both take jobs in start order, run at most ``workers`` at once, post a ``JobEvent`` when a
script starts and when it finishes, and on ``close()`` stop whatever still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, final

from . import scheduler as sched
from .async_script import run_script_async
from .collect import should_retry
from .options import ExecOptions
from .parallel_runner import ParallelRunner, ProgressEvent
from .results import ScriptResult, ScriptStatus, make_result
from .settings import ScriptSettings

_CLOSE_TIMEOUT = 10.0


@final
@dataclass(frozen=True, slots=True)
class ScriptJob:
    key: int
    path: Path
    settings: ScriptSettings


@final
@dataclass(frozen=True, slots=True)
class JobEvent:
    """``result`` is ``None`` for "started"; set once, for "finished"."""

    key: int
    result: ScriptResult | None = None
    runs: int = 0


class ScriptBackend(Protocol):
    def start(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        """Start running ``jobs`` (already in start order) in the background."""

    def close(self) -> None:
        """Cancel what has not finished, kill running scripts, wait for the background."""


def make_backend(options: ExecOptions, events: queue.SimpleQueue[JobEvent]) -> ScriptBackend:
    if options.backend == "async":
        return AsyncBackend(options.workers, events)
    return ProcessBackend(options.workers, events)


def _cancelled(path: Path) -> ScriptResult:
    return make_result(str(path), ScriptStatus.CANCELLED, error="cancelled")


class ProcessBackend:
    """The :class:`ParallelRunner` (a thread per running script, each waiting on its child)."""

    def __init__(self, workers: int, events: queue.SimpleQueue[JobEvent]) -> None:
        self._events = events
        self._jobs: Sequence[ScriptJob] = ()
        self._runner = ParallelRunner(workers, progress_callback=self._progress)
        self._thread: threading.Thread | None = None

    def start(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        self._jobs = jobs
        configs = {str(job.path): _run_kwargs(job.settings, base_env) for job in jobs}
        self._thread = threading.Thread(
            target=self._runner.run_scripts,
            args=([job.path for job in jobs],),
            kwargs={"configs": configs},
            name="codomyrmex-exec-runner",
            daemon=True,
        )
        self._thread.start()

    def _progress(self, event: ProgressEvent) -> None:
        key = self._jobs[event.index].key
        self._events.put(JobEvent(key, event.result, runs=1 if event.result else 0))

    def close(self) -> None:
        self._runner.cancel()
        if self._thread is not None:
            self._thread.join(_CLOSE_TIMEOUT)


class AsyncBackend:
    """The :class:`AsyncScheduler` on an event loop of its own thread, asyncio subprocesses."""

    def __init__(self, workers: int, events: queue.SimpleQueue[JobEvent]) -> None:
        self._events = events
        self._scheduler = sched.AsyncScheduler(max_concurrency=workers, event_sink=self._sink)
        self._keys: dict[str, ScriptJob] = {}
        self._thread: threading.Thread | None = None

    def start(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._main(jobs, base_env),),
            name="codomyrmex-exec-scheduler",
            daemon=True,
        )
        self._thread.start()

    async def _main(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        for position, job in enumerate(jobs):
            job_id = self._scheduler.schedule(
                _run_with_retries,
                name=str(job.path),
                args=(job, base_env),
                priority=position,  # jobs arrive sorted: keep exactly that order
            )
            self._keys[job_id] = job
        await self._scheduler.run_all()

    def _sink(self, event: sched.JobEvent) -> None:
        job = self._keys.get(event.job_id)
        if job is None:
            return
        kind = event.kind
        if kind == sched.JobEventKind.STARTED:
            self._events.put(JobEvent(job.key))
        elif kind == sched.JobEventKind.COMPLETED:
            record = self._scheduler.get_job(event.job_id)
            assert record is not None
            result, runs = record.result
            self._events.put(JobEvent(job.key, result, runs))
        elif kind == sched.JobEventKind.CANCELLED:
            self._events.put(JobEvent(job.key, _cancelled(job.path), event.runs))
        elif kind == sched.JobEventKind.FAILED:
            # Only reached if the engine itself broke: the script's failures are results.
            failure = make_result(str(job.path), ScriptStatus.ERROR, error=event.error)
            self._events.put(JobEvent(job.key, failure, event.runs))

    def close(self) -> None:
        if self._thread is None:
            return
        pending = self._scheduler.cancel_all_threadsafe()
        # The loop may have ended already (nothing to cancel): join regardless.
        with contextlib.suppress(Exception):
            pending.result(_CLOSE_TIMEOUT)
        self._thread.join(_CLOSE_TIMEOUT)


def _run_kwargs(settings: ScriptSettings, base_env: Mapping[str, str]) -> dict[str, Any]:
    return {**settings.run_kwargs(), "base_env": base_env}


async def _run_with_retries(
    job: ScriptJob, base_env: Mapping[str, str]
) -> tuple[ScriptResult, int]:
    runs = 0
    while True:
        result = await run_script_async(job.path, **_run_kwargs(job.settings, base_env))
        runs += 1
        if not should_retry(result, runs, job.settings.max_runs):
            return result, runs
