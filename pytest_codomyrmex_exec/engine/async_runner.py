"""AsyncParallelRunner: run named coroutines concurrently, optionally bounded and fail-fast."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeAlias, final

from .cpu_meter import AUTO, SAMPLE_INTERVAL, AutoLimit, auto_cap
from .results import AsyncExecutionResult
from .start_queue import StartQueue, Ticket

logger = logging.getLogger(__name__)

TaskSpec: TypeAlias = tuple[str, Callable[..., Awaitable[Any]], Sequence[Any]]
"""One task: ``(name, coroutine_function, args)``; the function is called as ``func(*args)``."""

TaskCallback: TypeAlias = Callable[[str, Any], object]
"""``on_task_complete(name, outcome)``: the return value, the exception, or a CancelledError."""


def describe_error(exc: BaseException) -> str:
    """``"ExcType: message"``, or just ``"ExcType"`` when the message is empty."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@final
class AsyncParallelRunner:
    """Run ``(name, coroutine_function, args)`` tasks concurrently in the running event loop.

    ``max_concurrency`` bounds how many tasks run at once (``None``: no bound).
    ``max_concurrency="auto"`` lets the bound follow the CPU use of the scripts the tasks run
    (one per core at first, more while they leave the cores idle, at most four per core:
    :mod:`pytest_codomyrmex_exec.engine.cpu_meter`); ``max_concurrency`` reads that cap. Tasks
    that start no script run one per core under ``"auto"``. With
    ``fail_fast`` the first task that raises is recorded in ``errors`` and every other
    unfinished task is cancelled and listed in ``cancelled_tasks``. ``on_task_complete`` is
    called (synchronously, in the loop) once per task with its return value, its exception,
    or a :class:`asyncio.CancelledError` for a task that was cancelled; a callback that
    raises is logged and ignored.

    A task's failure is data, not an exception: ``run`` returns an
    :class:`AsyncExecutionResult` whose counters add up to ``total``. If the caller of
    ``run`` is cancelled, the tasks are cancelled and awaited, the result so far stays
    available as :attr:`last_result`, and the cancellation propagates.

    The runner keeps no loop-bound state between runs, so one instance can be used under
    several ``asyncio.run`` calls.
    """

    def __init__(
        self,
        *,
        max_concurrency: int | Literal["auto"] | None = None,
        fail_fast: bool = False,
        on_task_complete: TaskCallback | None = None,
    ) -> None:
        self._auto = max_concurrency == AUTO
        if self._auto:
            max_concurrency = auto_cap()
        elif max_concurrency is not None:
            if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
                raise TypeError(
                    f"max_concurrency must be an int, 'auto' or None, got {max_concurrency!r}"
                )
            if max_concurrency < 1:
                raise ValueError(
                    f"max_concurrency must be at least 1 (or None for no bound), "
                    f"got {max_concurrency}"
                )
        if on_task_complete is not None and not callable(on_task_complete):
            raise TypeError(f"on_task_complete must be callable, got {on_task_complete!r}")
        self._max_concurrency: int | None = max_concurrency
        self._fail_fast = bool(fail_fast)
        self._on_task_complete = on_task_complete
        self.last_result: AsyncExecutionResult | None = None
        """The result of the latest :meth:`run`, filled in while it runs; kept on cancel."""

    @property
    def max_concurrency(self) -> int | None:
        """The bound; under ``"auto"`` the most it ever reaches."""
        return self._max_concurrency

    @property
    def fail_fast(self) -> bool:
        return self._fail_fast

    async def run(self, tasks: Iterable[TaskSpec]) -> AsyncExecutionResult:
        """Run every task and return once all have finished, failed or been cancelled.

        Tasks start in the order given, as many at once as ``max_concurrency`` allows.
        Raises :class:`TypeError` / :class:`ValueError` before starting anything if a task
        is malformed (not a 3-tuple, a non-callable, duplicate names).
        """
        specs = _check_tasks(tasks)
        result = AsyncExecutionResult(total=len(specs))
        self.last_result = result
        # Made per run, like the queue: what one run measured says nothing about the next.
        auto = AutoLimit() if self._auto else None
        queue: StartQueue[TaskSpec] = StartQueue(
            limit=self._max_concurrency if auto is None else auto.limit
        )
        for spec in specs:
            queue.push(spec)
        # Made per run: the runner must work again under the next asyncio.run.
        wakeup = asyncio.Event()
        handles: list[asyncio.Task[None]] = []

        group: asyncio.TaskGroup | None = None
        given_back: set[Ticket[TaskSpec]] = set()

        def start_ready() -> None:
            assert group is not None
            for ticket in queue.pop_ready():
                name, func, args = ticket.job
                on_failure = fail_fast if self._fail_fast else None
                done = functools.partial(give_back, ticket, True)
                coro = self._run_one(name, func, args, result, on_failure, done)
                task = group.create_task(coro, name=f"async-runner:{name}")
                task.add_done_callback(functools.partial(ended, ticket))
                handles.append(task)

        def give_back(ticket: Ticket[TaskSpec], start_next: bool) -> None:
            # As a task's function returns, the next task starts in the following loop step;
            # from the done callback and then this loop's wake-up it took three.
            if ticket in given_back:
                return
            given_back.add(ticket)
            queue.release(ticket)
            if start_next:
                start_ready()
            wakeup.set()

        def ended(ticket: Ticket[TaskSpec], task: asyncio.Task[None]) -> None:
            give_back(ticket, False)  # cancelled or broken: only this loop starts more

        def fail_fast(failed: str) -> None:
            queue.drain()  # nothing more starts; the waiting are recorded cancelled below
            wakeup.set()
            me = asyncio.current_task()
            running = [task for task in handles if task is not me and not task.done()]
            if running:
                logger.info(
                    "fail-fast: task %r failed, cancelling %d task(s)", failed, len(running)
                )
            for task in running:
                task.cancel()

        started = time.monotonic()
        logger.info(
            "running %d task(s) (max_concurrency=%s, fail_fast=%s)",
            len(specs),
            self._max_concurrency,
            self._fail_fast,
        )
        try:
            # The task group cancels and awaits every child if this coroutine is cancelled,
            # so no task outlives run(). Children never raise (failures are recorded), so
            # the group itself only ever propagates cancellation.
            async with asyncio.TaskGroup() as group:
                while True:
                    wakeup.clear()
                    if auto is not None:
                        queue.limit = auto.update(queue.running, queue.waiting, time.monotonic())
                    start_ready()
                    if not queue.waiting:
                        break
                    try:
                        if auto is not None and queue.running:
                            # Nothing may end for a while, yet the limit may rise: look again.
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(wakeup.wait(), SAMPLE_INTERVAL)
                        else:
                            await wakeup.wait()
                    except asyncio.CancelledError:
                        queue.drain()  # a task that ends while the group winds down starts none
                        raise
        finally:
            # A task that never started, or was cancelled before its first step, never ran
            # its own bookkeeping: whatever has neither a result nor an error was cancelled.
            for name, _, _ in specs:
                if name not in result.results and name not in result.errors:
                    result.cancelled_tasks.append(name)
                    self._notify(name, asyncio.CancelledError())
            result.execution_time = time.monotonic() - started
            logger.info(
                "finished %d task(s) in %.3f s: %d completed, %d failed, %d cancelled",
                result.total,
                result.execution_time,
                result.completed,
                result.failed,
                result.cancelled,
            )
        return result

    async def _run_one(
        self,
        name: str,
        func: Callable[..., Awaitable[Any]],
        args: Sequence[Any],
        result: AsyncExecutionResult,
        on_failure: Callable[[str], None] | None,
        done: Callable[[], None],
    ) -> None:
        """Run one task and record its outcome; ``done`` gives its slot back at the end."""
        try:
            value = await _call(name, func, args)
        except Exception as exc:
            result.errors[name] = describe_error(exc)
            logger.warning("task %r failed: %s", name, result.errors[name])
            self._notify(name, exc)
            if on_failure is not None:
                on_failure(name)
            done()
            return
        result.results[name] = value
        logger.debug("task %r completed", name)
        self._notify(name, value)
        done()

    def _notify(self, name: str, outcome: Any) -> None:
        if self._on_task_complete is None:
            return
        try:
            self._on_task_complete(name, outcome)
        except Exception:
            # A broken progress callback must not turn into a failed or aborted run.
            logger.exception("on_task_complete callback raised for task %r", name)


