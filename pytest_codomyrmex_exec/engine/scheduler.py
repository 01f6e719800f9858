"""AsyncScheduler: run queued coroutine jobs by priority, with retries, cancellation and events.

Which waiting job starts next is the :class:`StartQueue`'s decision, as for every runner.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import inspect
import logging
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, final

from .async_runner import describe_error
from .cpu_meter import AUTO, SAMPLE_INTERVAL, AutoLimit, Workers, auto_cap
from .events import JobEvent, JobEventKind, JobEventSink
from .resources import Amounts
from .start_queue import StartQueue, Ticket

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AsyncJobStatus(enum.StrEnum):
    """Where a job is in its life: pending, then running, then exactly one final status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (AsyncJobStatus.PENDING, AsyncJobStatus.RUNNING)


@dataclass(eq=False)
class AsyncJob:
    """A job held by an :class:`AsyncScheduler`; the scheduler updates it as it runs.

    ``runs`` counts attempts (a job that failed twice and then succeeded has ``runs == 3``).
    ``error`` is ``"ExcType: message"`` of the final failure, ``None`` otherwise. Times are
    wall-clock (:func:`time.time`); ``started_at`` is when the first attempt started.
    """

    id: str
    name: str
    func: Callable[..., Awaitable[Any]] = field(repr=False)
    args: tuple[Any, ...] = field(default=(), repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    priority: float = 0
    max_runs: int = 1
    resources: dict[str, float] = field(default_factory=dict)
    """What the job holds while it runs, out of the scheduler's ``resources``."""
    exclusive: bool = False
    """It runs with no other job of the scheduler running."""
    assigned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The ids of the resource units it holds, by resource, set when it starts (before its
    function is called, so the function may read them: :func:`resource_env` makes
    ``CUDA_VISIBLE_DEVICES`` of them)."""
    status: AsyncJobStatus = AsyncJobStatus.PENDING
    result: Any = field(default=None, repr=False)
    error: str | None = None
    runs: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    key: Any = None
    """The caller's key for the job (``schedule(key=...)``), its ``id`` when none was given;
    every :class:`JobEvent` about it carries it."""

    @property
    def duration(self) -> float | None:
        """Seconds from the first start to the end, once the job has both."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@final
@dataclass(frozen=True, slots=True)
class SchedulerMetrics:
    """Counts at one moment: jobs by status, attempts made, and the most that ran at once."""

    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    total_runs: int
    peak_running: int

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "pending": self.pending,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "total_runs": self.total_runs,
            "peak_running": self.peak_running,
        }


class _NotAwaitableError(TypeError):
    """The job's function returned something that cannot be awaited: a bug, never retried."""


