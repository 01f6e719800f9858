"""The built-in backends of the parallel session: the async scheduler and the process pool.

A backend takes keyed jobs in start order, runs at most ``workers`` at once (``"auto"``: as
many as the scripts' CPU use allows, see :mod:`..engine.cpu_meter`) and passes the
engine's :class:`RunEvent` stream to the session's sink: ``started`` and ``finished`` for
every script (``output`` too when asked for), each event keyed by the job's key. The key is
a run's only identity: two jobs may run the same script. Other plugins provide more through
the ``pytest_exec_make_backend`` hook.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, final

from ..engine.cpu_meter import Workers
from ..engine.events import EventSink, RunEvent, RunEventKind, Subscription
from ..engine.launch import COLD, Launcher
from ..engine.parallel import ParallelRunner
from ..engine.resources import (
    DEFAULT_RESOURCE_ENV,
    unmet_demand,
    with_resource_env,
    with_resource_ids,
)
from ..engine.results import FailureCause, ScriptResult, ScriptStatus, make_result
from ..engine.run_async import run_spec_async
from ..engine.spec import ScriptSpec

if TYPE_CHECKING:
    from ..engine.events import JobEvent
    from ..engine.scheduler import AsyncScheduler


@final
@dataclass(frozen=True, slots=True)
class ScriptJob:
    """One script for a backend: the session's key for it, and how it runs."""

    key: int
    spec: ScriptSpec
    output: bool = False
    """Send ``output`` events for it (live output)."""


class ScriptBackend(Protocol):
    """What the parallel session drives. ``cancel`` may be called from any thread, any time,
    also before ``start`` or after the end; once called, nothing new starts."""

    def start(
        self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str], sink: EventSink
    ) -> None:
        """Start running ``jobs`` (already in start order) in the background."""

    def cancel(self) -> None:
        """Stop for good: kill running scripts, report the rest ``cancelled``."""

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the background to end; ``True`` once it has."""

    def alive(self) -> bool:
        """Is the background still working (or yet to start)?"""


def engine_broke(spec: ScriptSpec, exc: BaseException | str) -> ScriptResult:
    """The ``error`` result for a script the backend itself failed to run."""
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return make_result(
        spec.script,
        ScriptStatus.ERROR,
        error=f"the engine broke: {why}",
        attempts=0,
        cause=FailureCause.ENGINE,
    )


def finished_event(job: ScriptJob, result: ScriptResult) -> RunEvent:
    return RunEvent(RunEventKind.FINISHED, job.key, job.spec.script, time.time(), result)


CAPACITIES_SOURCE = "the ini option exec_resources"


def unmet_resources(spec: ScriptSpec, capacities: Mapping[str, float]) -> ScriptResult | None:
    """The ``error`` result of a script asking for resources this machine does not have."""
    refused = unmet_demand(spec.resources, capacities, CAPACITIES_SOURCE)
    if refused is None:
        return None
    return make_result(
        spec.script, ScriptStatus.ERROR, error=refused, attempts=0, cause=FailureCause.RESOURCES
    )


def runnable(
    jobs: Sequence[ScriptJob], capacities: Mapping[str, float], sink: EventSink
) -> list[ScriptJob]:
    """The jobs whose resources exist here; the others are reported finished with an error."""
    kept = []
    for job in jobs:
        refused = unmet_resources(job.spec, capacities)
        if refused is None:
            kept.append(job)
        else:
            sink(finished_event(job, refused))
    return kept


class BackendThread:
    """The background thread a built-in backend runs in."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None

    def run(self, target: Any, *args: Any) -> None:
        self._thread = threading.Thread(target=target, args=args, name=self._name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()


@final
class ProcessBackend:
    """The :class:`ParallelRunner`: a thread per running script, each waiting on its child."""

    def __init__(
        self,
        workers: Workers,
        launcher: Launcher = COLD,
        resources: Mapping[str, float] | None = None,
        resource_env: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV,
    ) -> None:
        self._capacities = dict(resources or {})
        self._runner = ParallelRunner(
            workers,
            progress_callback=self._progress,
            launcher=launcher,
            resources=self._capacities,
            resource_env=resource_env,
        )
        self._thread = BackendThread("codomyrmex-exec-runner")
        self._jobs: Sequence[ScriptJob] = ()
        self._sink: EventSink | None = None

    def start(
        self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str], sink: EventSink
    ) -> None:
        self._jobs, self._sink = runnable(jobs, self._capacities, sink), sink
        if any(job.output for job in self._jobs):
            self._runner.output_callback = self._progress
        self._thread.run(self._serve, base_env)

    def _serve(self, base_env: Mapping[str, str]) -> None:
        try:
            self._runner.run_specs([(job.key, job.spec) for job in self._jobs], base_env=base_env)
        except Exception as exc:
            assert self._sink is not None
            for job in self._jobs:  # the session ignores a second "finished" for a key
                self._sink(finished_event(job, engine_broke(job.spec, exc)))

    def _progress(self, event: RunEvent) -> None:
        assert self._sink is not None
        self._sink(event)  # keyed by the job's key already: run_specs passes keys through

    def cancel(self) -> None:
        self._runner.close()

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.alive()


