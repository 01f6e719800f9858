"""ParallelRunner: run many scripts at once on a pluggable executor, with fail-fast and cancel."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, final

from .events import RunEvent, RunEventKind, Subscription
from .launch import COLD, Launcher, kill_tagged
from .resources import Amounts, ResourcePool, unmet_demand
from .results import ExecutionResult, ScriptResult, ScriptStatus, make_result
from .run import CancelEvent, run_spec
from .spec import (
    DEFAULT_TIMEOUT,
    RUN_KEYWORDS,
    InvalidSpec,
    ScriptSpec,
    default_workers,
    validate_timeout,
)

logger = logging.getLogger(__name__)

BATCH_ENV_VAR = "PYTEST_CODOMYRMEX_EXEC_BATCH"
"""Set in the environment of scripts run on a foreign executor, so that scripts orphaned by a
dead pool worker can be found (Linux, via ``/proc``) and killed."""

# How often the batch loop looks at futures when nothing woke it. It bounds the delay of a
# "started" event on a foreign executor, whose futures give no callback when they start.
_INTERRUPT_WAIT = 10.0
_POLL = 0.05

CONFIG_KEYS = frozenset(RUN_KEYWORDS)
"""Keys allowed in a per-script config: the :class:`ScriptSpec` fields."""

_FAILING = frozenset({ScriptStatus.FAILED, ScriptStatus.TIMEOUT, ScriptStatus.ERROR})

# Keyed by a script's path (str or os.PathLike). Typed ``Any`` because a Mapping's key type is
# invariant: ``dict[Path, ...]`` would not match ``Mapping[str | PathLike[str], ...]``.
ScriptConfigs = Mapping[Any, "Mapping[str, Any] | ScriptSpec"]

ProgressEvent = RunEvent
"""The events ``progress_callback`` receives: :class:`RunEvent` (``index`` is the script's
position in the list given to ``run_scripts``)."""


@final
@dataclass(frozen=True, slots=True)
class FileCancelToken:
    """A cancel signal that pickles: set means the file at ``path`` exists.

    A ``threading.Event`` cannot cross into a process pool; a path can, and every worker on
    this machine can check it (``run_script`` polls ``is_set()`` every few milliseconds).
    """

    path: str

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def set(self) -> None:
        # A missing folder means the batch is over: nothing left to stop.
        with suppress(FileNotFoundError), open(self.path, "a"):
            pass


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    spec: ScriptSpec

    @property
    def script(self) -> str:
        return self.spec.script


class _Batch:
    """The state one ``run_scripts`` call shares with ``cancel()`` and its workers."""

    def __init__(self, *, own_threads: bool) -> None:
        self.wakeup = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._folder: str | None = None
        self.token: CancelEvent | FileCancelToken
        if own_threads:
            self.token = CancelEvent()
        else:
            self._folder = tempfile.mkdtemp(prefix="codomyrmex-exec-")
            self.token = FileCancelToken(os.path.join(self._folder, "cancel"))

    @property
    def marker(self) -> str:
        """A value unique to this batch, for :data:`BATCH_ENV_VAR`."""
        assert self._folder is not None
        return self._folder

    @property
    def reason(self) -> str | None:
        return self._reason

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
        logger.info("cancelling batch: %s", reason)
        self.token.set()
        self.wakeup.set()

    def close(self) -> None:
        if isinstance(self.token, CancelEvent):
            self.token.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


class ParallelRunner:
    """Run scripts concurrently with :func:`run_script`; one :class:`ExecutionResult` per batch.

    ``executor`` is where the scripts run. By default each batch gets its own
    ``ThreadPoolExecutor`` of ``max_workers`` threads: a worker only waits on its child
    process, so threads cost nothing, and a process pool would pay a second interpreter
    start-up for every script. Any other ``concurrent.futures.Executor`` (a
    ``ProcessPoolExecutor``, a Dask ``Client.get_executor()``), or a zero-argument factory
    returning one, may be passed instead. A passed executor is left open for its owner; one
    made by a factory is shut down after the batch. With a passed executor ``max_workers``
    limits the scripts in flight only when given explicitly; otherwise all are submitted at once
    and the executor's own size governs. What goes to a passed executor pickles: cancellation
    reaches its workers through a file in a temporary folder (so it works for workers on this
    machine), scripts still queued there are cancelled with ``Future.cancel()``, and each
    script's environment carries :data:`BATCH_ENV_VAR` so that, when a worker dies, the scripts
    it left running are found and killed (Linux). A broken pool yields ``"error"`` results.

    ``fail_fast``: the first script that fails, errors or times out stops the batch; running
    scripts are killed and the rest are recorded ``"cancelled"``.

    ``progress_callback`` receives a :class:`ProgressEvent` when each script starts and ends,
    always on the thread that drives the batch (the caller of :meth:`run_scripts`; for
    :meth:`run_scripts_async`, a thread of the event loop's default executor). On the
    default pool "started" is exact; on a passed executor it is sent when the future reports
    ``running()`` (a ``ProcessPoolExecutor`` says so when it queues the call for a worker, a
    moment early), or just before "finished" if it was never seen running. An exception from
    the callback is logged and ignored, as ``Future.add_done_callback`` does.

    ``output_callback``, if set, receives each script's ``output`` events (chunks of stdout
    and stderr as they are read) and its ``retry`` events (an attempt's output has ended),
    on the thread that runs the script; only with the default pool (what a passed executor
    runs must pickle). Left ``None``, no output event is made.

    ``resources`` are capacities (``{"GPU": 1}``): a script whose spec asks for resources
    starts only when they are free (meanwhile later scripts that fit start first), so they
    are never oversubscribed; one asking for more than exists is an ``"error"`` result
    naming the resource. Without capacities (``None``) demands are not tracked.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        fail_fast: bool = False,
        progress_callback: Callable[[ProgressEvent], object] | None = None,
        executor: Executor | Callable[[], Executor] | None = None,
        launcher: Launcher = COLD,
        resources: Amounts | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = default_workers()
            self._in_flight_explicit = False
        else:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int, got {max_workers!r}")
            if max_workers < 1:
                raise ValueError(f"max_workers must be at least 1, got {max_workers}")
            self._in_flight_explicit = True
        if executor is not None and not isinstance(executor, Executor) and not callable(executor):
            raise TypeError(
                "executor must be a concurrent.futures.Executor or a factory returning one, "
                f"got {executor!r}"
            )
        self.max_workers: int = max_workers
        self.fail_fast = fail_fast
        self.progress_callback = progress_callback
        self.output_callback: Callable[[RunEvent], object] | None = None
        self._executor = executor
        self._launcher = launcher
        self._capacities = None if resources is None else dict(resources)
        self._lock = threading.Lock()
        self._batches: set[_Batch] = set()
        self._closed = False

    # -- public API ---------------------------------------------------------------------------

    def run_scripts(
        self,
        scripts: Iterable[str | os.PathLike[str]],
        timeout: float | None = DEFAULT_TIMEOUT,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        configs: ScriptConfigs | None = None,
        *,
        base_env: Mapping[str, str] | None = None,
    ) -> ExecutionResult:
        """Run ``scripts`` and return their results, one per script, in input order.

        ``timeout``, ``cwd`` and ``env`` apply to every script. ``configs`` maps a script's
        path (relative paths are taken from the current directory) to ``run_script`` keyword
        arguments for that script alone; its ``env`` is added on top of the batch's ``env``,
        every other key replaces the batch value. Invalid arguments raise ``ValueError`` or
        ``TypeError`` before any script starts; nothing a script or the pool does raises.
        ``base_env`` replaces ``os.environ`` as the environment the scripts start from.
        """
        batch = self._open_batch()  # first: a cancel() from now on reaches this batch
        try:
            jobs = self._prepare(scripts, timeout, cwd, env, configs)
        except BaseException:
            self._close_batch(batch)
            raise
        return self._execute(jobs, batch, base_env)

    async def run_scripts_async(
        self,
        scripts: Iterable[str | os.PathLike[str]],
        timeout: float | None = DEFAULT_TIMEOUT,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        configs: ScriptConfigs | None = None,
        *,
        base_env: Mapping[str, str] | None = None,
    ) -> ExecutionResult:
        """:meth:`run_scripts` without blocking the event loop (it runs on the loop's
        default executor). If the awaiting task is cancelled the batch is cancelled, its
        scripts are killed and waited for, and ``CancelledError`` propagates."""
        batch = self._open_batch()
        import asyncio  # only here: plain run_scripts callers should not pay for asyncio

        try:
            jobs = self._prepare(scripts, timeout, cwd, env, configs)
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(None, self._execute, jobs, batch, base_env)
        except BaseException:
            self._close_batch(batch)
            raise
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            batch.cancel("the task awaiting run_scripts_async was cancelled")
            while not work.done():
                # Returning before the batch has wound down would leave scripts running.
                with suppress(asyncio.CancelledError):
                    await asyncio.wait([work])
            raise

    def cancel(self) -> None:
        """Cancel the batches this runner is running now, from any thread.

        Running scripts are killed and the rest are not started; all are recorded
        ``"cancelled"``. Returns at once; the ``run_scripts`` call returns within about two
        seconds (the kill grace plus output draining). A batch still being prepared when
        this is called is cancelled too. A later ``run_scripts`` is unaffected; to refuse
        later batches as well, use :meth:`close`.
        """
        self._cancel_batches("ParallelRunner.cancel() was called")

    def close(self) -> None:
        """Cancel the running batches and every later one: a closed runner stays cancelled.

        From any thread. Every script of a ``run_scripts`` call made after this is recorded
        ``"cancelled"`` without starting.
        """
        with self._lock:
            self._closed = True
        self._cancel_batches("the ParallelRunner was closed")

    def __enter__(self) -> ParallelRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cancel_batches(self, reason: str) -> None:
        with self._lock:
            batches = list(self._batches)
        for batch in batches:
            batch.cancel(reason)

    # -- preparing a batch --------------------------------------------------------------------

    def _prepare(
        self,
        scripts: Iterable[str | os.PathLike[str]],
        timeout: float | None,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str | None] | None,
        configs: ScriptConfigs | None,
    ) -> list[_Job]:
        if isinstance(scripts, str | bytes | os.PathLike):
            raise TypeError(f"scripts must be a collection of paths, not one path: {scripts!r}")
        validate_timeout(timeout)
        paths = [_absolute(s) for s in scripts]
        per_script = _normalise_configs(configs, paths)
        jobs = []
        for index, path in enumerate(paths):
            override = per_script.get(path)
            try:
                if isinstance(override, ScriptSpec):
                    spec = override
                else:
                    keywords: dict[str, Any] = {"timeout": timeout, "cwd": cwd, "env": env}
                    keywords.update((override or {}).items())
                    if override and override.get("env") is not None:
                        keywords["env"] = {**(env or {}), **override["env"]}
                    spec = ScriptSpec.build(path, **{**keywords, "env": keywords["env"] or {}})
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{path}: {exc}") from exc
            jobs.append(_Job(index, spec))
        return jobs

    def _open_batch(self) -> _Batch:
        batch = _Batch(own_threads=self._executor is None)
        with self._lock:
            self._batches.add(batch)
            closed = self._closed
        if closed:
            batch.cancel("the ParallelRunner was closed")
        return batch

    def _close_batch(self, batch: _Batch) -> None:
        with self._lock:
            self._batches.discard(batch)
        batch.close()

    # -- running a batch ----------------------------------------------------------------------

    def _execute(
        self, jobs: list[_Job], batch: _Batch, base_env: Mapping[str, str] | None
    ) -> ExecutionResult:
        started = time.monotonic()
        try:
            if not jobs:
                return ExecutionResult(results=[], execution_time=0.0)
            executor, owned = self._obtain_executor(len(jobs))
            logger.info(
                "running %d script(s) on %s (fail_fast=%s)",
                len(jobs),
                type(executor).__name__,
                self.fail_fast,
            )
            try:
                results = self._drive(executor, jobs, batch, base_env)
            finally:
                if owned:
                    executor.shutdown(wait=True, cancel_futures=True)
        finally:
            self._close_batch(batch)
        outcome = ExecutionResult(results=results, execution_time=time.monotonic() - started)
        logger.info(
            "batch finished in %.3f s: %d passed, %d failed, %d timed out, %d cancelled of %d",
            outcome.execution_time,
            outcome.passed,
            outcome.failed,
            outcome.timeout,
            outcome.cancelled,
            outcome.total,
        )
        return outcome

    def _obtain_executor(self, size: int) -> tuple[Executor, bool]:
        """The executor for one batch, and whether this runner owns (and shuts down) it."""
        if self._executor is None:
            pool = ThreadPoolExecutor(
                max_workers=min(self.max_workers, size), thread_name_prefix="codomyrmex-exec"
            )
            return pool, True
        if isinstance(self._executor, Executor):
            return self._executor, False
        made = self._executor()
        if not isinstance(made, Executor):
            raise TypeError(f"the executor factory returned {made!r}, not an Executor")
        return made, True

    def _drive(
        self,
        executor: Executor,
        jobs: list[_Job],
        batch: _Batch,
        base_env: Mapping[str, str] | None,
    ) -> list[ScriptResult]:
        """Hand jobs to the executor, collect results, stop on fail-fast or cancel."""
        own_threads = self._executor is None
        # A foreign executor sizes itself unless the caller asked for a bound explicitly.
        limit = self.max_workers if own_threads or self._in_flight_explicit else len(jobs)
        results: list[ScriptResult | None] = [None] * len(jobs)
        pool = None if self._capacities is None else ResourcePool(self._capacities)
        waiting = _Waiting(jobs, tracked=pool is not None)
        running: dict[Future[ScriptResult], _Job] = {}
        announced: set[int] = set()
        executor_failed = False

        def finish(job: _Job, result: ScriptResult) -> None:
            if result["status"] == ScriptStatus.CANCELLED and batch.reason is not None:
                result = result.copy()
                result["error"] = f"cancelled: {batch.reason}"
            results[job.index] = result
            logger.debug("finished %s: %s", job.script, result["status"].value)
            self._emit(RunEvent(RunEventKind.FINISHED, job.index, job.script, time.time(), result))

        def announce(job: _Job) -> None:
            announced.add(job.index)
            logger.debug("started %s", job.script)
            self._emit(RunEvent(RunEventKind.STARTED, job.index, job.script, time.time()))

        if pool is not None:
            for job in waiting.needing_resources():
                never = unmet_demand(job.spec.resources, pool.capacities)
                if never is not None:
                    waiting.remove(job)
                    finish(job, make_result(job.script, ScriptStatus.ERROR, error=never))

        def next_job() -> _Job | None:
            """The first waiting job whose resources are free (taken for it), if any."""
            job = waiting.pop_first(lambda demand: pool is None or pool.fits(demand))
            if job is not None and pool is not None and job.spec.resources:
                pool.take(job.spec.resources)
            return job

        def release(job: _Job) -> None:
            if pool is not None and job.spec.resources:
                pool.give(job.spec.resources)

        try:
            while waiting or running:
                batch.wakeup.clear()
                while waiting and len(running) < limit and batch.reason is None:
                    picked = next_job()
                    if picked is None:
                        break
                    job = picked
                    try:
                        future = self._submit(executor, job, batch, base_env)
                    except Exception as exc:  # a broken or shut-down pool: no script can run
                        logger.error("cannot submit %s: %r", job.script, exc)
                        release(job)
                        finish(job, _executor_error(job, exc))
                        while waiting:  # one log line, not one per script
                            refused = waiting.popleft()
                            finish(refused, _executor_error(refused, exc))
                        continue
                    future.add_done_callback(lambda _: batch.wakeup.set())
                    running[future] = job

                if batch.reason is not None:
                    while waiting:
                        job = waiting.popleft()
                        finish(job, make_result(job.script, ScriptStatus.CANCELLED))
                    for future, job in list(running.items()):
                        # Only our own pool's cancel() is trustworthy: a Dask future cancels
                        # "successfully" while its script keeps running on a worker. Elsewhere
                        # the token stops running scripts and makes queued ones return at once.
                        if own_threads and future.cancel():  # still queued: it never started
                            del running[future]
                            release(job)
                            finish(job, make_result(job.script, ScriptStatus.CANCELLED))

                for future, job in running.items():
                    if job.index not in announced and future.running():
                        announce(job)

                done = [future for future in running if future.done()]
                for future in done:
                    job = running.pop(future)
                    release(job)
                    if job.index not in announced:
                        announce(job)
                    result, failed = _outcome(future, job)
                    executor_failed |= failed
                    finish(job, result)
                    if self.fail_fast and result["status"] in _FAILING:
                        batch.cancel(
                            f"fail_fast: {job.script} ended {result['status'].value}"
                            f" ({result['error']})"
                        )
                if running and not done:
                    batch.wakeup.wait(_POLL)
        except BaseException as exc:
            # KeyboardInterrupt, or a bug: stop the scripts and wait for them, then propagate.
            batch.cancel(f"interrupted by {type(exc).__name__}")
            if own_threads:
                for future in running:
                    future.cancel()
            # Bounded: a foreign executor might never get to its queue; the token is set.
            wait_futures(list(running), timeout=_INTERRUPT_WAIT)
            raise
        finally:
            if executor_failed and not own_threads:
                # A dead worker leaves its script running with no one to stop it.
                _kill_leftovers(batch.marker)

        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _submit(
        self,
        executor: Executor,
        job: _Job,
        batch: _Batch,
        base_env: Mapping[str, str] | None,
    ) -> Future[ScriptResult]:
        if self._executor is None:
            events = None
            if self.output_callback is not None:
                events = Subscription(self._forward_output, key=job.index, output=True)

            def work() -> ScriptResult:
                batch.wakeup.set()  # so the parent announces the start now, not at its next poll
                return run_spec(
                    job.spec,
                    base_env=base_env,
                    cancel_event=batch.token,
                    events=events,
                    launcher=self._launcher,
                )

            return executor.submit(work)
        # Everything handed to a foreign executor must pickle: a module-level function, plain
        # values, and the file token; the marker lets a dead worker's script be found.
        spec = job.spec.replace(env={**job.spec.env, BATCH_ENV_VAR: batch.marker})
        call = functools.partial(
            run_spec,
            spec,
            base_env=None if base_env is None else dict(base_env),
            cancel_event=batch.token,
        )
        return executor.submit(call)

    def _forward_output(self, event: RunEvent) -> None:
        # run_spec's own started/finished events are not passed on: _drive sends those.
        callback = self.output_callback
        if event.kind in (RunEventKind.OUTPUT, RunEventKind.RETRY) and callback is not None:
            callback(event)

    def _emit(self, event: ProgressEvent) -> None:
        if self.progress_callback is None:
            return
        try:
            self.progress_callback(event)
        except Exception:
            logger.exception("progress_callback raised on %s", event)


