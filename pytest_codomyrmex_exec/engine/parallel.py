"""ParallelRunner: run many scripts at once on a pluggable executor, with fail-fast and cancel."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, final

from .cpu_meter import AUTO, AutoLimit, Workers, auto_cap
from .events import RunEvent, RunEventKind, Subscription
from .launch import COLD, Launcher, kill_tagged
from .resources import (
    DEFAULT_RESOURCE_ENV,
    Amounts,
    with_resource_env,
    with_resource_ids,
)
from .results import ExecutionResult, FailureCause, ScriptResult, ScriptStatus, make_result
from .run import CancelEvent, run_spec
from .spec import (
    DEFAULT_TIMEOUT,
    RUN_KEYWORDS,
    InvalidSpec,
    ScriptSpec,
    default_workers,
    validate_timeout,
)
from .start_queue import StartQueue, Ticket

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

KeyedSpecs = Mapping[Hashable, ScriptSpec] | Iterable[tuple[Hashable, ScriptSpec]]
"""What :meth:`ParallelRunner.run_specs` takes: each spec under the caller's key for it."""

ProgressEvent = RunEvent
"""The events ``progress_callback`` receives: :class:`RunEvent` keyed by the script's key
(for ``run_scripts``, its position in the list; ``index`` reads the same key)."""


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
    """Its place in the batch: where its result goes."""
    key: Hashable
    """The caller's key: what its events carry."""
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

    Scripts start in order of their spec's ``priority`` (lower first), then of the batch.
    ``resources`` are capacities (``{"GPU": 1}``): a script whose spec asks for resources
    starts only when they are free, so they are never oversubscribed; one asking for more
    than exists is an ``"error"`` result naming the resource. A script that waits for
    resources reserves them: scripts after it start first only with what it does not need,
    so it is never starved. Without capacities (``None``) demands are not tracked.

    With capacities, each script is given the ids of the units it holds (a capacity of
    ``4`` has units ``0``..``3``; :class:`Slots` names them): ``EXEC_RESOURCE_<NAME>`` and
    the variables ``resource_env`` lists for the resource (by default ``CUDA_VISIBLE_DEVICES``
    for ``GPU``) are set to them, and its result's ``resource_ids`` lists them. A spec with
    ``exclusive=True`` runs with no other script of the batch running.

    ``max_workers="auto"`` (on the default pool) lets the number of scripts running at once
    follow their CPU use: one per core to begin with, more while the running ones leave the
    cores idle (sleeping, waiting), back to one per core when they keep them busy, at most
    four per core (see :mod:`pytest_codomyrmex_exec.engine.cpu_meter`); ``max_workers`` then
    reads that cap. On a passed executor ``"auto"`` lets the executor's size govern.
    """

    def __init__(
        self,
        max_workers: Workers | None = None,
        *,
        fail_fast: bool = False,
        progress_callback: Callable[[ProgressEvent], object] | None = None,
        executor: Executor | Callable[[], Executor] | None = None,
        launcher: Launcher = COLD,
        resources: Amounts | None = None,
        resource_env: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV,
    ) -> None:
        self._auto = max_workers == AUTO
        if max_workers is None or self._auto:
            # The pool's size; threads start only as scripts do, so a cap costs nothing.
            size = auto_cap() if self._auto else default_workers()
            self._in_flight_explicit = False
        else:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int or 'auto', got {max_workers!r}")
            if max_workers < 1:
                raise ValueError(f"max_workers must be at least 1, got {max_workers}")
            size = max_workers
            self._in_flight_explicit = True
        if executor is not None and not isinstance(executor, Executor) and not callable(executor):
            raise TypeError(
                "executor must be a concurrent.futures.Executor or a factory returning one, "
                f"got {executor!r}"
            )
        self.max_workers: int = size
        self.fail_fast = fail_fast
        self.progress_callback = progress_callback
        self.output_callback: Callable[[RunEvent], object] | None = None
        self._executor = executor
        self._launcher = launcher
        self._capacities = None if resources is None else dict(resources)
        self._resource_env = {name: tuple(names) for name, names in resource_env.items()}
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

    def run_specs(
        self, specs: KeyedSpecs, *, base_env: Mapping[str, str] | None = None
    ) -> ExecutionResult:
        """Run ready-made specs, each under the caller's key; results follow the given order.

        ``specs`` maps keys to :class:`ScriptSpec` values, or is an iterable of ``(key,
        spec)`` pairs. Keys are the caller's (hashable, each given once); the same script
        may appear under two keys and then runs twice. Every event for a script (to
        ``progress_callback`` and ``output_callback``) carries its key, so a path is never
        mapped back to its run. Start order, resources, fail-fast and cancel are as for
        :meth:`run_scripts`.
        """
        batch = self._open_batch()
        try:
            jobs = _keyed_jobs(specs)
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
            jobs.append(_Job(index, index, spec))
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
        limited = own_threads or self._in_flight_explicit
        auto = AutoLimit() if self._auto and own_threads else None
        queue: StartQueue[_Job] = StartQueue(
            limit=(auto.limit if auto else self.max_workers) if limited else None,
            capacities=self._capacities,
        )
        results: list[ScriptResult | None] = [None] * len(jobs)
        running: dict[Future[ScriptResult], Ticket[_Job]] = {}
        announced: set[int] = set()
        executor_failed = False

        def finish(job: _Job, result: ScriptResult) -> None:
            if result["status"] == ScriptStatus.CANCELLED and batch.reason is not None:
                result = result.copy()
                result["error"] = f"cancelled: {batch.reason}"
            results[job.index] = result
            logger.debug("finished %s: %s", job.script, result["status"].value)
            self._emit(RunEvent(RunEventKind.FINISHED, job.key, job.script, time.time(), result))

        def announce(job: _Job) -> None:
            announced.add(job.index)
            logger.debug("started %s", job.script)
            self._emit(RunEvent(RunEventKind.STARTED, job.key, job.script, time.time()))

        for job in jobs:
            never = queue.refusal(job.spec.resources)
            if never is None:
                queue.push(
                    job,
                    priority=job.spec.priority,
                    demand=job.spec.resources,
                    exclusive=job.spec.exclusive,
                )
            else:
                finish(job, _not_run(job, ScriptStatus.ERROR, FailureCause.RESOURCES, never))

        def refuse_all(starting: list[Ticket[_Job]], exc: Exception) -> None:
            """A broken or shut-down pool: no script can run; one log line, not one each."""
            logger.error("cannot submit %s: %r", starting[0].job.script, exc)
            for ticket in starting:
                queue.release(ticket)
            for ticket in [*starting, *queue.drain()]:
                finish(ticket.job, _executor_error(ticket.job, exc))

        try:
            while queue.waiting or running:
                batch.wakeup.clear()
                # Slots first, reports after: the scripts that ended give their slots to the
                # next ones before anyone hears of them, so a slow progress callback (pytest
                # reporting a result) never keeps a slot idle.
                ended = [future for future in running if future.done()]
                outcomes = []
                for future in ended:
                    ticket = running.pop(future)
                    queue.release(ticket)
                    outcomes.append((ticket, *_outcome(future, ticket.job)))
                failing = any(result["status"] in _FAILING for _, result, _ in outcomes)
                # With fail-fast a failure is reported first: it cancels what would start.
                starting_allowed = batch.reason is None and not (self.fail_fast and failing)
                if auto is not None:  # this loop polls every _POLL s while scripts run
                    queue.limit = auto.update(queue.running, queue.waiting, time.monotonic())
                starting = queue.pop_ready() if starting_allowed else []
                for position, ticket in enumerate(starting):
                    if batch.reason is not None:  # cancelled from another thread meanwhile
                        for left in starting[position:]:
                            queue.release(left)
                            finish(left.job, _not_run(left.job, ScriptStatus.CANCELLED))
                        break
                    try:
                        future = self._submit(executor, ticket, batch, base_env)
                    except Exception as exc:
                        refuse_all(starting[position:], exc)
                        break
                    future.add_done_callback(lambda _: batch.wakeup.set())
                    running[future] = ticket

                if batch.reason is not None:
                    for ticket in queue.drain():
                        finish(ticket.job, _not_run(ticket.job, ScriptStatus.CANCELLED))
                    for future, ticket in list(running.items()):
                        # Only our own pool's cancel() is trustworthy: a Dask future cancels
                        # "successfully" while its script keeps running on a worker. Elsewhere
                        # the token stops running scripts and makes queued ones return at once.
                        if own_threads and future.cancel():  # still queued: it never started
                            del running[future]
                            queue.release(ticket)
                            finish(ticket.job, _not_run(ticket.job, ScriptStatus.CANCELLED))

                for ticket, result, failed in outcomes:
                    job = ticket.job
                    if job.index not in announced:
                        announce(job)
                    executor_failed |= failed
                    finish(job, with_resource_ids(result, ticket.assigned))
                    if self.fail_fast and result["status"] in _FAILING:
                        batch.cancel(
                            f"fail_fast: {job.script} ended {result['status'].value}"
                            f" ({result['error']})"
                        )

                for future, ticket in running.items():
                    if ticket.job.index not in announced and future.running():
                        announce(ticket.job)
                if running and not ended:
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
        ticket: Ticket[_Job],
        batch: _Batch,
        base_env: Mapping[str, str] | None,
    ) -> Future[ScriptResult]:
        job = ticket.job
        spec = with_resource_env(job.spec, ticket.assigned, self._resource_env)
        if self._executor is None:
            events = None
            if self.output_callback is not None:
                events = Subscription(self._forward_output, key=job.key, output=True)

            def work() -> ScriptResult:
                batch.wakeup.set()  # so the parent announces the start now, not at its next poll
                return run_spec(
                    spec,
                    base_env=base_env,
                    cancel_event=batch.token,
                    events=events,
                    launcher=self._launcher,
                )

            return executor.submit(work)
        # Everything handed to a foreign executor must pickle: a module-level function, plain
        # values, and the file token; the marker lets a dead worker's script be found.
        spec = spec.replace(env={**spec.env, BATCH_ENV_VAR: batch.marker})
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


def _keyed_jobs(specs: KeyedSpecs) -> list[_Job]:
    pairs = specs.items() if isinstance(specs, Mapping) else specs
    if isinstance(pairs, str | bytes | os.PathLike | ScriptSpec):
        raise TypeError(f"specs must be (key, ScriptSpec) pairs or a mapping, got {pairs!r}")
    jobs: list[_Job] = []
    seen: set[Hashable] = set()
    for index, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"specs item #{index} must be a (key, ScriptSpec) pair, got {pair!r}")
        key, spec = pair
        if not isinstance(spec, ScriptSpec):
            raise TypeError(
                f"specs item {key!r} must be a ScriptSpec, got {type(spec).__name__}; "
                "build one with ScriptSpec.build(path, ...)"
            )
        try:
            given_twice = key in seen
        except TypeError:
            raise TypeError(f"specs item #{index}: the key {key!r} is not hashable") from None
        if given_twice:
            raise ValueError(f"specs: the key {key!r} is given twice")
        seen.add(key)
        jobs.append(_Job(index, key, spec))
    return jobs


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


def _not_run(
    job: _Job, status: ScriptStatus, cause: FailureCause = FailureCause.CANCELLED, error: str = ""
) -> ScriptResult:
    """The result of a script that never started."""
    return make_result(job.script, status, error=error or None, attempts=0, cause=cause)


def _outcome(future: Future[ScriptResult], job: _Job) -> tuple[ScriptResult, bool]:
    """The future's result, or an error result for what the executor raised (and a flag)."""
    if future.cancelled():
        return _not_run(job, ScriptStatus.CANCELLED), False
    exc = future.exception()
    if exc is None:
        return future.result(), False
    logger.error("executor failed on %s: %r", job.script, exc)
    return _executor_error(job, exc), True


def _executor_error(job: _Job, exc: BaseException) -> ScriptResult:
    if isinstance(exc, BrokenExecutor):
        message = f"the worker pool broke: {type(exc).__name__}: {exc}"
        cause = FailureCause.WORKER_LOST
    else:
        message = f"the executor raised {type(exc).__name__}: {exc}"
        cause = FailureCause.ENGINE
    return make_result(job.script, ScriptStatus.ERROR, error=message, cause=cause)


def _kill_leftovers(marker: str) -> None:
    """Kill processes of this batch that outlived their pool worker (found by the marker)."""
    found = kill_tagged(BATCH_ENV_VAR, marker)
    if found:
        logger.warning("killed %d process(es) left behind by a dead pool worker", found)
