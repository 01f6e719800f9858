"""AsyncParallelRunner: concurrency, bounds, fail-fast, caller cancellation, callbacks."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from conftest import LoopSteps

from pytest_codomyrmex_exec.engine.async_runner import AsyncParallelRunner, TaskSpec
from pytest_codomyrmex_exec.engine.results import AsyncExecutionResult


async def _sleep_return(delay: float, value: Any) -> Any:
    await asyncio.sleep(delay)
    return value


async def _fail_after(delay: float, message: str) -> None:
    await asyncio.sleep(delay)
    raise ValueError(message)


class _Tracker:
    """Counts how many tracked coroutines run at once, and which ones were cancelled."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def work(self, name: str, delay: float) -> str:
        self.started.append(name)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.active -= 1
        return name.upper()


def _assert_adds_up(result: AsyncExecutionResult) -> None:
    assert result.completed + result.failed + result.cancelled == result.total


def test_tasks_run_concurrently_and_return_their_values() -> None:
    runner = AsyncParallelRunner()
    # 0.5 s each: one after another would take 2.5 s, so a 2 s bound leaves 1.5 s for a
    # loaded machine (0.1 s tasks left 0.3 s).
    tasks = [(f"t{i}", _sleep_return, (0.5, i * 10)) for i in range(5)]

    started = time.monotonic()
    result = asyncio.run(runner.run(tasks))
    elapsed = time.monotonic() - started

    assert result.results == {"t0": 0, "t1": 10, "t2": 20, "t3": 30, "t4": 40}
    assert result.errors == {}
    assert result.cancelled_tasks == []
    assert (result.total, result.completed, result.success) == (5, 5, True)
    assert elapsed < 2.0, "five 0.5 s tasks must overlap, not run one after another"
    assert 0.5 <= result.execution_time < 2.0
    assert runner.last_result is result


def test_max_concurrency_bounds_how_many_run_at_once() -> None:
    tracker = _Tracker()
    runner = AsyncParallelRunner(max_concurrency=2)
    tasks = [(f"t{i}", tracker.work, (f"t{i}", 0.03)) for i in range(6)]

    result = asyncio.run(runner.run(tasks))

    assert tracker.peak == 2
    assert tracker.started == [f"t{i}" for i in range(6)], "waiting tasks start in given order"
    assert result.completed == 6
    assert result.results["t3"] == "T3"


def test_a_freed_slot_starts_the_next_task_one_loop_step_later() -> None:
    """As in the scheduler: a slot that waits three loop steps for its next task sits idle
    while another thread (pytest's reporting) may hold the GIL at each of them."""
    steps = LoopSteps()
    seen: dict[str, int] = {}

    async def mark(label: str) -> None:
        seen[label] = steps.count

    async def main() -> AsyncExecutionResult:
        steps.start()
        runner = AsyncParallelRunner(max_concurrency=1)
        return await runner.run([("first", mark, ("first",)), ("second", mark, ("second",))])

    result = asyncio.run(main())

    assert result.completed == 2
    assert seen["second"] - seen["first"] <= 1, seen


def test_a_failing_task_is_recorded_and_the_others_still_finish() -> None:
    runner = AsyncParallelRunner()
    tasks: list[TaskSpec] = [
        ("ok", _sleep_return, (0.05, "fine")),
        ("bad", _fail_after, (0.01, "boom")),
        ("empty", _fail_after, (0.0, "")),
    ]

    result = asyncio.run(runner.run(tasks))

    assert result.results == {"ok": "fine"}
    assert result.errors == {"bad": "ValueError: boom", "empty": "ValueError"}
    assert result.cancelled_tasks == []
    assert (result.failed, result.success) == (2, False)
    _assert_adds_up(result)