class _Waiting:
    """Jobs not yet handed to the executor, in start order, one lane per resource demand:
    if the first job of a lane does not fit, none of it does, so picking the next job looks
    at one job per distinct demand, not at every waiting job."""

    def __init__(self, jobs: Iterable[_Job], *, tracked: bool) -> None:
        self._lanes: dict[frozenset[tuple[str, float]], deque[_Job]] = {}
        self._tracked = tracked
        for job in jobs:
            self._lanes.setdefault(self._demand(job), deque()).append(job)

    def _demand(self, job: _Job) -> frozenset[tuple[str, float]]:
        return frozenset(job.spec.resources.items()) if self._tracked else frozenset()

    def __bool__(self) -> bool:
        return any(self._lanes.values())

    def needing_resources(self) -> list[_Job]:
        return [job for demand, lane in self._lanes.items() if demand for job in lane]

    def remove(self, job: _Job) -> None:
        self._lanes[self._demand(job)].remove(job)

    def pop_first(self, fits: Callable[[dict[str, float]], bool]) -> _Job | None:
        """The earliest job whose demand ``fits``, taken out; ``None`` if none does."""
        best: deque[_Job] | None = None
        for demand, lane in self._lanes.items():
            earlier = lane and (best is None or lane[0].index < best[0].index)
            if earlier and (not demand or fits(dict(demand))):
                best = lane
        return None if best is None else best.popleft()

    def popleft(self) -> _Job:
        """The earliest job, whatever it needs (to record it as not run)."""
        job = self.pop_first(lambda _: True)
        assert job is not None, "popleft() from no waiting job"
        return job


