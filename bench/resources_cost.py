"""What device scheduling costs: 1,000 tiny scripts with resources against the same without.

```
python bench/resources_cost.py [--scripts 1000] [--runs 5] [--workers 4]
```

Both arms run the same empty scripts through a :class:`ParallelRunner` with the same
``max_workers``; in the ``resources`` arm the runner has ``GPU=0,1,2,3`` and every script asks
for a share (``GPU: 0.25``, so the workers, not the GPUs, bound what runs at once, as in the
plain arm), is given an id and gets ``CUDA_VISIBLE_DEVICES``. What is compared is the CPU time
of this process (``RUSAGE_SELF``: the runner's threads, without the scripts themselves, which
are the same in both arms): the scheduling core, the unit choice, the extra environment
variables and the result's ids. CPU time hardly moves when other work shares the machine,
unlike wall time, which is printed too. The arms are interleaved run by run; the line to
read is the ratio of medians (issue 17: at most 1.05).

It also times the core alone (``StartQueue``: push, start, release of the same 1,000 jobs,
no processes) to show what one job's unit choice costs in microseconds.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pytest_codomyrmex_exec import ParallelRunner, ScriptSpec
from pytest_codomyrmex_exec.engine import Slots
from pytest_codomyrmex_exec.engine.start_queue import StartQueue

_CAPACITY = {"GPU": Slots(["0", "1", "2", "3"])}
_SHARE = {"GPU": 0.25}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batch(folder: Path, scripts: int, workers: int, with_resources: bool) -> tuple[float, float]:
    """One arm's run: (CPU seconds of this process, wall seconds)."""
    specs = [
        (index, ScriptSpec.build(folder / "tiny.py", resources=_SHARE if with_resources else {}))
        for index in range(scripts)
    ]
    runner = ParallelRunner(workers, resources=_CAPACITY if with_resources else None)
    cpu, wall = _cpu(), time.perf_counter()
    batch = runner.run_specs(specs)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    if not batch.success:
        sys.exit(f"a script did not pass: {batch.results[0]}")
    if with_resources and not all(r["resource_ids"] for r in batch.results):
        sys.exit("the resources arm handed out no ids: it measured nothing")
    return cpu, wall


def _core(jobs: int, with_resources: bool) -> float:
    """Microseconds per job for push, start and release through the core, 4 at a time."""
    queue: StartQueue[int] = StartQueue(limit=4, capacities=_CAPACITY if with_resources else None)
    started = time.perf_counter()
    for job in range(jobs):
        queue.push(job, demand=_SHARE if with_resources else None)
    running = queue.pop_ready()
    while running:
        queue.release(running.pop(0))
        running.extend(queue.pop_ready())
    return (time.perf_counter() - started) / jobs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scripts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    options = parser.parse_args()

    core = {
        arm: statistics.median(_core(options.scripts, arm) for _ in range(5))
        for arm in (False, True)
    }
    print(
        f"core alone, per job: {core[False]:.1f} us without resources, "
        f"{core[True]:.1f} us with (+{core[True] - core[False]:.1f} us)"
    )

    measured: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="resources-cost-") as folder:
        (Path(folder) / "tiny.py").write_text("")
        for run in range(options.runs):
            for arm in (False, True) if run % 2 == 0 else (True, False):
                measured[arm].append(_batch(Path(folder), options.scripts, options.workers, arm))
    cpu = {arm: statistics.median(c for c, _ in runs) for arm, runs in measured.items()}
    wall = {arm: statistics.median(w for _, w in runs) for arm, runs in measured.items()}
    print(f"{options.scripts} tiny scripts, {options.workers} workers, median of {options.runs}:")
    print(f"  runner CPU: {cpu[False]:.3f} s without resources, {cpu[True]:.3f} s with")
    print(f"  wall:       {wall[False]:.3f} s without resources, {wall[True]:.3f} s with")
    print(f"ratio of medians (runner CPU, with / without): {cpu[True] / cpu[False]:.3f}")
    print(f"ratio of medians (wall, with / without):       {wall[True] / wall[False]:.3f}")


if __name__ == "__main__":
    main()