def test_fail_fast_records_the_failure_and_cancels_the_rest_promptly() -> None:
    tracker = _Tracker()
    runner = AsyncParallelRunner(max_concurrency=3, fail_fast=True)
    tasks: list[TaskSpec] = [
        ("quick", _sleep_return, (0.0, "done")),
        ("bad", _fail_after, (0.05, "first failure")),
        ("slow1", tracker.work, ("slow1", 5.0)),
        ("slow2", tracker.work, ("slow2", 5.0)),
        ("queued", tracker.work, ("queued", 5.0)),
    ]

    started = time.monotonic()
    result = asyncio.run(runner.run(tasks))
    elapsed = time.monotonic() - started

    assert elapsed < 3.0, "fail-fast must not wait for the slow tasks (5 s)"
    assert result.results == {"quick": "done"}
    assert result.errors == {"bad": "ValueError: first failure"}
    assert sorted(result.cancelled_tasks) == ["queued", "slow1", "slow2"]
    assert result.cancelled == 3
    _assert_adds_up(result)
    # The slow tasks were really interrupted; the queued one never got a slot.
    assert sorted(tracker.cancelled) == ["slow1", "slow2"]
    assert "queued" not in tracker.started


def test_without_fail_fast_a_failure_cancels_nothing() -> None:
    tracker = _Tracker()
    runner = AsyncParallelRunner(fail_fast=False)
    tasks: list[TaskSpec] = [
        ("bad", _fail_after, (0.0, "x")),
        ("slow", tracker.work, ("slow", 0.05)),
    ]

    result = asyncio.run(runner.run(tasks))

    assert result.results == {"slow": "SLOW"}
    assert result.cancelled_tasks == []
    assert tracker.cancelled == []


def test_runner_can_be_reused_under_a_second_event_loop() -> None:
    # More tasks than the bound, so the semaphore is contended (and would bind to a loop).
    runner = AsyncParallelRunner(max_concurrency=1)
    tasks = [(f"t{i}", _sleep_return, (0.01, i)) for i in range(3)]

    first = asyncio.run(runner.run(tasks))
    second = asyncio.run(runner.run(tasks))

    assert first.results == second.results == {"t0": 0, "t1": 1, "t2": 2}
    assert second.errors == {}
    assert runner.last_result is second


def test_cancelling_the_caller_keeps_results_so_far_and_propagates() -> None:
    tracker = _Tracker()
    runner = AsyncParallelRunner()
    ended: list[str] = []

    async def noting(name: str, func: Any, *args: Any) -> Any:
        try:
            return await func(*args)
        finally:
            ended.append(name)

    tasks: list[TaskSpec] = [
        ("fast", noting, ("fast", _sleep_return, 0.0, "early")),
        ("broken", noting, ("broken", _fail_after, 0.0, "early failure")),
        ("slow", tracker.work, ("slow", 5.0)),
    ]

    async def main() -> None:
        outer = asyncio.create_task(runner.run(tasks))
        # Cancel once the quick two have ended and the slow one runs. A fixed 0.1 s sleep
        # could end first when the machine stalls the process at the wrong moment.
        deadline = time.monotonic() + 10
        while len(ended) < 2 or tracker.active == 0:
            assert time.monotonic() < deadline, (ended, tracker.started)
            await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        # Nothing of the run is left behind in the loop.
        assert asyncio.all_tasks() == {asyncio.current_task()}

    started = time.monotonic()
    asyncio.run(main())

    assert time.monotonic() - started < 3.0  # the slow task would take 5 s
    partial = runner.last_result
    assert partial is not None
    assert partial.results == {"fast": "early"}
    assert partial.errors == {"broken": "ValueError: early failure"}
    assert partial.cancelled_tasks == ["slow"]
    assert tracker.cancelled == ["slow"]
    _assert_adds_up(partial)


