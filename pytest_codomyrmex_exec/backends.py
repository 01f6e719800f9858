"""Background engines for the parallel session: the process-pool runner or the async scheduler.

Both take jobs in start order, run at most ``workers`` at once, post a ``JobEvent`` when a
script starts and when it finishes, and on ``close()`` stop whatever still runs.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, final

from .collect import should_retry
from .options import ExecOptions
from .parallel_runner import ParallelRunner, ProgressEvent
from .results import ScriptResult, ScriptStatus, make_result
from .settings import ScriptSettings

if TYPE_CHECKING:
    from . import scheduler as sched

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


def _broken(path: Path, exc: BaseException) -> ScriptResult:
    return make_result(
        str(path), ScriptStatus.ERROR, error=f"the engine broke: {type(exc).__name__}: {exc}"
    )


class _Outbox:
    """Posts each job's final event once, and remembers which jobs still lack one.

    If the engine's thread dies, the session would wait forever for those results; the
    backend posts an error result for each of them instead.
    """

    def __init__(self, events: queue.SimpleQueue[JobEvent]) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._finished: set[int] = set()

    def started(self, key: int) -> None:
        self._events.put(JobEvent(key))

    def finished(self, key: int, result: ScriptResult, runs: int) -> None:
        with self._lock:
            if key in self._finished:
                return
            self._finished.add(key)
        self._events.put(JobEvent(key, result, runs))

    def fail_unfinished(self, jobs: Sequence[ScriptJob], exc: BaseException) -> None:
        for job in jobs:
            self.finished(job.key, _broken(job.path, exc), 0)


class _RetryingExecutor(Executor):
    """A thread pool that runs a submitted script again while ``max_runs`` allows.

    The ParallelRunner has no retries; it accepts any executor, and each call it submits
    runs one script and returns its result. Retrying inside that call keeps the script in
    its worker slot (as the AsyncScheduler does) and the runner sees one final result. A
    cancelled batch makes the next attempt return ``cancelled``, which is never retried.
    """

    def __init__(self, workers: int, max_runs: Mapping[str, int]) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="codomyrmex-exec")
        self._max_runs = max_runs
        self._runs: dict[str, int] = {}

    def runs(self, script: str) -> int:
        return self._runs.get(script, 1)

    def submit(  # type: ignore[override]
        self, fn: Callable[..., ScriptResult], /, *args: Any, **kwargs: Any
    ) -> Future[ScriptResult]:
        def attempts() -> ScriptResult:
            runs = 0
            while True:
                result = fn(*args, **kwargs)
                runs += 1
                if not should_retry(result, runs, self._max_runs.get(result["script"], 1)):
                    # Written before the future completes, read after: no lock needed.
                    self._runs[result["script"]] = runs
                    return result

        return self._pool.submit(attempts)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait, cancel_futures=cancel_futures)


class ProcessBackend:
    """The :class:`ParallelRunner` (a thread per running script, each waiting on its child)."""

    def __init__(self, workers: int, events: queue.SimpleQueue[JobEvent]) -> None:
        self._workers = workers
        self._outbox = _Outbox(events)
        self._jobs: Sequence[ScriptJob] = ()
        self._runner: ParallelRunner | None = None
        self._retrying: _RetryingExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        self._jobs = jobs
        max_runs = {
            os.path.abspath(job.path): job.settings.max_runs
            for job in jobs
            if job.settings.max_runs > 1
        }
        executor: Callable[[], Executor] | None = None
        if max_runs:
            # Only when asked: the runner's own pool reports starts exactly and adds nothing
            # to the scripts' environment, a foreign executor does neither.
            def make_executor() -> Executor:
                self._retrying = _RetryingExecutor(self._workers, max_runs)
                return self._retrying

            executor = make_executor
        self._runner = ParallelRunner(
            self._workers, progress_callback=self._progress, executor=executor
        )
        configs = {str(job.path): _run_kwargs(job.settings, base_env) for job in jobs}
        self._thread = threading.Thread(
            target=self._serve,
            args=([job.path for job in jobs], configs),
            name="codomyrmex-exec-runner",
            daemon=True,
        )
        self._thread.start()

    def _serve(self, paths: list[Path], configs: dict[str, dict[str, Any]]) -> None:
        assert self._runner is not None
        try:
            self._runner.run_scripts(paths, configs=configs)
        except Exception as exc:
            self._outbox.fail_unfinished(self._jobs, exc)

    def _progress(self, event: ProgressEvent) -> None:
        key = self._jobs[event.index].key
        if event.result is None:
            self._outbox.started(key)
            return
        runs = 0 if event.result["status"] == ScriptStatus.CANCELLED else 1
        if self._retrying is not None and runs:
            runs = self._retrying.runs(event.script)
        self._outbox.finished(key, event.result, runs)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        if self._thread is not None:
            self._thread.join(_CLOSE_TIMEOUT)


class AsyncBackend:
    """The :class:`AsyncScheduler` on an event loop of its own thread, asyncio subprocesses."""

    def __init__(self, workers: int, events: queue.SimpleQueue[JobEvent]) -> None:
        # Imported here: asyncio and the scheduler cost start-up time every other run skips.
        from . import scheduler

        self._kinds = scheduler.JobEventKind
        self._outbox = _Outbox(events)
        self._scheduler = scheduler.AsyncScheduler(max_concurrency=workers, event_sink=self._sink)
        self._keys: dict[str, ScriptJob] = {}
        self._thread: threading.Thread | None = None

    def start(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        self._thread = threading.Thread(
            target=self._serve,
            args=(jobs, base_env),
            name="codomyrmex-exec-scheduler",
            daemon=True,
        )
        self._thread.start()

    def _serve(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        import asyncio

        try:
            asyncio.run(self._main(jobs, base_env))
        except Exception as exc:
            self._outbox.fail_unfinished(jobs, exc)

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
        if kind == self._kinds.STARTED:
            self._outbox.started(job.key)
        elif kind == self._kinds.COMPLETED:
            record = self._scheduler.get_job(event.job_id)
            assert record is not None
            result, runs = record.result
            self._outbox.finished(job.key, result, runs)
        elif kind == self._kinds.CANCELLED:
            self._outbox.finished(job.key, _cancelled(job.path), event.runs)
        elif kind == self._kinds.FAILED:
            # Only reached if the engine itself broke: the script's failures are results.
            failure = make_result(str(job.path), ScriptStatus.ERROR, error=event.error)
            self._outbox.finished(job.key, failure, event.runs)

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
    from .async_script import run_script_async

    runs = 0
    while True:
        result = await run_script_async(job.path, **_run_kwargs(job.settings, base_env))
        runs += 1
        if not should_retry(result, runs, job.settings.max_runs):
            return result, runs
