"""AsyncScheduler: priority order, retries, cancellation (also from other threads), events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LoopSteps

from pytest_codomyrmex_exec.engine.scheduler import (
    AsyncJob,
    AsyncJobStatus,
    AsyncScheduler,
    JobEvent,
    JobEventKind,
)


async def _noop() -> None:
    return None


async def _sleep_return(delay: float, value: Any = None) -> Any:
    await asyncio.sleep(delay)
    return value


class _Recorder:
    """Job bodies that record the order they start in and whether they were cancelled."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.cancelled: list[str] = []
        self.active = 0
        self.peak = 0

    async def job(self, label: str, delay: float = 0.0) -> str:
        self.order.append(label)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(label)
            raise
        finally:
            self.active -= 1
        return f"done {label}"


class _Flaky:
    """Raises on the first ``failures`` calls, then returns ``value``."""

    def __init__(self, failures: int, value: str = "ok") -> None:
        self.failures = failures
        self.calls = 0
        self.value = value

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls <= self.failures:
            raise RuntimeError(f"attempt {self.calls} failed")
        return self.value


def _statuses(scheduler: AsyncScheduler) -> dict[str, AsyncJobStatus]:
    return {job.name: job.status for job in scheduler.list_jobs()}


def test_lower_priority_number_runs_first_and_ties_keep_schedule_order() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler(max_concurrency=1)
    for label, priority in [("a5", 5), ("b1", 1), ("c3", 3), ("d1", 1), ("e0", 0), ("f3", 3)]:
        scheduler.schedule(rec.job, name=label, args=(label,), priority=priority)

    jobs = asyncio.run(scheduler.run_all())

    assert rec.order == ["e0", "b1", "d1", "c3", "f3", "a5"]
    assert len(jobs) == 6
    assert all(job.status is AsyncJobStatus.COMPLETED for job in jobs.values())
    assert {job.name: job.result for job in jobs.values()}["c3"] == "done c3"


def test_equal_priorities_start_in_the_order_scheduled() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler(max_concurrency=2)
    labels = [f"job{i:02d}" for i in range(20)]
    for label in labels:
        scheduler.schedule(rec.job, name=label, args=(label, 0.001), priority=7)

    asyncio.run(scheduler.run_all())

    assert rec.order == labels


def test_max_concurrency_bounds_running_jobs() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler(max_concurrency=3)
    # 0.2 s each: three rounds take 0.6 s and one at a time 1.8 s, so the upper bound has
    # 0.9 s to spare on a loaded machine (0.05 s jobs left 0.45 s) and still tells them apart.
    for i in range(9):
        scheduler.schedule(rec.job, args=(f"j{i}", 0.2))

    started = time.monotonic()
    asyncio.run(scheduler.run_all())
    elapsed = time.monotonic() - started

    assert rec.peak == 3
    assert scheduler.metrics.peak_running == 3
    assert 0.6 <= elapsed < 1.5, "nine 0.2 s jobs, three at a time, take three rounds"


def test_a_freed_slot_starts_the_next_job_one_loop_step_later() -> None:
    """The next job starts in the loop step after the previous one returned, not three later:
    each step may wait for the GIL (pytest's thread reports results meanwhile), and until the
    next script has started its slot sits idle."""
    steps = LoopSteps()
    seen: dict[str, int] = {}

    async def first() -> None:
        seen["first returned"] = steps.count

    async def second() -> None:
        seen["second started"] = steps.count

    async def main() -> None:
        steps.start()
        await scheduler.run_all()

    scheduler = AsyncScheduler(max_concurrency=1)
    scheduler.schedule(first)
    scheduler.schedule(second)
    asyncio.run(main())

    assert seen["second started"] - seen["first returned"] <= 1, seen
    assert scheduler.metrics.peak_running == 1, "one slot: the jobs never overlapped"


