"""The dask backend next to the async one, and the per-task cost that sizes a big cluster.

    python bench/dask_row.py                 # 40 tiny scripts, 3 interleaved runs per arm
    python bench/dask_row.py --scripts 40 --runs 5 --tasks 200

Two measurements, printed as Markdown (docs/distributed.md quotes them):

1. A pytest session over ``--scripts`` tiny scripts with ``--exec-parallel --exec-workers 2``:
   ``--exec-backend async`` against ``--exec-backend dask`` (a local cluster of two worker
   processes, started and closed by the run, so its start-up is in the number). Interleaved
   runs, medians, and their ratio from the same invocation.
2. On one running local cluster (two workers, one thread each): ``--tasks`` tiny scripts as
   the backend's own task (``run_on_worker``: claim, started event, engine, result), against
   the same scripts through the engine in two local threads; and ``--tasks`` empty Dask
   tasks, the scheduler's own cost per task. From these: the per-task overhead Dask adds,
   and an estimate for 10,000 scripts on 50 workers.

Not part of the unit tests; it needs the ``[dask]`` extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from measure import child_environment, real_interpreter


def _session(python: str, folder: Path, backend: str, env: dict[str, str]) -> float:
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    argv += ["--exec-parallel", "--exec-workers", "2", "--exec-backend", backend]
    started = time.perf_counter()
    done = subprocess.run(
        argv, check=False, cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{backend} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def _noop() -> None:
    return None


def per_task(folder: Path, tasks: int) -> dict[str, float]:
    """Seconds per script: on Dask (2 workers), locally (2 threads), and an empty Dask task."""
    import distributed

    from pytest_codomyrmex_exec import ScriptSpec
    from pytest_codomyrmex_exec.engine import run_spec
    from pytest_codomyrmex_exec.plugin.dask_worker import WorkerRun, run_on_worker

    specs = [ScriptSpec(script=str(path)) for path in sorted(folder.glob("*_script.py"))]
    specs = (specs * (tasks // len(specs) + 1))[:tasks]
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        client.gather([client.submit(_noop, pure=False) for _ in range(20)])  # warm up
        started = time.perf_counter()
        client.gather([client.submit(_noop, pure=False) for _ in range(tasks)])
        empty = (time.perf_counter() - started) / tasks

        run_id = f"bench-{os.getpid()}"
        started = time.perf_counter()
        futures = [
            client.submit(run_on_worker, spec, index, WorkerRun(run_id, "bench"), pure=False)
            for index, spec in enumerate(specs)
        ]
        results = client.gather(futures)
        on_dask = (time.perf_counter() - started) / tasks
    assert all(r["status"] == "passed" for r in results), results[:3]
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        local = list(pool.map(run_spec, specs))
        in_threads = (time.perf_counter() - started) / tasks
    assert all(r["status"] == "passed" for r in local)
    return {"empty": empty, "dask": on_dask, "local": in_threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    python = real_interpreter(sys.executable)

    with tempfile.TemporaryDirectory(prefix="codomyrmex-dask-bench-") as tmp:
        folder = Path(tmp)
        (folder / "pytest.ini").write_text("[pytest]\n")
        for index in range(args.scripts):
            (folder / f"tiny{index:03d}_script.py").write_text("print('ok')\n")
        env = child_environment(folder / "pycache")
        walls: dict[str, list[float]] = {"async": [], "dask": []}
        _session(python, folder, "async", env)  # warm-up: bytecode caches
        for _ in range(args.runs):
            for backend, values in walls.items():
                values.append(_session(python, folder, backend, env))
        costs = per_task(folder, args.tasks)

    medians = {backend: statistics.median(values) for backend, values in walls.items()}
    print(f"## {args.scripts} tiny scripts, --exec-workers 2, {args.runs} runs each\n")
    print("| backend | median s | runs |")
    print("|---|--:|---|")
    for backend, values in walls.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {backend} | {medians[backend]:.2f} | {runs} |")
    print(f"\ndask / async = {medians['dask'] / medians['async']:.2f}\n")

    workers = 2
    overhead = costs["dask"] - costs["local"]  # seconds of wall per script, 2 slots busy
    print(f"## per task, {args.tasks} tasks, 2 workers of one thread\n")
    print(f"- empty Dask task, end to end: {costs['empty'] * 1000:.2f} ms")
    print(f"- tiny script as our Dask task: {costs['dask'] * 1000:.1f} ms of wall per script")
    print(f"- the same through the engine in 2 threads: {costs['local'] * 1000:.1f} ms")
    print(f"- Dask's overhead per script: {overhead * workers * 1000:.1f} ms of a worker slot")
    # 10,000 scripts on 50 one-thread workers: the slots add the overhead to each script; the
    # scheduler handles tasks one after another, at the empty task's rate at worst.
    slot_cost = overhead * workers
    for seconds in (1.0, 10.0, 60.0):
        slots = 10_000 * (seconds + slot_cost) / 50
        scheduler = 10_000 * costs["empty"]
        added = 10_000 * slot_cost / 50
        print(
            f"- 10,000 scripts of {seconds:g} s on 50 workers: about {max(slots, scheduler):.0f} s"
            f" ({added:.1f} s of it Dask's per-task overhead; scheduler floor {scheduler:.0f} s)"
        )


if __name__ == "__main__":
    main()