@final
class AsyncBackend:
    """The :class:`AsyncScheduler` on an event loop of its own thread: each script is one job
    at its own priority; the engine retries it and reports its events."""

    def __init__(
        self,
        workers: Workers,
        launcher: Launcher = COLD,
        resources: Mapping[str, float] | None = None,
        resource_env: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV,
    ) -> None:
        self._launcher = launcher
        self._resource_env = resource_env
        # Imported here: asyncio and the scheduler cost start-up time every other run skips.
        from ..engine.events import JobEventKind
        from ..engine.scheduler import AsyncScheduler

        self._kinds = JobEventKind
        self._capacities = dict(resources or {})
        self._scheduler: AsyncScheduler = AsyncScheduler(
            max_concurrency=workers, event_sink=self._job_event, resources=self._capacities
        )
        self._thread = BackendThread("codomyrmex-exec-scheduler")
        self._by_key: dict[int, ScriptJob] = {}
        self._job_ids: dict[int, str] = {}
        self._sink: EventSink | None = None

    def start(
        self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str], sink: EventSink
    ) -> None:
        self._sink = sink
        self._thread.run(self._serve, runnable(jobs, self._capacities, sink), base_env)

    def _serve(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        import asyncio

        try:
            asyncio.run(self._main(jobs, base_env))
        except Exception as exc:
            assert self._sink is not None
            for job in jobs:
                self._sink(finished_event(job, engine_broke(job.spec, exc)))

    async def _main(self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str]) -> None:
        assert self._sink is not None
        for job in jobs:  # in start order: equal priorities keep it (first in, first out)
            # Known before scheduling: a closed scheduler cancels it inside schedule().
            self._by_key[job.key] = job
            self._job_ids[job.key] = self._scheduler.schedule(
                self._run,
                name=job.spec.script,
                key=job.key,
                args=(job, base_env),
                priority=job.spec.priority,
                resources=job.spec.resources,
                exclusive=job.spec.exclusive,
            )
        await self._scheduler.run_all()

    async def _run(self, job: ScriptJob, base_env: Mapping[str, str]) -> ScriptResult:
        """Run one script with the resource ids the scheduler gave it as it started."""
        assert self._sink is not None
        scheduled = self._scheduler.get_job(self._job_ids[job.key])
        assigned = scheduled.assigned if scheduled is not None else {}
        sink = self._sink

        def tell(event: RunEvent) -> None:
            # Most scripts hold no resource: their event goes on as it is, not copied.
            if assigned and event.result is not None and event.kind == RunEventKind.FINISHED:
                event = dataclasses.replace(event, result=with_resource_ids(event.result, assigned))
            sink(event)

        return await run_spec_async(
            with_resource_env(job.spec, assigned, self._resource_env),
            base_env=base_env,
            events=Subscription(tell, job.key, output=job.output),
            launcher=self._launcher,
        )

    def _job_event(self, event: JobEvent) -> None:
        # The engine reports started/finished itself; the scheduler only knows about the
        # jobs that never got to run or whose coroutine was cancelled or broke.
        job = self._by_key.get(event.key)
        if job is None or self._sink is None:
            return
        if event.kind == self._kinds.CANCELLED:
            result = make_result(
                job.spec.script,
                ScriptStatus.CANCELLED,
                error="cancelled",
                attempts=event.runs,
                cause=FailureCause.CANCELLED,
            )
            self._sink(finished_event(job, result))
        elif event.kind == self._kinds.FAILED:
            self._sink(finished_event(job, engine_broke(job.spec, event.error or "unknown")))

    def cancel(self) -> None:
        self._scheduler.close_threadsafe()

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.alive()


def make_builtin_backend(
    backend: str,
    workers: Workers,
    launcher: Launcher = COLD,
    resources: Mapping[str, float] | None = None,
    resource_env: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV,
) -> ScriptBackend:
    if backend == "async":
        return AsyncBackend(workers, launcher, resources, resource_env)
    return ProcessBackend(workers, launcher, resources, resource_env)
