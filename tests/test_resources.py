"""Scarce resources (exec(resources=...), ini exec_resources) on the local backends and engine:
never oversubscribed, refused by name when they do not exist, and no job starved (backfill)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

from pytest_codomyrmex_exec import AsyncScheduler, ParallelRunner, ScriptSpec
from pytest_codomyrmex_exec.engine import run_spec_async
from pytest_codomyrmex_exec.engine.start_queue import StartQueue


def _gpu_script(stamps: Path) -> str:
    return (
        "# pytest.mark.exec(resources={'GPU': 1})\nimport time\n"
        "start = time.time()\ntime.sleep(0.6)\n"
        f"open({str(stamps)!r}, 'a').write(f'{{start}} {{time.time()}}\\n')\n"
    )


@pytest.mark.modes("process", "async")
def test_two_gpu_scripts_never_overlap_on_a_machine_with_one(px: ExecPytester, mode: Mode) -> None:
    stamps = px.path / "stamps.txt"
    px.ini(exec_resources="GPU=1 db=2")
    for name in ("gpu_a", "gpu_b", "gpu_c"):
        px.script(f"{name}_script.py", _gpu_script(stamps))
    px.script("plain_script.py", "")
    px.script("tpu_script.py", "# pytest.mark.exec(resources={'TPU': 1})\n")
    px.script("db_script.py", "# pytest.mark.exec(resources={'db': 3})\n")
    causes = px.path / "causes.txt"
    px.conftest(
        px.backend_recorder()
        + "def pytest_exec_script_finished(item, result):\n"
        + f"    open({str(causes)!r}, 'a').write(f\"{{item.name}} {{result['cause']}}\\n\")\n"
    )
    result = px.run(*mode, "--exec-workers", "4", "-rE")

    result.assert_outcomes(passed=4, errors=2)
    assert px.backend_used() == mode.name
    assert {"tpu_script resources", "db_script resources"} <= set(px.lines("causes.txt"))
    result.stdout.fnmatch_lines(
        [
            "*tpu_script.py could not run: needs resource TPU=1, which the ini option "
            "exec_resources does not have (resources: GPU=1 db=2)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*db_script.py could not run: needs resource db=3, but the ini option exec_resources "
            "has only db=2"
        ]
    )
    intervals = sorted(tuple(map(float, line.split())) for line in px.lines("stamps.txt"))
    assert len(intervals) == 3
    for earlier, later in itertools.pairwise(intervals):
        assert earlier[1] <= later[0], f"GPU scripts overlapped: {intervals}"


def test_an_unknown_resource_is_an_error_inline_too(px: ExecPytester) -> None:
    px.script("tpu_script.py", "# pytest.mark.exec(resources={'TPU': 1})\n")
    result = px.run()

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs resource TPU=1, which the ini option exec_resources*"])


@pytest.mark.parametrize("value", ["GPU", "GPU=0", "GPU=x", "GPU=1 GPU=2"])
def test_a_bad_exec_resources_value_is_a_usage_error(px: ExecPytester, value: str) -> None:
    px.ini(exec_resources=value)
    result = px.run_inprocess("--collect-only")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini option 'exec_resources'" in result.stderr.str()


def test_scheduler_holds_resources_and_lets_others_pass() -> None:
    running: set[str] = set()
    seen_together: list[set[str]] = []

    async def job(name: str, seconds: float) -> None:
        running.add(name)
        seen_together.append(set(running))
        await asyncio.sleep(seconds)
        running.discard(name)

    async def main() -> None:
        scheduler = AsyncScheduler(max_concurrency=4, resources={"GPU": 1})
        scheduler.schedule(job, "gpu1", args=("gpu1", 0.2), resources={"GPU": 1})
        scheduler.schedule(job, "gpu2", args=("gpu2", 0.2), resources={"GPU": 1})
        scheduler.schedule(job, "cpu", args=("cpu", 0.05))
        with pytest.raises(ValueError, match="needs resource TPU=1"):
            scheduler.schedule(job, "tpu", args=("tpu", 0.1), resources={"TPU": 1})
        started = time.monotonic()
        jobs = await scheduler.run_all()
        assert {j.status.value for j in jobs.values()} == {"completed"}
        assert time.monotonic() - started >= 0.4  # the GPU jobs ran one after the other

    asyncio.run(main())
    assert not any({"gpu1", "gpu2"} <= together for together in seen_together)
    # The CPU job, scheduled after the waiting GPU job, did not wait for it.
    assert any({"gpu1", "cpu"} <= together for together in seen_together)


def test_scheduler_starts_waiting_jobs_by_priority_and_scales() -> None:
    order: list[int] = []

    async def job(number: int) -> None:
        order.append(number)
        await asyncio.sleep(0)

    async def main() -> float:
        scheduler = AsyncScheduler(max_concurrency=8, resources={"GPU": 1})
        for number in (3, 1, 2):
            scheduler.schedule(job, args=(number,), priority=number, resources={"GPU": 1})
        # Many jobs waiting on one resource: each start looks at one entry per demand.
        for number in range(3000):
            scheduler.schedule(job, args=(10 + number,), priority=10, resources={"GPU": 1})
        started = time.monotonic()
        await scheduler.run_all()
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert order[:4] == [1, 2, 3, 10]
    assert order[3:] == list(range(10, 3010))
    assert elapsed < 20, f"3003 jobs on one resource took {elapsed:.1f} s"


def test_parallel_runner_refuses_a_resource_it_does_not_have(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps.txt"
    gpu = [tmp_path / f"gpu{i}_script.py" for i in range(2)]
    for path in gpu:
        path.write_text(_gpu_script(stamps).split("\n", 1)[1])  # without the mark line
    tpu = tmp_path / "tpu_script.py"
    tpu.write_text("")
    configs = {path: {"resources": {"GPU": 1}} for path in gpu}
    configs[tpu] = {"resources": {"TPU": 1}}

    batch = ParallelRunner(4, resources={"GPU": 1}).run_scripts([*gpu, tpu], configs=configs)

    assert [r["status"].value for r in batch.results] == ["passed", "passed", "error"]
    assert "needs resource TPU=1" in (batch.results[2]["error"] or "")
    assert batch.results[2]["cause"] == "resources"
    intervals = sorted(tuple(map(float, line.split())) for line in stamps.read_text().splitlines())
    assert intervals[0][1] <= intervals[1][0], f"GPU scripts overlapped: {intervals}"


# -- no starvation: a waiting job reserves what it needs (backfill) ----------------------------

# With GPU=2: two priority -10 holders take one GPU each; a priority -5 job needs both; twelve
# priority 0 jobs need one each. Without reservation, each GPU a holder gives back goes to a
# priority 0 job (it fits, the -5 job does not), and the -5 job starts after all twelve.
# holder_b keeps its GPU until a priority 0 job starts, or 2 s after holder_a ended: without
# reservation one does start then, and the test sees it.
_BACKFILL = {
    "holder_a": (-10, 1, "time.sleep(0.3)"),
    "holder_b": (-10, 1, "until('holder_a end', 30)\nuntil('small', 2)"),
    "big": (-5, 2, ""),
    **{f"small{n:02}": (0, 1, "time.sleep(0.05)") for n in range(12)},
}

_STAMPING = """\
import time
LOG = {log!r}
def stamp(what):
    with open(LOG, "a") as stream:
        stream.write(f"{name} {{what}} {{time.time()}}\\n")