def test_on_task_complete_gets_every_outcome() -> None:
    seen: dict[str, Any] = {}
    runner = AsyncParallelRunner(fail_fast=True, on_task_complete=seen.__setitem__)
    tasks: list[TaskSpec] = [
        ("ok", _sleep_return, (0.0, 42)),
        ("bad", _fail_after, (0.02, "nope")),
        ("slow", _sleep_return, (5.0, None)),
    ]

    asyncio.run(runner.run(tasks))

    assert seen.keys() == {"ok", "bad", "slow"}
    assert seen["ok"] == 42
    assert isinstance(seen["bad"], ValueError)
    assert str(seen["bad"]) == "nope"
    assert isinstance(seen["slow"], asyncio.CancelledError)


def test_a_raising_callback_is_logged_and_does_not_break_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def callback(name: str, outcome: Any) -> None:
        raise RuntimeError(f"callback broke on {name}")

    runner = AsyncParallelRunner(on_task_complete=callback)
    tasks = [(f"t{i}", _sleep_return, (0.0, i)) for i in range(3)]

    with caplog.at_level(logging.ERROR, logger="pytest_codomyrmex_exec.engine.async_runner"):
        result = asyncio.run(runner.run(tasks))

    assert result.results == {"t0": 0, "t1": 1, "t2": 2}
    broken = [r for r in caplog.records if "on_task_complete" in r.getMessage()]
    assert len(broken) == 3
    assert all(r.exc_info is not None for r in broken)


def test_start_finish_and_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    runner = AsyncParallelRunner()
    tasks = [("ok", _sleep_return, (0.0, 1)), ("bad", _fail_after, (0.0, "kaput"))]

    with caplog.at_level(logging.DEBUG, logger="pytest_codomyrmex_exec"):
        asyncio.run(runner.run(tasks))

    messages = [r.getMessage() for r in caplog.records if r.name.endswith("async_runner")]
    assert any(m.startswith("running 2 task(s)") for m in messages)
    assert any("'bad' failed: ValueError: kaput" in m for m in messages)
    assert any("1 completed, 1 failed, 0 cancelled" in m for m in messages)


def test_a_function_that_returns_no_awaitable_is_that_tasks_error() -> None:
    def not_async(x: int) -> int:
        return x

    runner = AsyncParallelRunner()
    # Deliberately not a coroutine function: the mistake this test is about.
    tasks: list[Any] = [("sync", not_async, (1,)), ("ok", _sleep_return, (0, 2))]
    result = asyncio.run(runner.run(tasks))

    assert result.results == {"ok": 2}
    assert result.errors["sync"].startswith("TypeError: task 'sync'")
    assert "not an awaitable" in result.errors["sync"]


def test_an_empty_task_list_is_a_successful_empty_run() -> None:
    result = asyncio.run(AsyncParallelRunner().run([]))

    assert (result.total, result.completed, result.success) == (0, 0, True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be at least 1"),
        ({"max_concurrency": -3}, ValueError, "got -3"),
        ({"max_concurrency": 2.5}, TypeError, "max_concurrency must be an int"),
        ({"max_concurrency": True}, TypeError, "max_concurrency must be an int"),
        ({"on_task_complete": "print"}, TypeError, "on_task_complete must be callable"),
    ],
)
def test_invalid_constructor_arguments_are_rejected(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AsyncParallelRunner(**kwargs)


@pytest.mark.parametrize(
    ("bad_task", "error", "match"),
    [
        (("late", "not callable", ()), TypeError, "'late': 'not callable' is not callable"),
        (("late", _sleep_return), TypeError, r"must be a \(name, coroutine_function, args\)"),
        ((3, _sleep_return, ()), TypeError, "name must be a str"),
        (("late", _sleep_return, "ab"), TypeError, "args must be a tuple or list"),
        (("first", _sleep_return, (0, 1)), ValueError, "duplicate task name 'first'"),
    ],
)
def test_malformed_tasks_are_rejected_before_anything_starts(
    bad_task: Any, error: type[Exception], match: str
) -> None:
    started: list[str] = []

    async def first() -> None:
        started.append("first")

    runner = AsyncParallelRunner()
    with pytest.raises(error, match=match):
        asyncio.run(runner.run([("first", first, ()), bad_task]))
    assert started == []