async def _call(name: str, func: Callable[..., Awaitable[Any]], args: Sequence[Any]) -> Any:
    logger.debug("task %r started", name)
    awaitable = func(*args)
    if not inspect.isawaitable(awaitable):
        raise TypeError(
            f"task {name!r}: {func!r} returned {type(awaitable).__name__}, not an awaitable; "
            "pass a coroutine function"
        )
    return await awaitable


def _check_tasks(tasks: Iterable[TaskSpec]) -> list[TaskSpec]:
    """Validate every task up front, so a bad one cannot leave others half-started."""
    specs: list[TaskSpec] = []
    seen: set[str] = set()
    for index, spec in enumerate(tasks):
        if not isinstance(spec, tuple) or len(spec) != 3:
            raise TypeError(
                f"task #{index} must be a (name, coroutine_function, args) tuple, got {spec!r}"
            )
        name, func, args = spec
        if not isinstance(name, str):
            raise TypeError(f"task #{index}: name must be a str, got {name!r}")
        # Results and errors are keyed by name: a duplicate would silently overwrite one.
        if name in seen:
            raise ValueError(f"task #{index}: duplicate task name {name!r}")
        if not callable(func):
            raise TypeError(f"task {name!r}: {func!r} is not callable")
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise TypeError(f"task {name!r}: args must be a tuple or list, got {args!r}")
        seen.add(name)
        specs.append((name, func, tuple(args)))
    return specs
