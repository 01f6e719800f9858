"""ParallelRunner against real scripts: counts, order, configs, keyed specs, fail-fast, cancel,
pools, async; and the plugin's backends running the same script under two keys."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode, error_of, still_alive, write_script

from pytest_codomyrmex_exec import FailureCause, ParallelRunner, ProgressEvent, ScriptSpec

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

# Writes its pid next to itself, then sleeps far longer than any test may take. The write is
# atomic (rename), so whoever sees the file also sees the pid: a killer that acts on the file's
# mere existence must not be able to stop the sleeper half-way through writing it.
SLEEPER = """
    import os, time
    with open(__file__ + ".pid.tmp", "w") as fh:
        fh.write(f"{os.getpid()}\\n")
    os.replace(__file__ + ".pid.tmp", __file__ + ".pid")
    time.sleep(30)
"""


def marker_script(folder: Path, name: str) -> tuple[Path, Path]:
    """A quick passing script that leaves a file behind, to tell whether it ever ran."""
    marker = folder / f"{name}.ran"
    return write_script(folder, name, f"open({str(marker)!r}, 'w').close()\n"), marker


def read_pid(script: Path, within: float = 30) -> int:
    path = Path(f"{script}.pid")
    deadline = time.monotonic() + within
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline, f"{script.name} never wrote its pid"
        time.sleep(0.01)
    return int(path.read_text())


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: forking a threaded pytest process is deprecated (and warns) on 3.12+.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


# -- counting and ordering ---------------------------------------------------------------------


def test_counts_add_up_and_results_follow_input_order(tmp_path: Path) -> None:
    scripts = [
        write_script(tmp_path, "good.py", "print('fine')\n"),
        write_script(tmp_path, "bad.py", "raise SystemExit(1)\n"),
        write_script(tmp_path, "slow.py", "import time\ntime.sleep(10)\n"),
        tmp_path / "missing.py",
        write_script(tmp_path, "good2.py", "pass\n"),
    ]
    # Compared as sets: a thread of an earlier test (a Dask client's, say) that ends during
    # this one is not ours to count.
    threads_before = set(threading.enumerate())

    outcome = ParallelRunner(max_workers=3).run_scripts(scripts, timeout=1)

    assert [r["script"] for r in outcome.results] == [str(s) for s in scripts]
    assert [r["status"] for r in outcome.results] == [
        "passed",
        "failed",
        "timeout",
        "error",
        "passed",
    ]
    assert (outcome.total, outcome.passed, outcome.failed, outcome.timeout) == (5, 2, 2, 1)
    assert outcome.cancelled == 0
    assert outcome.passed + outcome.failed + outcome.timeout + outcome.cancelled == outcome.total
    assert outcome.success is False
    assert outcome.to_dict()["total"] == 5
    assert outcome.results[0]["stdout"] == "fine\n"
    left = set(threading.enumerate()) - threads_before
    assert not left, f"the batch left worker threads behind: {left}"


def test_empty_batch_and_single_path_argument() -> None:
    runner = ParallelRunner()
    outcome = runner.run_scripts([])
    assert (outcome.total, outcome.success) == (0, True)
    with pytest.raises(TypeError, match="not one path"):
        runner.run_scripts("script.py")


def test_default_and_invalid_max_workers() -> None:
    assert ParallelRunner().max_workers == min(os.cpu_count() or 1, 8)
    assert ParallelRunner(3).max_workers == 3
    with pytest.raises(ValueError, match="at least 1"):
        ParallelRunner(0)
    with pytest.raises(ValueError, match="at least 1"):
        ParallelRunner(-2)
    for bad in (True, 1.5, "2"):
        with pytest.raises(TypeError, match="max_workers"):
            ParallelRunner(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executor"):
        ParallelRunner(executor=42)  # type: ignore[arg-type]


def test_scripts_start_by_priority_across_the_batch(tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    body = f"import sys\nopen({str(log)!r}, 'a').write(sys.argv[1] + '\\n')\n"
    scripts = [write_script(tmp_path, f"p{n}.py", body) for n in range(4)]
    priorities = {scripts[0]: 3, scripts[1]: -2, scripts[2]: 3, scripts[3]: 0}
    configs = {path: {"priority": p, "args": [path.stem]} for path, p in priorities.items()}

    outcome = ParallelRunner(1).run_scripts(scripts, configs=configs, timeout=10)

    assert outcome.success
    assert [r["script"] for r in outcome.results] == [str(s) for s in scripts]  # input order
    # Lower first; equal priorities keep the batch's order.
    assert log.read_text().split() == ["p1", "p3", "p0", "p2"]


# -- keyed specs -------------------------------------------------------------------------------


def test_run_specs_runs_one_script_under_two_keys_with_events_keyed_by_them(
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs.txt"
    script = write_script(tmp_path, "twice.py", f"open({str(log)!r}, 'a').write('ran\\n')\n")
    spec = ScriptSpec.build(script, timeout=10)
    events: list[ProgressEvent] = []

    outcome = ParallelRunner(2, progress_callback=events.append).run_specs(
        [(("item", 1), spec), (("item", 2), spec.replace(args=["again"]))]
    )

    assert [r["status"] for r in outcome.results] == ["passed", "passed"]
    assert log.read_text() == "ran\nran\n", "the script did not run once per key"
    for key, result in zip([("item", 1), ("item", 2)], outcome.results, strict=True):
        mine = [event for event in events if event.key == key]
        assert [event.kind for event in mine] == ["started", "finished"]
        assert mine[1].result is result
    by_mapping = ParallelRunner(1).run_specs({"a": spec, "b": spec})
    assert by_mapping.passed == 2
    assert log.read_text().count("ran") == 4


@pytest.mark.parametrize(
    ("specs", "error", "message"),
    [
        ([("k", "script.py")], TypeError, "'k' must be a ScriptSpec"),
        ([("k", None), ("k", None)], TypeError, "must be a ScriptSpec"),
        (["script.py"], TypeError, r"#0 must be a \(key, ScriptSpec\) pair"),
        ("script.py", TypeError, "pairs or a mapping"),
    ],
)
def test_run_specs_refuses_malformed_input_by_name(
    specs: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ParallelRunner().run_specs(specs)  # type: ignore[arg-type]


def test_run_specs_refuses_a_key_given_twice_before_anything_runs(tmp_path: Path) -> None:
    script, marker = marker_script(tmp_path, "once.py")
    spec = ScriptSpec.build(script)
    with pytest.raises(ValueError, match="the key 'k' is given twice"):
        ParallelRunner().run_specs([("k", spec), ("k", spec)])
    with pytest.raises(TypeError, match=r"the key \['k'\] is not hashable"):
        ParallelRunner().run_specs([(["k"], spec)])
    assert not marker.exists()


@pytest.mark.modes("process", "async")
def test_the_same_script_twice_is_two_items_and_two_runs(px: ExecPytester, mode: Mode) -> None:
    px.script("a_script.py", f"open({str(px.path / 'runs.txt')!r}, 'a').write('ran\\n')\n")
    result = px.run(*mode, "--keep-duplicates", "a_script.py", "a_script.py")

    result.assert_outcomes(passed=2)
    assert px.lines("runs.txt") == ["ran", "ran"]


# -- per-script configs ------------------------------------------------------------------------

PROBE = """
    import os, sys
    print(os.environ.get("WHO"), os.environ.get("SHARED"), sys.argv[1:])
    sys.exit(int(os.environ.get("CODE", "0")))
