"""What ``--exec-changed`` costs when everything changed: recording and hashing every script.

```
python bench/changed_cost.py [--corpus tiny] [--runs 7] [--workers 2] [--warm]
```

Three arms on the same corpus (the ``tiny`` one of ``bench/run.py``: 200 scripts that print a
line), as whole pytest sessions with ``--exec-parallel --exec-workers 2``: **plain**, with
``exec_dirty = ignore`` so that nothing is recorded; **default**, the plugin's defaults, under
which ``exec_dirty = warn`` records what every script writes; and **changed** with
``--exec-changed`` and a deps file deleted before each of its runs (a first
run: every script runs, records what it reads and imports, and is hashed; the file is
written at the end). Both arms run with ``-p no:cacheprovider``, so no durations or stat
hints carry over from one run to the next. The arms are interleaved run by run after an
untimed round; the line to read is the ratio of medians of wall time (issue 16: at most
1.05). The CPU time of the pytest process and its children is printed too: it moves less
than wall time when other work shares the machine. ``--warm`` adds ``--exec-warm`` to both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from corpora import SPECS, generate
from measure import Sample, child_environment, real_interpreter, run_once


def _arm(
    python: str, folder: Path, env: dict[str, str], extra: list[str], name: str, deps: Path
) -> Sample:
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    argv += ["--exec-parallel", *extra]
    if name == "plain":  # no recorder at all: what recording is measured against
        argv += ["-o", "exec_dirty=ignore"]
    if name == "--exec-changed":
        deps.unlink(missing_ok=True)  # everything changed: nothing is remembered
        argv += ["--exec-changed", f"--exec-deps-file={deps}"]
    return run_once(argv, cwd=folder, env=env, expect_passed=len(list(folder.glob("*.py"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", default="tiny", choices=sorted(SPECS))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm", action="store_true", help="both arms with --exec-warm")
    options = parser.parse_args()
    python = real_interpreter(sys.executable)

    with tempfile.TemporaryDirectory(prefix="changed-cost-") as work:
        workdir = Path(work)
        corpus = generate(SPECS[options.corpus], workdir)
        env = child_environment(workdir / "pycache")
        deps = workdir / "deps.json"
        extra = ["--exec-workers", str(options.workers)]
        if options.warm:
            extra.append("--exec-warm")
        arms: dict[str, list[Sample]] = {"plain": [], "default": [], "--exec-changed": []}
        for round_ in range(options.runs + 1):  # round 0: untimed (bytecode, disk caches)
            for name, samples in arms.items():
                sample = _arm(python, corpus.folder, env, extra, name, deps)
                if not sample.ok:
                    raise SystemExit(f"{name} failed: {sample.problem}")
                if round_:
                    samples.append(sample)
        if not deps.is_file() or corpus.scripts[0].split(".")[0] not in deps.read_text():
            raise SystemExit("the --exec-changed arm wrote no deps file: it measured nothing")

    print(f"{options.corpus} corpus ({corpus.spec.description}), {options.runs} runs per arm,")
    print(" ".join(["--exec-parallel", *extra]))
    print()
    print("| arm | median wall (s) | min-max wall (s) | median CPU (s) |")
    print("|---|--:|--:|--:|")
    for name, samples in arms.items():
        walls = [s.wall for s in samples]
        print(
            f"| {name} | {statistics.median(walls):.3f} | {min(walls):.3f}-{max(walls):.3f} "
            f"| {statistics.median(s.cpu for s in samples):.3f} |"
        )
    print()
    # The ratio is with and without --exec-changed: against the defaults; against
    # plain it also counts what the default recording of writes costs.
    for name, base in (
        ("--exec-changed", "default"),
        ("--exec-changed", "plain"),
        ("default", "plain"),
    ):
        wall = _median_wall(arms[name]) / _median_wall(arms[base])
        cpu = statistics.median(s.cpu for s in arms[name]) / statistics.median(
            s.cpu for s in arms[base]
        )
        print(f"ratio of medians, {name} / {base}: wall {wall:.3f}, CPU {cpu:.3f}")


def _median_wall(samples: list[Sample]) -> float:
    return statistics.median(s.wall for s in samples)


if __name__ == "__main__":
    main()
