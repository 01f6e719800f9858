"""The dask backend next to the async one, and the per-script cost that sizes a big cluster.

    python bench/dask_row.py                 # 40 tiny scripts, 3 interleaved runs per arm
    python bench/dask_row.py --scripts 40 --runs 5 --tasks 200

Two measurements, printed as Markdown (docs/distributed.md quotes them), both through whole
pytest sessions, as a user runs them:

1. ``--scripts`` tiny scripts with ``--exec-parallel --exec-workers 2``: ``--exec-backend
   async`` against ``--exec-backend dask`` on a local cluster that the run starts and closes
   (its start-up is in the number). Interleaved runs, medians and their ratio.
2. On one running local cluster (two workers of one thread, ``--exec-dask-scheduler``):
   ``--tasks`` tiny scripts with the dask backend against the same with the async backend and
   two workers, and ``--tasks`` empty Dask tasks (the scheduler's own cost per task). From
   these: the overhead per script of a worker slot, and an estimate for 10,000 scripts on
   50 workers.

Needs the ``[dask]`` extra; not part of the unit tests.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import child_environment, real_interpreter


def _session(python: str, folder: Path, env: dict[str, str], *options: str) -> float:
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    argv += ["--exec-parallel", "--exec-workers", "2", *options]
    started = time.perf_counter()
    done = subprocess.run(
        argv, check=False, cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{options} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def _scripts(folder: Path, count: int) -> Path:
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    for index in range(count):
        (folder / f"tiny{index:04d}_script.py").write_text("print('ok')\n")
    return folder


def _noop() -> None:
    return None


def per_script(python: str, folder: Path, env: dict[str, str], tasks: int) -> dict[str, float]:
    """Wall seconds per script on a running cluster and locally, and per empty Dask task."""
    import distributed

    with (
        distributed.LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.wait_for_workers(2, timeout=120)
        client.gather([client.submit(_noop, pure=False) for _ in range(20)])  # warm up
        started = time.perf_counter()
        client.gather([client.submit(_noop, pure=False) for _ in range(tasks)])
        empty = (time.perf_counter() - started) / tasks
        address = f"--exec-dask-scheduler={cluster.scheduler_address}"
        on_dask = _session(python, folder, env, "--exec-backend", "dask", address) / tasks
    local = _session(python, folder, env, "--exec-backend", "async") / tasks
    return {"empty": empty, "dask": on_dask, "local": local}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    python = real_interpreter(sys.executable)

    with tempfile.TemporaryDirectory(prefix="codomyrmex-dask-bench-") as tmp:
        env = child_environment(Path(tmp) / "pycache")
        small = _scripts(Path(tmp) / "small", args.scripts)
        walls: dict[str, list[float]] = {"async": [], "dask": []}
        _session(python, small, env)  # warm-up: bytecode caches
        for _ in range(args.runs):
            for backend, values in walls.items():
                values.append(_session(python, small, env, "--exec-backend", backend))
        costs = per_script(python, _scripts(Path(tmp) / "many", args.tasks), env, args.tasks)

    medians = {backend: statistics.median(values) for backend, values in walls.items()}
    print(f"## {args.scripts} tiny scripts, --exec-workers 2, {args.runs} runs each\n")
    print("| backend | median s | runs |")
    print("|---|--:|---|")
    for backend, values in walls.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {backend} | {medians[backend]:.2f} | {runs} |")
    print(f"\ndask / async = {medians['dask'] / medians['async']:.2f}\n")

    slot_cost = (costs["dask"] - costs["local"]) * 2  # two slots were busy at once
    print(f"## per script, {args.tasks} scripts, a running cluster of 2 one-thread workers\n")
    print(f"- empty Dask task, end to end: {costs['empty'] * 1000:.2f} ms")
    print(f"- tiny script, dask backend: {costs['dask'] * 1000:.1f} ms of wall per script")
    print(f"- the same, async backend with 2 workers: {costs['local'] * 1000:.1f} ms")
    print(f"- Dask's overhead per script: {slot_cost * 1000:.1f} ms of a worker slot")
    # 10,000 scripts on 50 one-thread workers: the slots add the overhead to each script; the
    # scheduler handles tasks one after another, at the empty task's rate at worst.
    for seconds in (1.0, 10.0, 60.0):
        slots = 10_000 * (seconds + slot_cost) / 50
        scheduler = 10_000 * costs["empty"]
        added = 10_000 * slot_cost / 50
        print(
            f"- 10,000 scripts of {seconds:g} s on 50 workers: about {max(slots, scheduler):.0f} s"
            f" ({added:.1f} s of it Dask's per-script overhead; scheduler floor {scheduler:.0f} s)"
        )


if __name__ == "__main__":
    main()