"""


def test_configs_by_path_keep_same_named_scripts_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_script(tmp_path / "a", "probe.py", PROBE)
    second = write_script(tmp_path / "b", "probe.py", PROBE)
    monkeypatch.chdir(tmp_path)
    configs: dict[str | Path, dict[str, object]] = {
        os.path.join("a", "probe.py"): {"env": {"WHO": "a"}, "args": ["first"]},
        second: {"env": {"WHO": "b", "CODE": "4"}, "allowed_exit_codes": [4], "timeout": 5},
    }

    outcome = ParallelRunner(2).run_scripts(
        [first, second], env={"WHO": "batch", "SHARED": "s"}, configs=configs
    )

    one, two = outcome.results
    assert one["stdout"] == "a s ['first']\n"
    assert two["stdout"] == "b s []\n"
    assert (two["status"], two["exit_code"]) == ("passed", 4)
    assert outcome.success


def test_unknown_config_key_names_script_and_key_before_anything_runs(tmp_path: Path) -> None:
    script, marker = marker_script(tmp_path, "probe.py")
    with pytest.raises(ValueError, match=r"probe\.py.*'tiemout'"):
        ParallelRunner().run_scripts([script], configs={script: {"tiemout": 3}})
    with pytest.raises(ValueError, match=r"probe\.py.*timeout"):
        ParallelRunner().run_scripts([script], configs={script: {"timeout": -1}})
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "env", "error"),
    [
        ("batch", {"A": 1}, TypeError),
        ("config", {"A": 1}, TypeError),
        ("batch", {"A=B": "1"}, ValueError),
        ("config", {"A": "x\0y"}, ValueError),
    ],
)
def test_bad_env_is_refused_before_any_script_starts(
    tmp_path: Path, where: str, env: dict[str, object], error: type[Exception]
) -> None:
    first, first_ran = marker_script(tmp_path, "first.py")
    second, second_ran = marker_script(tmp_path, "second.py")
    given: dict[str, object] = (
        {"env": env} if where == "batch" else {"configs": {second: {"env": env}}}
    )
    with pytest.raises(error, match="env"):
        ParallelRunner(2).run_scripts([first, second], **given)  # type: ignore[arg-type]
    assert not first_ran.exists()
    assert not second_ran.exists()


# -- fail-fast and cancel ----------------------------------------------------------------------


@linux_only
def test_fail_fast_kills_running_scripts_promptly_and_cancels_the_rest(tmp_path: Path) -> None:
    sleeper = write_script(tmp_path, "sleeper.py", SLEEPER)
    # Fails once the sleeper runs (not after a fixed 0.3 s, before which a loaded machine may
    # not have started the sleeper at all): the fail-fast must meet a running script.
    failing = write_script(
        tmp_path,
        "fails.py",
        f"""
        import os, time
        deadline = time.monotonic() + 30
        while not os.path.exists({str(sleeper) + ".pid"!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        raise SystemExit(1)
        """,
    )
    queued, marker = marker_script(tmp_path, "queued.py")

    began = time.monotonic()
    outcome = ParallelRunner(2, fail_fast=True).run_scripts([failing, sleeper, queued], timeout=30)
    wall = time.monotonic() - began

    assert wall < 10, f"fail_fast took {wall:.2f} s: it waited for the sleeper (30 s)"
    assert [r["status"] for r in outcome.results] == ["failed", "cancelled", "cancelled"]
    assert (outcome.failed, outcome.cancelled, outcome.total) == (1, 2, 3)
    reason = error_of(outcome.results[2])
    assert outcome.results[2]["cause"] == FailureCause.CANCELLED
    assert outcome.results[2]["attempts"] == 0, "the queued script never started"
    assert "fail_fast" in reason
    assert "fails.py" in reason
    assert not marker.exists(), "a script queued behind the failure was started"
    assert still_alive([read_pid(sleeper)]) == []


def test_without_fail_fast_a_failure_does_not_stop_the_others(tmp_path: Path) -> None:
    failing = write_script(tmp_path, "fails.py", "raise SystemExit(1)\n")
    later, marker = marker_script(tmp_path, "later.py")
    outcome = ParallelRunner(1).run_scripts([failing, later], timeout=10)
    assert [r["status"] for r in outcome.results] == ["failed", "passed"]
    assert marker.exists()


@linux_only
def test_cancel_from_another_thread_kills_running_and_skips_queued(tmp_path: Path) -> None:
    sleepers = [write_script(tmp_path, f"sleeper{i}.py", SLEEPER) for i in (1, 2)]
    queued, marker = marker_script(tmp_path, "queued.py")
    runner = ParallelRunner(2)
    cancelled_at: list[float] = []

    def cancel_once_running() -> None:
        # Not after a fixed 0.5 s: on a loaded machine the sleepers may not have written
        # their pids by then, and the test is about killing running scripts.
        for sleeper in sleepers:
            read_pid(sleeper)
        cancelled_at.append(time.monotonic())
        runner.cancel()

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    try:
        outcome = runner.run_scripts([*sleepers, queued], timeout=30)
    finally:
        canceller.join()
    wall = time.monotonic() - cancelled_at[0]

    assert wall < 10, f"run_scripts returned {wall:.2f} s after the cancel, not at once"
    assert outcome.cancelled == 3 == outcome.total
    assert all("cancel()" in (r["error"] or "") for r in outcome.results)
    assert not marker.exists()
    assert still_alive(read_pid(s) for s in sleepers) == []
    # cancel() stops the batches running then, not the runner.
    assert runner.run_scripts([queued], timeout=10).success


# -- progress ----------------------------------------------------------------------------------


def test_progress_callback_sees_each_start_and_end_on_the_callers_thread(tmp_path: Path) -> None:
    scripts = [write_script(tmp_path, f"s{i}.py", "pass\n") for i in range(3)]
    events: list[tuple[ProgressEvent, int]] = []
    runner = ParallelRunner(
        2, progress_callback=lambda e: events.append((e, threading.get_ident()))
    )

    outcome = runner.run_scripts(scripts, timeout=10)

    assert {ident for _, ident in events} == {threading.get_ident()}
    for index, script in enumerate(scripts):
        mine = [e for e, _ in events if e.index == index]
        assert [e.kind for e in mine] == ["started", "finished"]
        assert all(e.script == str(script) for e in mine)
        assert mine[0].result is None
        assert mine[1].result == outcome.results[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0][0].kind = "finished"  # type: ignore[misc]


def test_a_slow_progress_callback_does_not_keep_the_next_script_waiting(tmp_path: Path) -> None:
    """A script's slot goes to the next script before its end is reported: pytest reporting
    a result must not leave a worker idle. One worker: the second script can only run in the
    slot the first gave back, while the callback for the first's end still waits for it."""
    first = write_script(tmp_path, "first.py", "pass\n")
    second, marker = marker_script(tmp_path, "second.py")
    seen_running: list[bool] = []

    def slow_callback(event: ProgressEvent) -> None:
        if event.kind == "finished" and event.index == 0:
            deadline = time.monotonic() + 20  # a loaded machine starts the next in < 1 s
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_running.append(marker.exists())

    outcome = ParallelRunner(1, progress_callback=slow_callback).run_scripts(
        [first, second], timeout=30
    )

    assert [r["status"] for r in outcome.results] == ["passed", "passed"]
    assert seen_running == [True], "the second script waited for the first one's report"


def test_failing_progress_callback_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(event: ProgressEvent) -> None:
        raise RuntimeError("display broke")

    script = write_script(tmp_path, "ok.py", "pass\n")
    outcome = ParallelRunner(1, progress_callback=explode).run_scripts([script], timeout=10)
    assert outcome.success
    assert any(
        r.name.startswith("pytest_codomyrmex_exec") and "progress_callback" in r.getMessage()
        for r in caplog.records
    )


# -- pluggable executors -----------------------------------------------------------------------


def test_process_pool_runs_scripts_and_is_left_open(tmp_path: Path) -> None:
    script = write_script(tmp_path, "ppid.py", "import os\nprint(os.getppid())\n")
    with spawn_pool(2) as pool:
        outcome = ParallelRunner(executor=pool).run_scripts([script, script], timeout=20)
        assert outcome.success, outcome.results
        parents = {int(r["stdout"]) for r in outcome.results}
        assert os.getpid() not in parents, "the scripts were not run from the pool's workers"
        assert pool.submit(pow, 2, 5).result() == 32  # still open for its owner


@linux_only
def test_process_pool_batch_can_be_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeper = write_script(tmp_path, "sleeper.py", SLEEPER)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where the token folder goes
    cancelled_at: list[float] = []

    def cancel_once_running() -> None:
        # A spawn pool's worker may take seconds to start on a loaded machine: cancel only
        # once the script really runs, so the test is about killing it, not about timing.
        read_pid(sleeper, within=60)
        cancelled_at.append(time.monotonic())
        runner.cancel()

    with spawn_pool(1) as pool:
        runner = ParallelRunner(executor=pool)
        canceller = threading.Thread(target=cancel_once_running)
        canceller.start()
        try:
            outcome = runner.run_scripts([sleeper, sleeper], timeout=30)
        finally:
            canceller.join()
        wall = time.monotonic() - cancelled_at[0]
    assert wall < 10, f"run_scripts returned {wall:.2f} s after the cancel, not at once"
    assert [r["status"] for r in outcome.results] == ["cancelled", "cancelled"]
    assert still_alive([read_pid(sleeper)]) == []
    assert list(private_tmp.iterdir()) == [], "the cancel token's folder was left behind"


@linux_only
def test_broken_process_pool_becomes_error_results(tmp_path: Path) -> None:
    sleeper = write_script(tmp_path, "sleeper.py", SLEEPER)
    # Waits until the sleeper runs, then kills the pool worker that started it.
    killer = write_script(
        tmp_path,
        "killer.py",
        f"""
        import os, signal, time
        while not os.path.exists({str(sleeper) + ".pid"!r}):
            time.sleep(0.01)
        os.kill(os.getppid(), signal.SIGKILL)
        """,
    )
    later, _ = marker_script(tmp_path, "later.py")

    began = time.monotonic()
    with spawn_pool(2) as pool:
        outcome = ParallelRunner(executor=pool).run_scripts([killer, sleeper, later], timeout=30)
    wall = time.monotonic() - began

    # The sleeper's 30 s timeout is what this rules out; a spawn pool alone can take a few
    # seconds to start on a loaded machine.
    assert wall < 25
    assert [r["status"] for r in outcome.results] == ["error"] * 3
    assert all("pool" in (r["error"] or "") for r in outcome.results), outcome.results
    assert {r["cause"] for r in outcome.results} == {FailureCause.WORKER_LOST}
    assert outcome.failed == outcome.total == 3
    assert still_alive([read_pid(sleeper)]) == [], "the dead worker's script was left running"


def test_executor_factory_result_is_shut_down_but_a_passed_executor_is_not(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, "ok.py", "pass\n")
    made: list[Executor] = []

    def factory() -> Executor:
        made.append(ThreadPoolExecutor(1))
        return made[-1]

    assert ParallelRunner(executor=factory).run_scripts([script], timeout=10).success
    with pytest.raises(RuntimeError, match="shutdown"):
        made[0].submit(int)

    with ThreadPoolExecutor(1) as mine:
        assert ParallelRunner(executor=mine).run_scripts([script], timeout=10).success
        assert mine.submit(int, "7").result() == 7


# -- asyncio -----------------------------------------------------------------------------------


def test_run_scripts_async_does_not_block_the_event_loop(tmp_path: Path) -> None:
    scripts = [
        # 1 s: at 20 ms a tick a free loop ticks about 50 times; on a loaded machine, each
        # tick late, still well over 10. A blocked loop ticks once or twice.
        write_script(tmp_path, f"nap{i}.py", "import time\ntime.sleep(1.0)\n")
        for i in range(2)
    ]

    async def main() -> tuple[int, bool]:
        ticks = 0
        finished = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not finished.is_set():
                ticks += 1
                await asyncio.sleep(0.02)

        tick_task = asyncio.create_task(ticker())
        outcome = await ParallelRunner(2).run_scripts_async(scripts, timeout=10)
        finished.set()
        await tick_task
        return ticks, outcome.success

    ticks, success = asyncio.run(main())
    assert success
    assert ticks >= 10, f"the loop ticked only {ticks} times while the scripts ran"


@linux_only
def test_cancelling_the_awaiting_task_kills_the_batch_then_propagates(tmp_path: Path) -> None:
    sleeper = write_script(tmp_path, "sleeper.py", SLEEPER)

    async def main() -> float:
        task = asyncio.create_task(ParallelRunner(1).run_scripts_async([sleeper], timeout=30))
        await asyncio.to_thread(read_pid, sleeper)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - cancelled_at

    took = asyncio.run(main())
    assert took < 10  # not the 30 s timeout
    # By the time CancelledError arrived the script was already gone.
    assert still_alive([read_pid(sleeper)], within=0.1) == []


# -- logging -----------------------------------------------------------------------------------


def test_batch_start_finish_and_errors_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_codomyrmex_exec")
    script = write_script(tmp_path, "ok.py", "pass\n")
    ParallelRunner(1).run_scripts([script, tmp_path / "absent.py"], timeout=10)
    ours = [r for r in caplog.records if r.name == "pytest_codomyrmex_exec.engine.parallel"]
    text = "\n".join(r.getMessage() for r in ours)
    assert "running 2 script(s)" in text
    assert "started" in text
    assert "ok.py" in text
    assert "batch finished" in text
    assert "1 passed" in text
    assert any(
        r.levelno >= logging.WARNING and "absent.py" in r.getMessage() for r in caplog.records
    )