@final
class AsyncScheduler:
    """Queue coroutine jobs and run them, lowest ``priority`` number first.

    Jobs with equal priority start in the order they were scheduled. At most
    ``max_concurrency`` jobs run at once; a job whose function raises is retried, in the
    same slot, until it succeeds or has run ``max_runs`` times. :meth:`run_all` runs until
    nothing is pending or running, including jobs scheduled while it runs.

    Threads: :meth:`schedule`, :meth:`cancel` and :meth:`cancel_all` belong to the thread
    that runs :meth:`run_all` while a run is in progress (calling them from elsewhere then
    raises :class:`RuntimeError`). From any other thread use :meth:`cancel_threadsafe` or
    :meth:`cancel_all_threadsafe`. Reading (``get_job``, ``list_jobs``, ``metrics``) is
    safe anywhere but may see a moment in the middle of a change.

    ``event_sink`` is called synchronously with a :class:`JobEvent` for every change; one
    that raises is logged and otherwise ignored.

    ``resources`` are capacities (``{"GPU": 1, "db": 2}``): a job scheduled with
    ``resources=`` starts only when its whole demand is free, so they are never
    oversubscribed. A job that waits for resources reserves them: jobs behind it (in
    priority, then schedule order) start first only with what it does not need, so a job
    needing much is never starved by a stream of jobs needing little. Scheduling a demand
    that could never fit raises ``ValueError`` naming the resource. Without capacities
    (``None``), demands are not tracked. A job scheduled with ``exclusive=True`` runs with no
    other job running: it waits for the running ones, and nothing behind it starts meanwhile.

    ``max_concurrency="auto"`` lets the running limit follow the CPU use of the processes the
    jobs start (one per core at first, more while they leave the cores idle, at most four per
    core: :mod:`pytest_codomyrmex_exec.engine.cpu_meter`); ``max_concurrency`` reads that cap.
    """

    def __init__(
        self,
        *,
        max_concurrency: Workers = 4,
        event_sink: JobEventSink | None = None,
        resources: Amounts | None = None,
    ) -> None:
        self._auto = AutoLimit() if max_concurrency == AUTO else None
        if self._auto is not None:
            max_concurrency = auto_cap()
        elif isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise TypeError(f"max_concurrency must be an int or 'auto', got {max_concurrency!r}")
        elif max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if event_sink is not None and not callable(event_sink):
            raise TypeError(f"event_sink must be callable, got {event_sink!r}")
        self._max_concurrency: int = max_concurrency
        self._event_sink = event_sink
        self._queue: StartQueue[str] = StartQueue(
            limit=max_concurrency if self._auto is None else self._auto.limit,
            capacities=resources,
        )
        self._tickets: dict[str, Ticket[str]] = {}
        """Each job that waits or runs, by id: its place in the queue."""
        self._jobs: dict[str, AsyncJob] = {}
        self._counts = dict.fromkeys(AsyncJobStatus, 0)
        self._total_runs = 0
        self._peak_running = 0
        self._cancel_requested: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        # Per run, never across runs: asyncio primitives bind to one loop.
        self._wakeup: asyncio.Event | None = None
        self._aborting = False
        # Guards the hand-over between run_all's thread and threads asking to cancel.
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._requests: list[Callable[[], None]] = []
        self._closed = False

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    # -- queueing ---------------------------------------------------------------------------

    def schedule(
        self,
        func: Callable[..., Awaitable[Any]],
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        priority: float = 0,
        max_runs: int = 1,
        resources: Amounts | None = None,
        *,
        key: Hashable | None = None,
        exclusive: bool = False,
    ) -> str:
        """Queue ``func(*args, **kwargs)`` (which must return an awaitable); return its id.

        ``key`` is the caller's key for the job (hashable; the job id when left out): the
        job's events carry it, so a listener finds its own work without parsing names.
        """
        if not callable(func):
            raise TypeError(f"func must be a coroutine function or other callable, got {func!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise TypeError(f"args must be a tuple or list, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs must be a mapping or None, got {kwargs!r}")
        if isinstance(priority, bool) or not isinstance(priority, int | float):
            raise TypeError(f"priority must be a number, got {priority!r}")
        if math.isnan(priority):
            # NaN compares false with everything and would silently break the heap order.
            raise ValueError("priority must not be NaN")
        if isinstance(max_runs, bool) or not isinstance(max_runs, int):
            raise TypeError(f"max_runs must be an int, got {max_runs!r}")
        if max_runs < 1:
            raise ValueError(f"max_runs must be at least 1, got {max_runs}")
        if not isinstance(exclusive, bool):
            raise TypeError(f"exclusive must be True or False, got {exclusive!r}")
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {key!r}") from None
        demand = dict(resources or {})
        refused = self._queue.refusal(demand, "the scheduler")
        if refused is not None:
            raise ValueError(f"job {name or _default_name(func)!r} {refused}")
        self._check_thread("schedule")

        job_id = uuid.uuid4().hex
        job = AsyncJob(
            id=job_id,
            name=name if name is not None else _default_name(func),
            func=func,
            key=job_id if key is None else key,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            priority=priority,
            max_runs=max_runs,
            resources=demand,
            exclusive=exclusive,
        )
        self._jobs[job_id] = job
        self._counts[AsyncJobStatus.PENDING] += 1
        logger.debug("scheduled job %s (%s), priority %s", job.name, job_id, priority)
        self._emit(JobEventKind.SCHEDULED, job)
        if self._closed:
            # A closed scheduler stays closed: work arriving after close() never runs.
            self._finish(job, AsyncJobStatus.CANCELLED)
            return job_id
        self._tickets[job_id] = self._queue.push(
            job_id, priority=priority, demand=demand, exclusive=exclusive
        )
        if self._wakeup is not None:
            self._wakeup.set()
        return job_id

    def get_job(self, job_id: str) -> AsyncJob | None:
        return self._jobs.get(job_id)

    def list_jobs(self, status: AsyncJobStatus | str | None = None) -> list[AsyncJob]:
        """Jobs in the order they were scheduled, optionally only those with ``status``."""
        jobs = list(self._jobs.values())
        if status is None:
            return jobs
        wanted = AsyncJobStatus(status)
        return [job for job in jobs if job.status is wanted]

    @property
    def metrics(self) -> SchedulerMetrics:
        counts = self._counts
        return SchedulerMetrics(
            total=len(self._jobs),
            pending=counts[AsyncJobStatus.PENDING],
            running=counts[AsyncJobStatus.RUNNING],
            completed=counts[AsyncJobStatus.COMPLETED],
            failed=counts[AsyncJobStatus.FAILED],
            cancelled=counts[AsyncJobStatus.CANCELLED],
            total_runs=self._total_runs,
            peak_running=self._peak_running,
        )

    # -- running ----------------------------------------------------------------------------

    async def run_all(self) -> dict[str, AsyncJob]:
        """Run pending jobs until none is pending or running; return every job by id.

        If this coroutine is cancelled, running jobs are cancelled and awaited (a script's
        process tree is killed by ``run_script_async``), pending jobs become cancelled,
        and the cancellation propagates.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("run_all() is already running on this scheduler")
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._wakeup = wakeup = asyncio.Event()
            self._aborting = False
        started = time.monotonic()
        logger.info(
            "run_all: %d job(s) pending, max_concurrency=%d",
            self._counts[AsyncJobStatus.PENDING],
            self._max_concurrency,
        )
        try:
            while True:
                # Clearing before starting jobs is safe: nothing else runs until the await.
                wakeup.clear()
                queue = self._queue
                if self._auto is not None:
                    queue.limit = self._auto.update(queue.running, queue.waiting, time.monotonic())
                self._start_ready()
                if not self._running and not queue.waiting:
                    break
                if self._auto is not None and queue.waiting and self._running:
                    # Nothing may end for a while, yet the limit may rise: look again.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), SAMPLE_INTERVAL)
                else:
                    await wakeup.wait()
        except BaseException:
            await self._abort()
            raise
        finally:
            with self._lock:
                self._wakeup = None
                self._loop = None
                self._loop_thread = None
                leftovers, self._requests = self._requests, []
                # Requests that arrived too late for the loop are answered here, still under
                # the lock, so they cannot interleave with a cancel from another thread.
                for request in leftovers:
                    request()
            logger.info(
                "run_all finished in %.3f s: %s",
                time.monotonic() - started,
                self.metrics.to_dict(),
            )
        return dict(self._jobs)

    def _start_ready(self) -> None:
        """Start the waiting jobs the queue hands out now."""
        for ticket in self._queue.pop_ready():
            job = self._jobs[ticket.job]
            job.assigned = ticket.assigned
            self._start(job)

    def _start(self, job: AsyncJob) -> None:
        self._set_status(job, AsyncJobStatus.RUNNING)
        job.started_at = time.time()
        task = asyncio.get_running_loop().create_task(
            self._execute(job), name=f"scheduler:{job.name}"
        )
        self._running[job.id] = task
        # Slots, not tasks: a task that gave its slot back is still winding down.
        self._peak_running = max(self._peak_running, self._queue.running)
        task.add_done_callback(lambda done: self._on_task_done(job, done))
        logger.debug("started job %s (%s)", job.name, job.id)
        self._emit(JobEventKind.STARTED, job)

    async def _execute(self, job: AsyncJob) -> None:
        try:
            while True:
                job.runs += 1
                self._total_runs += 1
                try:
                    value = await _invoke(job)
                except Exception as exc:
                    error = describe_error(exc)
                    if job.id in self._cancel_requested:
                        self._finish(job, AsyncJobStatus.CANCELLED)
                        return
                    if job.runs < job.max_runs and not isinstance(exc, _NotAwaitableError):
                        logger.warning(
                            "job %s (%s) failed on run %d of %d, retrying: %s",
                            job.name,
                            job.id,
                            job.runs,
                            job.max_runs,
                            error,
                        )
                        continue
                    self._finish(job, AsyncJobStatus.FAILED, error=error)
                    self._give_back(job)
                    return
                # A function that swallowed our cancellation still ends cancelled: cancel()
                # said True, so the job must never also count as completed.
                if job.id in self._cancel_requested:
                    self._finish(job, AsyncJobStatus.CANCELLED)
                else:
                    self._finish(job, AsyncJobStatus.COMPLETED, result=value)
                self._give_back(job)
                return
        except asyncio.CancelledError:
            self._finish(job, AsyncJobStatus.CANCELLED)
            raise

    def _give_back(self, job: AsyncJob) -> None:
        """The job is over: free its slot and start what may start now, in this very step.

        Called as the job's function returns, not from the task's done callback: that runs
        an event-loop iteration later, and waking ``run_all`` another one after it, so a
        freed slot sat idle for two iterations (each of which may wait for the GIL while
        another thread, such as pytest's reporting, holds it) before its next script started.
        """
        ticket = self._tickets.pop(job.id, None)
        if ticket is None:
            return  # given back already
        self._queue.release(ticket)
        if self._wakeup is not None and not self._aborting:
            self._start_ready()

    def _on_task_done(self, job: AsyncJob, task: asyncio.Task[None]) -> None:
        self._running.pop(job.id, None)
        if not job.status.is_final:
            # Only when the task was cancelled before its first step, so _execute never ran.
            if task.cancelled():
                self._finish(job, AsyncJobStatus.CANCELLED)
            else:
                exc = task.exception()
                error = describe_error(exc) if exc is not None else "job ended without a status"
                self._finish(job, AsyncJobStatus.FAILED, error=error)
        self._give_back(job)  # for a job whose function never returned: cancelled, or broke
        if self._wakeup is not None:
            self._wakeup.set()

    async def _abort(self) -> None:
        """run_all is being cancelled (or broke): cancel everything and leave nothing running."""
        self._aborting = True  # a job ending meanwhile must not start another
        tasks = list(self._running.items())
        logger.info("run_all interrupted: cancelling %d running job(s)", len(tasks))
        for job_id, task in tasks:
            self._cancel_requested.add(job_id)
            task.cancel()
        try:
            if tasks:
                await asyncio.wait([task for _, task in tasks])
        finally:
            # Normally the tasks have marked themselves; this covers a second cancellation
            # that interrupted the wait above.
            for job_id, _ in tasks:
                self._finish(self._jobs[job_id], AsyncJobStatus.CANCELLED)
            for ticket in self._queue.drain():
                del self._tickets[ticket.job]
                self._finish(self._jobs[ticket.job], AsyncJobStatus.CANCELLED)

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending or running job; ``False`` if unknown or already finished.

        A pending job is cancelled at once. A running job's task is cancelled; the job
        becomes ``cancelled`` when the task has wound down (for ``run_script_async``, once
        the script's process tree is killed), even if the function swallowed the
        cancellation.
        """
        self._check_thread("cancel")
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if job.status is AsyncJobStatus.PENDING:
            self._queue.withdraw(self._tickets.pop(job_id))
            self._finish(job, AsyncJobStatus.CANCELLED)
            return True
        if job.status is AsyncJobStatus.RUNNING:
            self._cancel_requested.add(job_id)
            task = self._running.get(job_id)
            if task is not None:
                task.cancel()
            logger.info("cancelling running job %s (%s)", job.name, job_id)
            return True
        return False

    def cancel_all(self) -> int:
        """Cancel every pending and running job; return how many were cancelled."""
        self._check_thread("cancel_all")
        return sum(
            self.cancel(job.id) for job in list(self._jobs.values()) if not job.status.is_final
        )

    def close(self) -> int:
        """Cancel every pending and running job, and every job scheduled from now on.

        A closed scheduler stays closed: this is the cancel that cannot be lost to a job
        that was still being prepared when it came. Returns how many jobs it cancelled.
        """
        self._check_thread("close")
        self._closed = True
        return self.cancel_all()

    def close_threadsafe(self) -> concurrent.futures.Future[int]:
        """:meth:`close` from any thread, whether ``run_all`` runs, has not started or ended.

        The scheduler is marked closed at once, before the future resolves, so a job
        scheduled after this call returns is cancelled whatever the loop is doing.
        """
        self._closed = True
        return self._request(self.cancel_all)

    @property
    def closed(self) -> bool:
        return self._closed

    def cancel_threadsafe(self, job_id: str) -> concurrent.futures.Future[bool]:
        """:meth:`cancel` from any thread; the future resolves to what ``cancel`` returned."""
        return self._request(lambda: self.cancel(job_id))

    def cancel_all_threadsafe(self) -> concurrent.futures.Future[int]:
        """:meth:`cancel_all` from any thread, e.g. a pytest main thread on Ctrl-C.

        Works whether ``run_all`` has not started yet, is running in another thread's loop,
        or has finished. The future resolves to the number of jobs cancelled; wait on it
        with a timeout if the loop might be blocked.
        """
        return self._request(self.cancel_all)

    def _request(self, action: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def settle() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(action())
            except BaseException as exc:
                future.set_exception(exc)

        with self._lock:
            loop, owner = self._loop, self._loop_thread
            if loop is None or owner == threading.get_ident():
                # No run in progress (or we are its thread): nothing races with us, and
                # holding the lock keeps run_all from starting halfway through.
                settle()
                return future
            self._requests.append(settle)
            # run_all holds the lock before it clears _loop, so the loop is still running
            # run_all here; if the wake-up comes too late, run_all's exit answers it.
            loop.call_soon_threadsafe(self._drain_requests)
        return future

    def _drain_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for request in requests:
            request()

    # -- bookkeeping ------------------------------------------------------------------------

    def _check_thread(self, what: str) -> None:
        owner = self._loop_thread
        if owner is not None and owner != threading.get_ident():
            raise RuntimeError(
                f"{what}() called from another thread while run_all() runs; "
                "use cancel_threadsafe() or cancel_all_threadsafe() instead"
            )

    def _set_status(self, job: AsyncJob, status: AsyncJobStatus) -> None:
        self._counts[job.status] -= 1
        job.status = status
        self._counts[status] += 1

    def _finish(
        self, job: AsyncJob, status: AsyncJobStatus, *, result: Any = None, error: str | None = None
    ) -> None:
        """Give ``job`` its final status, once: later calls for the same job do nothing."""
        if job.status.is_final:
            return
        self._set_status(job, status)
        job.result = result
        job.error = error
        job.finished_at = time.time()
        self._cancel_requested.discard(job.id)
        if status is AsyncJobStatus.FAILED:
            logger.warning(
                "job %s (%s) failed after %d run(s): %s", job.name, job.id, job.runs, error
            )
            kind = JobEventKind.FAILED
        elif status is AsyncJobStatus.CANCELLED:
            logger.info("job %s (%s) cancelled", job.name, job.id)
            kind = JobEventKind.CANCELLED
        else:
            logger.debug("job %s (%s) completed after %d run(s)", job.name, job.id, job.runs)
            kind = JobEventKind.COMPLETED
        self._emit(kind, job)

    def _emit(self, kind: JobEventKind, job: AsyncJob) -> None:
        sink = self._event_sink
        if sink is None:
            return
        event = JobEvent(kind, job.id, job.name, time.time(), job.runs, job.error, job.key)
        try:
            sink(event)
        except Exception:
            # Observers must not be able to break scheduling or lose a job's status.
            logger.exception("event sink raised on %s event for job %s", kind.value, job.id)


async def _invoke(job: AsyncJob) -> Any:
    awaitable = job.func(*job.args, **job.kwargs)
    if not inspect.isawaitable(awaitable):
        raise _NotAwaitableError(
            f"job {job.name!r}: {job.func!r} returned {type(awaitable).__name__}, "
            "not an awaitable; schedule a coroutine function"
        )
    return await awaitable


def _default_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name if isinstance(name, str) else repr(func)
