"""``--exec-workers auto`` against fixed worker counts (1x, 2x, 4x the cores) and xdist.

```
python bench/workers_auto.py [--runs 3]
```

Two corpora, generated into a temporary folder: ``sleep``, rich-like scripts that mostly
wait (each a short animation: 20 frames of a little work and a 50 ms sleep), and ``cpu``,
scripts that each burn 0.25 s of CPU. Every arm runs the same files with the async backend
(the default); the sleep corpus also runs under the hand-written ``subprocess.run`` peer with
``xdist -n 2``. Arms are interleaved, a run per arm per round; the table shows medians and
the ratios the issue sets targets for: auto against the best fixed count on each corpus
(target <= 1.1x) and auto against ``xdist -n 2`` on the sleep corpus (target <= 0.55x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from corpora import SPECS, CorpusSpec, generate
from measure import child_environment, run_once

from pytest_codomyrmex_exec.engine.cpu_meter import cores

_ANIMATION = "import time\nfor frame in range(20):\n    sum(range(20000))\n    time.sleep(0.05)\n"

SLEEP = CorpusSpec(
    "auto-sleep",
    24,
    0,
    2,
    lambda index, count: (f"anim_{index:02d}_script.py", _ANIMATION),
    "24 animations: 20 frames of a little work and a 50 ms sleep",
)
CPU = SPECS["cpu"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    n = cores()
    python = sys.executable
    counts = {"auto": "auto", **{f"{k}x cores ({k * n})": str(k * n) for k in (1, 2, 4)}}
    with tempfile.TemporaryDirectory(prefix="bench-workers-auto-") as work:
        workdir = Path(work)
        env = child_environment(workdir / "pycache")
        corpora = [generate(SLEEP, workdir), generate(CPU, workdir)]
        arms: list[tuple[str, str, list[str], Path, int]] = []
        for corpus in corpora:
            for label, workers in counts.items():
                command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                command += ["--exec-parallel", "--exec-workers", workers]
                arms.append((corpus.spec.name, label, command, corpus.folder, corpus.spec.count))
        sleep = corpora[0]
        peer = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"]
        arms.append((sleep.spec.name, "xdist -n 2 (peer)", peer, sleep.peer_folder, SLEEP.count))
        walls: dict[tuple[str, str], list[float]] = {(c, label): [] for c, label, *_ in arms}
        for round_ in range(args.runs + 1):  # the first round warms the caches, untimed
            for corpus_name, label, command, folder, count in arms:
                sample = run_once(command, cwd=folder, env=env, expect_passed=count)
                if not sample.ok:
                    print(f"{corpus_name} / {label} failed: {sample.problem}", file=sys.stderr)
                    return 1
                if round_:
                    walls[corpus_name, label].append(sample.wall)
    medians = {key: statistics.median(values) for key, values in walls.items()}
    print(f"{n} cores; medians of {args.runs} runs (wall seconds)\n")
    print("| corpus | arm | median s | / best fixed |")
    print("|---|---|--:|--:|")
    for corpus in (SLEEP.name, CPU.name):
        fixed = [medians[corpus, label] for label in counts if label != "auto"]
        for (name, label), wall in medians.items():
            if name == corpus:
                print(f"| {name} | {label} | {wall:.2f} | {wall / min(fixed):.2f}x |")
    auto_sleep = medians[SLEEP.name, "auto"]
    print(f"\nsleep: auto / xdist -n 2 = {auto_sleep / medians[SLEEP.name, arms[-1][1]]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