def test_failed_jobs_are_retried_up_to_max_runs_and_record_their_runs() -> None:
    flaky = _Flaky(failures=2, value="third time lucky")
    hopeless = _Flaky(failures=100)
    once = _Flaky(failures=1)
    scheduler = AsyncScheduler()
    flaky_id = scheduler.schedule(flaky, name="flaky", max_runs=3)
    hopeless_id = scheduler.schedule(hopeless, name="hopeless", max_runs=2)
    once_id = scheduler.schedule(once, name="once")

    asyncio.run(scheduler.run_all())

    flaky_job = scheduler.get_job(flaky_id)
    assert flaky_job is not None
    assert (flaky_job.status, flaky_job.runs, flaky.calls) == (AsyncJobStatus.COMPLETED, 3, 3)
    assert (flaky_job.result, flaky_job.error) == ("third time lucky", None)

    hopeless_job = scheduler.get_job(hopeless_id)
    assert hopeless_job is not None
    assert (hopeless_job.status, hopeless_job.runs, hopeless.calls) == (
        AsyncJobStatus.FAILED,
        2,
        2,
    )
    assert hopeless_job.error == "RuntimeError: attempt 2 failed"

    once_job = scheduler.get_job(once_id)
    assert once_job is not None
    assert (once_job.status, once_job.runs, once.calls) == (AsyncJobStatus.FAILED, 1, 1)

    metrics = scheduler.metrics
    assert (metrics.completed, metrics.failed, metrics.total_runs) == (1, 2, 6)


def test_a_function_that_returns_no_awaitable_fails_without_retries() -> None:
    calls: list[int] = []

    def not_async() -> int:
        calls.append(1)
        return 1

    scheduler = AsyncScheduler()
    # Deliberately not a coroutine function: the mistake this test is about.
    job_id = scheduler.schedule(not_async, max_runs=5)  # type: ignore[arg-type]
    asyncio.run(scheduler.run_all())

    job = scheduler.get_job(job_id)
    assert job is not None
    assert (job.status, job.runs, len(calls)) == (AsyncJobStatus.FAILED, 1, 1)
    assert job.error is not None
    assert "not an awaitable" in job.error


def test_args_and_kwargs_reach_the_function_and_names_default_to_it() -> None:
    async def combine(a: int, b: int, *, scale: int) -> int:
        return (a + b) * scale

    scheduler = AsyncScheduler()
    job_id = scheduler.schedule(combine, args=[1, 2], kwargs={"scale": 10})
    asyncio.run(scheduler.run_all())

    job = scheduler.get_job(job_id)
    assert job is not None
    assert job.result == 30
    assert job.name.endswith("combine")
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at
    assert job.duration is not None
    assert job.duration >= 0


def test_cancelling_a_pending_job_keeps_it_from_running() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler(max_concurrency=1)
    keep = scheduler.schedule(rec.job, name="keep", args=("keep",))
    drop = scheduler.schedule(rec.job, name="drop", args=("drop",))

    assert scheduler.cancel(drop) is True
    assert scheduler.cancel(drop) is False, "already cancelled"
    assert scheduler.cancel("no-such-job") is False
    asyncio.run(scheduler.run_all())

    assert rec.order == ["keep"]
    dropped = scheduler.get_job(drop)
    assert dropped is not None
    assert (dropped.status, dropped.runs, dropped.started_at) == (AsyncJobStatus.CANCELLED, 0, None)
    assert scheduler.cancel(keep) is False, "a completed job cannot be cancelled"
    metrics = scheduler.metrics
    assert (metrics.completed, metrics.cancelled, metrics.pending) == (1, 1, 0)


def test_cancelling_a_running_job_interrupts_it_and_counts_it_once() -> None:
    rec = _Recorder()
    events: list[JobEvent] = []
    scheduler = AsyncScheduler(max_concurrency=2, event_sink=events.append)
    slow = scheduler.schedule(rec.job, name="slow", args=("slow", 5.0))
    scheduler.schedule(rec.job, name="other", args=("other", 0.05))

    async def main() -> float:
        runner = asyncio.create_task(scheduler.run_all())
        while scheduler.get_job(slow).status is not AsyncJobStatus.RUNNING:  # type: ignore[union-attr]
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        assert scheduler.cancel(slow) is True
        started = time.monotonic()
        await runner
        return time.monotonic() - started

    assert asyncio.run(main()) < 3.0  # not the slow job's 5 s
    assert rec.cancelled == ["slow"]
    assert _statuses(scheduler) == {
        "slow": AsyncJobStatus.CANCELLED,
        "other": AsyncJobStatus.COMPLETED,
    }
    job = scheduler.get_job(slow)
    assert job is not None
    assert (job.runs, job.result) == (1, None)
    slow_kinds = [e.kind for e in events if e.job_id == slow]
    assert slow_kinds == [JobEventKind.SCHEDULED, JobEventKind.STARTED, JobEventKind.CANCELLED]
    metrics = scheduler.metrics
    assert (metrics.cancelled, metrics.completed, metrics.running) == (1, 1, 0)


