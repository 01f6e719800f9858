"""The guardian's cost: the plugin on N tiny scripts with and without it, in one run.

    python bench/run.py --guardian                 # 50 tiny scripts, 7 interleaved runs
    python bench/run.py --guardian --guardian-scripts 200 --runs 9

For each backend two arms run round-robin: the default (a guardian process is started when
the first script is about to run) and ``-o exec_guardian=false``. The table gives each arm's
median wall time and CPU (the whole process tree, guardian included) and, per backend, the
ratio of the medians: with / without. Where the guardian costs nothing that ratio is 1.00
within the spread of the runs (the min..max column).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from corpora import SPECS, CorpusSpec
from report import CorpusSummary

OFF = ("-o", "exec_guardian=false")
"""The plugin's ini override that turns the guardian off."""


def corpus_spec(scripts: int) -> CorpusSpec:
    """The tiny corpus at ``scripts`` scripts."""
    return dataclasses.replace(
        SPECS["tiny"],
        name=f"guardian-{scripts}",
        count=scripts,
        description=f"{scripts} scripts that print a line",
    )


def arm_keys(backend: str) -> tuple[str, str]:
    """``(with, without)`` arm keys for one backend."""
    return f"{backend}-on", f"{backend}-off"


# Timed in a process of its own with the benchmark's interpreter: what starting and releasing
# a guardian costs pytest's main thread, and the guardian's own CPU (a bare interpreter).
_DIRECT = """
import json, resource, statistics, sys, time
from pytest_codomyrmex_exec.engine.guardian import start_guardian
rounds = int(sys.argv[1])
starts, releases = [], []
for _ in range(rounds):
    began = time.perf_counter()
    guardian = start_guardian("CODOMYRMEX_EXEC_BENCH", "unused")
    started = time.perf_counter()
    time.sleep(0.1)  # a session runs its scripts meanwhile
    released = time.perf_counter()
    guardian.release()
    starts.append(started - began)
    releases.append(time.perf_counter() - released)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({
    "start_ms": statistics.median(starts) * 1000,
    "release_ms": statistics.median(releases) * 1000,
    "cpu_ms": (usage.ru_utime + usage.ru_stime) / rounds * 1000,
}))
"""


def direct_costs(python: str, env: Mapping[str, str], rounds: int = 20) -> dict[str, float]:
    """Median ms to start and to release a guardian, and its CPU ms, over ``rounds``."""
    done = subprocess.run(
        [python, "-c", _DIRECT, str(rounds)],
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    costs: dict[str, float] = json.loads(done.stdout)
    return costs


def report(
    summary: CorpusSummary,
    backends: Sequence[str],
    results: Path,
    *,
    runs: int,
    workers: int,
    direct: Mapping[str, float],
) -> str:
    """Print the table and write ``results/guardian.json`` and ``guardian.md``."""
    lines = [
        f"## The guardian's cost: {summary.description}, {workers} workers, {runs} runs (medians)",
        "",
        "| arm | median s | min..max s | CPU s | with / without |",
        "|---|--:|--:|--:|--:|",
    ]
    ratios: dict[str, float | None] = {}
    for backend in backends:
        on, off = arm_keys(backend)
        ratios[backend] = summary.ratio(on, off)
        for key in (on, off):
            arm = summary.arms[key]
            cells = [
                arm.label,
                _num(arm.median_wall),
                f"{_num(arm.min_wall)}..{_num(arm.max_wall)}",
                _num(arm.median_cpu),
                _num(ratios[backend], 3) if key == on else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The guardian alone (median of 20): starting it costs pytest {direct['start_ms']:.1f} ms,"
        f" releasing it {direct['release_ms']:.1f} ms; its own CPU is {direct['cpu_ms']:.1f} ms"
        " (a bare interpreter start-up, in the background).",
    ]
    text = "\n".join(lines)
    print(text)
    document = {
        "schema": 1,
        "corpus": summary.to_dict(),
        "ratios": ratios,
        "direct": dict(direct),
        "table": text,
    }
    (results / "guardian.json").write_text(json.dumps(document, indent=2) + "\n")
    (results / "guardian.md").write_text(text + "\n")
    print(f"\nwrote {results / 'guardian.json'} and {results / 'guardian.md'}", file=sys.stderr)
    return text


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
