"""``python bench/idle_gap.py``: how long a slot sits idle between one script and the next.

Each of N tiny scripts writes, from its own first and last line, the monotonic clock (shared
by every process on the machine) to one log. With W slots, the k-th script to start (k >= W)
took the slot the (k-W)-th script to end gave back, so ``start[k] - end[k-W]`` (both sorted)
is the time from a script's last line to the next one's first: the interpreter's exit and
start-up, which every arm pays, plus whatever the runner adds in between. The floor
(``xargs -P W``) pays only the first part; an arm's median less the floor's is the idle gap
it adds. Nothing is instrumented: the plugin runs as a user runs it.

Arms run interleaved (one run of each per round), and the medians of each arm's gaps over
all its runs are printed with the wall and CPU time (children included) of its runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SCRIPT = (
    "import os, time\n"
    "_first = time.clock_gettime(time.CLOCK_MONOTONIC)\n"
    'print("tiny script {index}")\n'
    "_fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    'os.write(_fd, f"{{_first}} {{time.clock_gettime(time.CLOCK_MONOTONIC)}}\\n".encode())\n'
)


def _corpus(folder: Path, count: int, log: Path) -> list[Path]:
    (folder / "pytest.ini").write_text("[pytest]\n")
    scripts = []
    for index in range(count):
        script = folder / f"s{index:04d}_script.py"
        script.write_text(_SCRIPT.format(index=index, log=str(log)))
        scripts.append(script)
    return scripts


def _gaps(log: Path, workers: int) -> list[float]:
    pairs = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    starts = sorted(first for first, _ in pairs)
    ends = sorted(last for _, last in pairs)
    return [starts[k] - ends[k - workers] for k in range(workers, len(starts))]


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arms", default="floor,async,process,warm")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="idle-gap-") as tmp:
        folder, log = Path(tmp) / "corpus", Path(tmp) / "times.log"
        folder.mkdir()
        scripts = _corpus(folder, args.scripts, log)
        plugin = (python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--exec-parallel")
        plugin += ("--exec-workers", str(args.workers))
        commands = {
            "floor": ("xargs", "-0", "-P", str(args.workers), "-n1", python),
            "async": (*plugin, "--exec-backend", "async"),
            "process": (*plugin, "--exec-backend", "process"),
            "warm": (*plugin, "--exec-warm"),
        }
        names = b"\0".join(str(script).encode() for script in scripts)  # xargs's input
        arms = args.arms.split(",")
        unknown = sorted(set(arms) - set(commands))
        if unknown:
            parser.error(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(commands)}")
        gaps: dict[str, list[float]] = {arm: [] for arm in arms}
        walls: dict[str, list[float]] = {arm: [] for arm in arms}
        cpus: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.runs + 1):  # the first round warms the caches, and is dropped
            for arm in arms:
                log.unlink(missing_ok=True)
                cpu, wall = _cpu_children(), time.perf_counter()
                subprocess.run(
                    commands[arm], cwd=folder, input=names, capture_output=True, check=True
                )
                walls[arm].append(time.perf_counter() - wall)
                cpus[arm].append(_cpu_children() - cpu)
                gaps[arm].append(statistics.median(_gaps(log, args.workers)))
        floor = statistics.median(gaps["floor"][1:]) if "floor" in gaps else 0.0
        print(f"load average {os.getloadavg()[0]:.1f}; {args.scripts} scripts, W={args.workers}")
        print("| arm | gap ms (median) | over floor ms | wall s | CPU s |")
        print("|---|--:|--:|--:|--:|")
        for arm in arms:
            gap = statistics.median(gaps[arm][1:])
            print(
                f"| {arm} | {1000 * gap:.2f} | {1000 * (gap - floor):.2f} "
                f"| {statistics.median(walls[arm][1:]):.2f} "
                f"| {statistics.median(cpus[arm][1:]):.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