def test_a_job_that_swallows_cancellation_still_ends_cancelled_not_completed() -> None:
    entered: list[bool] = []

    async def stubborn() -> str:
        entered.append(True)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "I refuse"
        return "finished"

    scheduler = AsyncScheduler()
    job_id = scheduler.schedule(stubborn, max_runs=3)

    async def main() -> None:
        runner = asyncio.create_task(scheduler.run_all())
        while not entered:  # cancelled inside its body, whatever the machine's speed
            await asyncio.sleep(0.005)
        assert scheduler.cancel(job_id) is True
        await runner

    asyncio.run(main())

    job = scheduler.get_job(job_id)
    assert job is not None
    assert (job.status, job.result, job.runs) == (AsyncJobStatus.CANCELLED, None, 1)
    assert (scheduler.metrics.completed, scheduler.metrics.cancelled) == (0, 1)


def test_cancelling_run_all_leaves_no_job_running_or_pending() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler(max_concurrency=2)
    scheduler.schedule(rec.job, name="quick", args=("quick",), priority=0)
    for label in ["r1", "r2", "p1", "p2"]:
        scheduler.schedule(rec.job, name=label, args=(label, 5.0), priority=1)

    async def main() -> None:
        runner = asyncio.create_task(scheduler.run_all())
        # Once quick has ended and r1, r2 run (r2 only starts in quick's slot); a fixed
        # 0.1 s could end first on a loaded machine.
        deadline = time.monotonic() + 10
        while sorted(rec.order) != ["quick", "r1", "r2"] or rec.active < 2:
            assert time.monotonic() < deadline, rec.order
            await asyncio.sleep(0.005)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert asyncio.all_tasks() == {asyncio.current_task()}

    started = time.monotonic()
    asyncio.run(main())

    assert time.monotonic() - started < 3.0  # the running jobs would take 5 s
    assert _statuses(scheduler) == {
        "quick": AsyncJobStatus.COMPLETED,
        "r1": AsyncJobStatus.CANCELLED,
        "r2": AsyncJobStatus.CANCELLED,
        "p1": AsyncJobStatus.CANCELLED,
        "p2": AsyncJobStatus.CANCELLED,
    }
    assert sorted(rec.cancelled) == ["r1", "r2"]
    assert "p1" not in rec.order
    metrics = scheduler.metrics
    assert (metrics.running, metrics.pending, metrics.cancelled, metrics.completed) == (0, 0, 4, 1)


def test_jobs_scheduled_during_run_all_are_run_in_priority_order() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler(max_concurrency=1)

    async def spawner() -> str:
        rec.order.append("spawner")
        for label, priority in [("late5", 5), ("late1", 1), ("late3", 3)]:
            scheduler.schedule(rec.job, name=label, args=(label,), priority=priority)
        return "spawned"

    scheduler.schedule(spawner, priority=0)
    scheduler.schedule(rec.job, name="early4", args=("early4",), priority=4)

    async def main() -> dict[str, AsyncJob]:
        runner = asyncio.create_task(scheduler.run_all())
        await asyncio.sleep(0)  # let run_all start
        # Scheduled from outside the jobs, while run_all is already running.
        scheduler.schedule(rec.job, name="outside2", args=("outside2",), priority=2)
        return await runner

    jobs = asyncio.run(main())

    assert rec.order == ["spawner", "late1", "outside2", "late3", "early4", "late5"]
    assert len(jobs) == 6
    assert all(job.status is AsyncJobStatus.COMPLETED for job in jobs.values())