def _absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _normalise_configs(
    configs: ScriptConfigs | None, paths: list[str]
) -> dict[str, Mapping[str, Any] | ScriptSpec]:
    """Key each config by absolute path, so same-named scripts in two folders stay apart."""
    if configs is None:
        return {}
    normalised: dict[str, Mapping[str, Any] | ScriptSpec] = {}
    for key, config in configs.items():
        path = _absolute(key)
        if path in normalised:
            raise ValueError(f"configs has more than one entry for {path}")
        if isinstance(config, ScriptSpec):
            if config.script != path:
                raise InvalidSpec(f"configs for {path} holds a ScriptSpec of {config.script}")
            normalised[path] = config
            continue
        if not isinstance(config, Mapping):
            raise TypeError(
                f"configs for {path} must be a ScriptSpec or a mapping of its fields, "
                f"got {type(config).__name__}"
            )
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"configs for {path}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(CONFIG_KEYS))}"
            )
        if config.get("env") is not None and not isinstance(config["env"], Mapping):
            raise TypeError(f"configs for {path}: env must be a mapping, got {config['env']!r}")
        normalised[path] = dict(config)
    unused = sorted(set(normalised) - set(paths))
    if unused:
        logger.warning("configs given for scripts not in this batch: %s", ", ".join(unused))
    return normalised


def _outcome(future: Future[ScriptResult], job: _Job) -> tuple[ScriptResult, bool]:
    """The future's result, or an error result for what the executor raised (and a flag)."""
    if future.cancelled():
        return make_result(job.script, ScriptStatus.CANCELLED), False
    exc = future.exception()
    if exc is None:
        return future.result(), False
    logger.error("executor failed on %s: %r", job.script, exc)
    return _executor_error(job, exc), True


def _executor_error(job: _Job, exc: BaseException) -> ScriptResult:
    if isinstance(exc, BrokenExecutor):
        message = f"the worker pool broke: {type(exc).__name__}: {exc}"
    else:
        message = f"the executor raised {type(exc).__name__}: {exc}"
    return make_result(job.script, ScriptStatus.ERROR, error=message)


def _kill_leftovers(marker: str) -> None:
    """Kill processes of this batch that outlived their pool worker (found by the marker)."""
    found = kill_tagged(BATCH_ENV_VAR, marker)
    if found:
        logger.warning("killed %d process(es) left behind by a dead pool worker", found)