def until(text, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(LOG) as stream:
            if text in stream.read():
                return
        time.sleep(0.02)
stamp("start")
"""


def _backfill_scripts(folder: Path, log: Path, *, marks: bool) -> dict[str, ScriptSpec]:
    """The scenario's scripts; each logs ``NAME start`` and ``NAME end`` with the time."""
    specs = {}
    for name, (priority, gpus, body) in _BACKFILL.items():
        mark = f"# pytest.mark.exec(priority={priority}, resources={{'GPU': {gpus}}})\n"
        path = folder / f"{name}_script.py"
        stamping = _STAMPING.format(log=str(log), name=name)
        path.write_text((mark if marks else "") + stamping + body + "\nstamp('end')\n")
        specs[name] = ScriptSpec.build(path, priority=priority, resources={"GPU": gpus}, timeout=60)
    return specs


def _assert_big_was_not_starved(log: Path) -> None:
    times: dict[tuple[str, str], float] = {}
    for line in log.read_text().splitlines():
        name, what, when = line.split()
        times[name, what] = float(when)
    assert len(times) == 2 * len(_BACKFILL), f"not every script ran: {sorted(times)}"
    small_starts = sorted(times[name, "start"] for name in _BACKFILL if name.startswith("small"))
    # It waited only for the GPUs held when it became the head of the queue...
    assert times["big", "start"] > max(times["holder_a", "end"], times["holder_b", "end"])
    # ...and no priority 0 job took one of them meanwhile.
    assert times["big", "start"] < small_starts[0], (
        f"the priority -5 job started after {sum(t < times['big', 'start'] for t in small_starts)}"
        " priority 0 jobs that took the GPUs it waited for"
    )


def test_parallel_runner_does_not_starve_a_job_that_needs_more(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.touch()
    specs = _backfill_scripts(tmp_path, log, marks=False)

    batch = ParallelRunner(4, resources={"GPU": 2}).run_specs(specs)

    assert batch.success, [r["error"] for r in batch.results]
    _assert_big_was_not_starved(log)


def test_scheduler_does_not_starve_a_job_that_needs_more(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.touch()
    specs = _backfill_scripts(tmp_path, log, marks=False)

    async def main() -> dict[str, str]:
        scheduler = AsyncScheduler(max_concurrency=4, resources={"GPU": 2})
        for name, spec in specs.items():
            scheduler.schedule(
                run_spec_async,
                name=name,
                args=(spec,),
                priority=spec.priority,
                resources=spec.resources,
            )
        jobs = await scheduler.run_all()
        return {job.name: job.result["status"] for job in jobs.values()}

    assert set(asyncio.run(main()).values()) == {"passed"}
    _assert_big_was_not_starved(log)


@pytest.mark.modes("process", "async")
def test_backends_do_not_starve_a_script_that_needs_more(px: ExecPytester, mode: Mode) -> None:
    log = px.path / "log.txt"
    log.touch()
    _backfill_scripts(px.path, log, marks=True)
    px.ini(exec_resources="GPU=2")
    result = px.run(*mode, "--exec-workers", "4")

    result.assert_outcomes(passed=len(_BACKFILL))
    _assert_big_was_not_starved(log)


def test_the_core_lets_jobs_pass_a_waiting_one_only_with_what_it_does_not_need() -> None:
    queue: StartQueue[str] = StartQueue(limit=8, capacities={"GPU": 2, "db": 2})
    holders = {t.job: t for t in (queue.push(n, demand={"GPU": 1}) for n in ("a", "b"))}
    assert [t.job for t in queue.pop_ready()] == ["a", "b"]
    small = queue.push("small", demand={"GPU": 1})
    big = queue.push("big", priority=-5, demand={"GPU": 2, "db": 1})
    queue.push("db", demand={"db": 1})
    queue.push("cpu")

    # big waits and reserves both GPUs and one db: "db" fits in the other, "cpu" needs none.
    assert [t.job for t in queue.pop_ready()] == ["db", "cpu"]
    queue.push("db2", demand={"db": 1})
    assert queue.pop_ready() == [], "db2 would take the db that big waits for"
    queue.release(holders["a"])
    assert queue.pop_ready() == [], "small would take a GPU that big waits for"
    queue.release(holders["b"])
    assert queue.pop_ready() == [big]
    assert (queue.running, queue.waiting) == (3, 2)
    assert queue.withdraw(small)
    assert not queue.withdraw(small), "withdrawn once: it no longer waits"
    assert [t.job for t in queue.drain()] == ["db2"]
    assert queue.waiting == 0


def test_the_core_keeps_the_limit_and_the_order_of_equal_priorities() -> None:
    queue: StartQueue[int] = StartQueue(limit=2)
    for number in range(5):
        queue.push(number, priority=1 if number == 0 else 0, demand={"GPU": 9})  # not tracked
    first = queue.pop_ready()
    assert [t.job for t in first] == [1, 2]
    assert queue.pop_ready() == []
    queue.release(first[0])
    assert [t.job for t in queue.pop_ready()] == [3]
    assert queue.refusal({"GPU": 9}) is None, "without capacities no demand is refused"
