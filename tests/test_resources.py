"""Scarce resources (exec(resources=...), ini exec_resources) on the local backends and engine."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

from pytest_codomyrmex_exec import AsyncScheduler


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
    result = px.run(*mode, "--exec-workers", "4", "-rE")

    result.assert_outcomes(passed=4, errors=2)
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
    from pytest_codomyrmex_exec import ParallelRunner

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
    intervals = sorted(tuple(map(float, line.split())) for line in stamps.read_text().splitlines())
    assert intervals[0][1] <= intervals[1][0], f"GPU scripts overlapped: {intervals}"
