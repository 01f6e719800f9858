"""``--exec-workers auto`` against fixed worker counts (1x, 2x, 4x the cores) and xdist.

```
python bench/workers_auto.py [--runs 3] [--corpora anim,sleep,cpu,tiny] [--compare PYTHON]
```

Corpora, generated into a temporary folder: ``anim``, rich-like scripts that mostly wait
(each a short animation: 20 frames of a little work and a 50 ms sleep); ``sleep``, 60 scripts
that sleep 0.2 s; ``cpu``, scripts that each burn 0.25 s of CPU; ``tiny``, 200 scripts that
print a line (start-up only). Every arm runs the same files with the async backend (the
default); the anim corpus also runs under the hand-written ``subprocess.run`` peer with
``xdist -n 2``. ``--compare`` adds an auto arm run by another interpreter (the venv of
another checkout), so two versions of auto are measured in the same run. Arms are
interleaved, a run per arm per round; the table shows medians of wall and CPU time (the
whole process tree) and the ratios the issue sets targets for: auto against the best fixed
count on each corpus (target <= 1.1x) and auto against ``xdist -n 2`` on the anim corpus
(target <= 0.55x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from corpora import SPECS, CorpusSpec, generate
from measure import child_environment, load_average, run_once

from pytest_codomyrmex_exec.engine.cpu_meter import cores

_ANIMATION = "import time\nfor frame in range(20):\n    sum(range(20000))\n    time.sleep(0.05)\n"

ANIM = CorpusSpec(
    "auto-anim",
    24,
    0,
    2,
    lambda index, count: (f"anim_{index:02d}_script.py", _ANIMATION),
    "24 animations: 20 frames of a little work and a 50 ms sleep",
)
CORPORA = {"anim": ANIM, "sleep": SPECS["sleep"], "cpu": SPECS["cpu"], "tiny": SPECS["tiny"]}
PEER = "xdist -n 2 (peer)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated")
    parser.add_argument("--compare", metavar="PYTHON", help="another checkout's interpreter")
    args = parser.parse_args(argv)
    chosen = [CORPORA[name] for name in args.corpora.split(",")]
    n = cores()
    python = sys.executable
    counts = {"auto": "auto", **{f"{k}x cores ({k * n})": str(k * n) for k in (1, 2, 4)}}
    fixed_labels = [label for label in counts if label != "auto"]
    pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-workers-auto-") as work:
        workdir = Path(work)
        env = child_environment(workdir / "pycache")
        arms: list[tuple[str, str, list[str], Path, int]] = []
        for spec in chosen:
            corpus = generate(spec, workdir)
            for label, workers in counts.items():
                command = [python, *pytest, "--exec-parallel", "--exec-workers", workers]
                arms.append((spec.name, label, command, corpus.folder, spec.count))
            if args.compare:
                command = [args.compare, *pytest, "--exec-parallel", "--exec-workers", "auto"]
                arms.append((spec.name, "auto (--compare)", command, corpus.folder, spec.count))
            if spec is ANIM:
                command = [python, *pytest, "-n", "2"]
                arms.append((spec.name, PEER, command, corpus.peer_folder, spec.count))
        walls: dict[tuple[str, str], list[float]] = {(c, label): [] for c, label, *_ in arms}
        cpus: dict[tuple[str, str], list[float]] = {key: [] for key in walls}
        for round_ in range(args.runs + 1):  # the first round warms the caches, untimed
            for corpus_name, label, command, folder, count in arms:
                sample = run_once(command, cwd=folder, env=env, expect_passed=count)
                if not sample.ok:
                    print(f"{corpus_name} / {label} failed: {sample.problem}", file=sys.stderr)
                    return 1
                if round_:
                    walls[corpus_name, label].append(sample.wall)
                    cpus[corpus_name, label].append(sample.cpu)
    medians = {key: statistics.median(values) for key, values in walls.items()}
    print(f"load average after: {load_average()}")
    print(f"{n} cores; medians of {args.runs} interleaved runs\n")
    print("| corpus | arm | wall s | CPU s | wall / best fixed |")
    print("|---|---|--:|--:|--:|")
    for spec in chosen:
        best = min(medians[spec.name, label] for label in fixed_labels)
        for (name, label), wall in medians.items():
            if name == spec.name:
                cpu = statistics.median(cpus[name, label])
                print(f"| {name} | {label} | {wall:.2f} | {cpu:.2f} | {wall / best:.2f}x |")
    if ANIM in chosen:
        ratio = medians[ANIM.name, "auto"] / medians[ANIM.name, PEER]
        print(f"\nanim: auto / xdist -n 2 = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