def test_a_job_scheduled_while_run_all_waits_on_a_long_job_is_picked_up() -> None:
    scheduler = AsyncScheduler(max_concurrency=2)
    late_ended = asyncio.Event()

    async def long_job() -> str:
        # Ends once the late job has (or after 5 s): no fixed duration a stalled process could
        # outlast. A late job that waited for this one's slot would end after it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(late_ended.wait(), 5)
        return "long"

    async def late_job() -> str:
        late_ended.set()
        return "late"

    long_id = scheduler.schedule(long_job, name="long")

    async def main() -> str:
        runner = asyncio.create_task(scheduler.run_all())
        while scheduler.get_job(long_id).status is not AsyncJobStatus.RUNNING:  # type: ignore[union-attr]
            await asyncio.sleep(0.005)
        late = scheduler.schedule(late_job, name="late")
        await runner
        return late

    late_id = asyncio.run(main())

    late = scheduler.get_job(late_id)
    (long,) = scheduler.list_jobs()[:1]
    assert late is not None
    assert (late.status, late.result) == (AsyncJobStatus.COMPLETED, "late")
    # A slot was free: the late job must start at once, not wait for the long one to end.
    assert late.finished_at is not None
    assert long.finished_at is not None
    assert late.finished_at < long.finished_at


def test_scheduler_runs_again_under_a_new_event_loop() -> None:
    scheduler = AsyncScheduler(max_concurrency=1)
    first = scheduler.schedule(_sleep_return, args=(0.01, 1))
    asyncio.run(scheduler.run_all())
    second = scheduler.schedule(_sleep_return, args=(0.01, 2))
    jobs = asyncio.run(scheduler.run_all())

    assert [jobs[first].result, jobs[second].result] == [1, 2]
    assert jobs[first].runs == 1, "a finished job is not run again"


def test_run_all_cannot_run_twice_at_once() -> None:
    scheduler = AsyncScheduler()
    scheduler.schedule(_sleep_return, args=(0.05,))

    async def main() -> None:
        runner = asyncio.create_task(scheduler.run_all())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await scheduler.run_all()
        await runner

    asyncio.run(main())
    assert scheduler.metrics.completed == 1


def test_events_tell_each_jobs_story() -> None:
    events: list[JobEvent] = []
    scheduler = AsyncScheduler(event_sink=events.append)
    ok = scheduler.schedule(_noop, name="ok")
    bad = scheduler.schedule(_Flaky(failures=9), name="bad", max_runs=2)
    dropped = scheduler.schedule(_noop, name="dropped")
    scheduler.cancel(dropped)

    asyncio.run(scheduler.run_all())

    def story(job_id: str) -> list[JobEventKind]:
        return [e.kind for e in events if e.job_id == job_id]

    assert story(ok) == ["scheduled", "started", "completed"]
    assert story(bad) == ["scheduled", "started", "failed"]
    assert story(dropped) == ["scheduled", "cancelled"]
    failed = next(e for e in events if e.kind is JobEventKind.FAILED)
    assert (failed.name, failed.runs, failed.error) == ("bad", 2, "RuntimeError: attempt 2 failed")
    times = [e.time for e in events]
    assert times == sorted(times)


def test_job_events_carry_the_callers_key_so_equal_names_stay_apart() -> None:
    events: list[JobEvent] = []
    scheduler = AsyncScheduler(event_sink=events.append)
    first = scheduler.schedule(_sleep_return, name="same", args=(0.0, 1), key=("item", 1))
    second = scheduler.schedule(_Flaky(failures=9), name="same", key=("item", 2))
    unkeyed = scheduler.schedule(_noop, name="same")
    with pytest.raises(TypeError, match="key must be hashable"):
        scheduler.schedule(_noop, key=["not", "hashable"])

    asyncio.run(scheduler.run_all())

    def story(key: object) -> list[tuple[str, JobEventKind]]:
        return [(e.job_id, e.kind) for e in events if e.key == key]

    assert story(("item", 1)) == [(first, kind) for kind in ("scheduled", "started", "completed")]
    assert story(("item", 2)) == [(second, kind) for kind in ("scheduled", "started", "failed")]
    assert story(unkeyed) == [(unkeyed, kind) for kind in ("scheduled", "started", "completed")]
    assert scheduler.get_job(first).key == ("item", 1)  # type: ignore[union-attr]
    assert len(scheduler.list_jobs()) == 3, "the refused job was not queued"


def test_a_raising_event_sink_is_logged_and_does_not_break_scheduling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sink(event: JobEvent) -> None:
        raise RuntimeError("sink down")

    scheduler = AsyncScheduler(event_sink=sink)
    ids = [scheduler.schedule(_sleep_return, args=(0.0, i)) for i in range(3)]

    with caplog.at_level(logging.ERROR, logger="pytest_codomyrmex_exec.engine.scheduler"):
        asyncio.run(scheduler.run_all())

    assert [scheduler.get_job(i).result for i in ids] == [0, 1, 2]  # type: ignore[union-attr]
    assert scheduler.metrics.completed == 3
    sink_errors = [r for r in caplog.records if "event sink raised" in r.getMessage()]
    assert len(sink_errors) == 9, "scheduled, started and completed for three jobs"


def test_list_jobs_get_job_and_metrics_agree() -> None:
    scheduler = AsyncScheduler()
    ids = [scheduler.schedule(_noop, name=f"n{i}") for i in range(4)]
    scheduler.schedule(_Flaky(failures=1), name="fails")
    scheduler.cancel(ids[0])

    assert [j.name for j in scheduler.list_jobs(AsyncJobStatus.PENDING)] == [
        "n1",
        "n2",
        "n3",
        "fails",
    ]
    asyncio.run(scheduler.run_all())

    assert [j.name for j in scheduler.list_jobs("completed")] == ["n1", "n2", "n3"]
    assert [j.name for j in scheduler.list_jobs(AsyncJobStatus.FAILED)] == ["fails"]
    assert [j.id for j in scheduler.list_jobs(AsyncJobStatus.CANCELLED)] == [ids[0]]
    assert len(scheduler.list_jobs()) == 5
    assert scheduler.get_job("missing") is None
    metrics = scheduler.metrics
    assert metrics.to_dict() == {
        "total": 5,
        "pending": 0,
        "running": 0,
        "completed": 3,
        "failed": 1,
        "cancelled": 1,
        "total_runs": 4,
        "peak_running": 4,
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be at least 1, got 0"),
        ({"max_concurrency": 1.5}, TypeError, "max_concurrency must be an int"),
        ({"event_sink": 42}, TypeError, "event_sink must be callable"),
    ],
)
def test_invalid_scheduler_arguments_are_rejected(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AsyncScheduler(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"func": "not callable"}, TypeError, "func must be a coroutine function"),
        ({"max_runs": 0}, ValueError, "max_runs must be at least 1, got 0"),
        ({"max_runs": 2.0}, TypeError, "max_runs must be an int"),
        ({"priority": math.nan}, ValueError, "priority must not be NaN"),
        ({"priority": "high"}, TypeError, "priority must be a number"),
        ({"args": "abc"}, TypeError, "args must be a tuple or list"),
        ({"kwargs": [("a", 1)]}, TypeError, "kwargs must be a mapping"),
    ],
)
def test_invalid_schedule_arguments_are_rejected_and_nothing_is_queued(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    scheduler = AsyncScheduler()
    call: dict[str, Any] = {"func": _noop, **kwargs}
    with pytest.raises(error, match=match):
        scheduler.schedule(**call)
    assert scheduler.list_jobs() == []
    assert scheduler.metrics.total == 0


def _run_in_thread(scheduler: AsyncScheduler) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(scheduler.run_all())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_cancel_all_threadsafe_stops_a_run_in_another_thread() -> None:
    rec = _Recorder()
    running = threading.Event()

    async def blocker(label: str) -> None:
        running.set()
        await rec.job(label, 10.0)

    scheduler = AsyncScheduler(max_concurrency=2)
    for i in range(5):
        scheduler.schedule(blocker, name=f"b{i}", args=(f"b{i}",))
    thread, errors = _run_in_thread(scheduler)
    assert running.wait(5)

    # The loop belongs to the other thread: direct calls are refused with a pointer.
    with pytest.raises(RuntimeError, match="cancel_all_threadsafe"):
        scheduler.cancel_all()
    started = time.monotonic()
    cancelled = scheduler.cancel_all_threadsafe().result(timeout=5)
    thread.join(5)

    assert not thread.is_alive()
    assert time.monotonic() - started < 5.0  # not the blockers' 10 s
    assert errors == []
    assert cancelled == 5
    assert sorted(rec.cancelled) == ["b0", "b1"]
    assert set(_statuses(scheduler).values()) == {AsyncJobStatus.CANCELLED}
    assert scheduler.metrics.cancelled == 5


def test_cancel_threadsafe_cancels_one_running_job_from_another_thread() -> None:
    running = threading.Event()

    async def blocker() -> None:
        running.set()
        await asyncio.sleep(10)

    scheduler = AsyncScheduler(max_concurrency=2)
    target = scheduler.schedule(blocker, name="target")
    scheduler.schedule(_sleep_return, name="bystander", args=(0.2, "done"))
    thread, errors = _run_in_thread(scheduler)
    assert running.wait(5)

    assert scheduler.cancel_threadsafe(target).result(timeout=5) is True
    assert scheduler.cancel_threadsafe("unknown").result(timeout=5) is False
    thread.join(5)

    assert not thread.is_alive()
    assert errors == []
    assert _statuses(scheduler) == {
        "target": AsyncJobStatus.CANCELLED,
        "bystander": AsyncJobStatus.COMPLETED,
    }


def test_cancel_all_threadsafe_before_the_run_starts_cancels_pending_jobs() -> None:
    rec = _Recorder()
    scheduler = AsyncScheduler()
    for i in range(3):
        scheduler.schedule(rec.job, args=(f"j{i}",))

    result: list[int] = []
    canceller = threading.Thread(
        target=lambda: result.append(scheduler.cancel_all_threadsafe().result(timeout=5))
    )
    canceller.start()
    canceller.join(5)
    asyncio.run(scheduler.run_all())

    assert result == [3]
    assert rec.order == []
    assert scheduler.metrics.cancelled == 3


def test_five_thousand_jobs_run_in_priority_order_quickly() -> None:
    rng = random.Random(1234)
    order: list[int] = []

    async def record(index: int) -> None:
        order.append(index)

    scheduler = AsyncScheduler(max_concurrency=1)
    priorities = [rng.randrange(50) for _ in range(5000)]
    started = time.monotonic()
    for index, priority in enumerate(priorities):
        scheduler.schedule(record, args=(index,), priority=priority)
    asyncio.run(scheduler.run_all())
    elapsed = time.monotonic() - started

    assert order == sorted(range(5000), key=lambda i: (priorities[i], i))
    assert scheduler.metrics.completed == 5000
    assert elapsed < 5.0


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie is dead, just not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_cancelling_a_running_script_job_kills_its_process_tree(tmp_path: Path) -> None:
    from pytest_codomyrmex_exec.engine.run_async import run_script_async

    pids_file = tmp_path / "pids.txt"
    script = tmp_path / "tree_script.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"tmp = {str(pids_file) + '.tmp'!r}\n"
        "with open(tmp, 'w') as f:\n"
        "    f.write(f'{os.getpid()} {child.pid}')\n"
        f"os.replace(tmp, {str(pids_file)!r})\n"
        "time.sleep(30)\n"
    )
    scheduler = AsyncScheduler()
    job_id = scheduler.schedule(
        run_script_async, name="tree", args=(script,), kwargs={"timeout": 60}
    )

    async def main() -> tuple[float, list[int]]:
        runner = asyncio.create_task(scheduler.run_all())
        deadline = time.monotonic() + 10
        while not pids_file.exists():
            assert time.monotonic() < deadline, "the script never started"
            await asyncio.sleep(0.02)
        assert scheduler.cancel(job_id) is True
        started = time.monotonic()
        await runner
        wind_down = time.monotonic() - started
        # Checked inside the loop: asyncio.run's own clean-up must not be what kills the
        # tree. SIGKILL is sent by now; give the kernel a moment to finish the processes.
        pids = [int(p) for p in pids_file.read_text().split()]
        give_up = time.monotonic() + 1.0
        while any(_alive(pid) for pid in pids) and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        return wind_down, [pid for pid in pids if _alive(pid)]

    wind_down, survivors = asyncio.run(main())

    assert wind_down < 10.0  # not the script's 30 s
    assert survivors == []
    job = scheduler.get_job(job_id)
    assert job is not None
    assert (job.status, job.runs, job.result) == (AsyncJobStatus.CANCELLED, 1, None)
