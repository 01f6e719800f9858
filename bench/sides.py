"""``bench/run.py --sides``: where a script's CPU goes, side by side, warm and cold.

Three processes share the cost of every script: the child (from fork to ``_exit``: for a cold
start the whole interpreter, for a warm one the fork server's copy becoming the script), the
warm-start server (receiving the request, forking, reaping, reporting the exit) and the
pytest process (collecting the file, launching and supervising, reporting). Wall time on a
shared machine says little about each; CPU time, per process, does.

Every arm runs through ``bench/probe.py --sides``, interleaved round by round, on the tiny
corpus (200 scripts that print a line, 2 workers). The probe snapshots each side's CPU and
minor page faults after the first items and as the session finishes; the difference over the
items in between is the steady state, without the server's or pytest's start-up:

- **child**: the scripts' CPU (the pytest process's reaped children when cold; the warm
  server's reaped children when warm), per script;
- **server**: the warm server's own CPU, per script;
- **pytest**: the pytest process's own CPU (all its threads), per item;
- **all**: the three together.

The last columns are the whole run as ``bench/run.py --overhead`` counts it: the pytest
process's CPU less an empty folder's, per item, and its ratio to a trivial parametrized test.
CPU from ``/proc`` (the server's side) is counted in clock ticks (10 ms), summed over 180
scripts: about ±0.06 ms per script.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from corpora import Corpus
from overhead import write_baselines
from profiling import probe

Record = dict[str, Any]


def _steady(record: Record) -> dict[str, float]:
    """Per-script CPU (ms) and minor faults of each side between the two snapshots."""
    start, end = record["sides"]["start"], record["sides"]["end"]
    items = end["items"] - start["items"]
    if items <= 0:
        raise SystemExit("--sides: no items ran between the snapshots")
    pytest_cpu = end["self_cpu"] - start["self_cpu"]
    if end["servers"] and start["servers"]:
        server_start, server_end = start["servers"][0], end["servers"][0]
        child_cpu = server_end["children_cpu"] - server_start["children_cpu"]
        child_faults = server_end["children_minflt"] - server_start["children_minflt"]
        server_cpu = server_end["cpu"] - server_start["cpu"]
        server_faults = server_end["minflt"] - server_start["minflt"]
    else:
        child_cpu = end["children_cpu"] - start["children_cpu"]
        child_faults = end["children_minflt"] - start["children_minflt"]
        server_cpu = server_faults = 0.0
    return {
        "child ms": 1000 * child_cpu / items,
        "server ms": 1000 * server_cpu / items,
        "pytest ms": 1000 * pytest_cpu / items,
        "all ms": 1000 * (child_cpu + server_cpu + pytest_cpu) / items,
        "child faults": child_faults / items,
        "server faults": server_faults / items,
        "pytest faults": (end["self_minflt"] - start["self_minflt"]) / items,
    }


def run(
    corpus: Corpus,
    *,
    python: str,
    env: Mapping[str, str],
    results: Path,
    backends: tuple[str, str],
    runs: int,
) -> str:
    """Measure, print and keep the table; return it."""
    count = corpus.spec.count
    noop, empty = write_baselines(corpus)
    default = backends[0]
    plugin = ["-q", "-p", "no:randomly", "--exec-parallel"]
    plugin += ["--exec-workers", str(corpus.spec.workers)]
    arms: dict[str, tuple[Path, list[str]]] = {
        "empty folder": (empty, ["-q", "-p", "no:randomly"]),
        f"{count} trivial tests": (noop, ["-q", "-p", "no:randomly"]),
        f"warm ({default})": (corpus.folder, [*plugin, "--exec-warm"]),
        f"cold ({default})": (corpus.folder, plugin),
    }
    scratch = results / "sides"
    scratch.mkdir(parents=True, exist_ok=True)
    for folder, args in arms.values():  # a warm-up: bytecode and pytest caches
        probe(python, folder, scratch / "warmup", env, args, sides=True)
    records: dict[str, list[Record]] = {label: [] for label in arms}
    for _ in range(runs):
        for label, (folder, args) in arms.items():
            records[label].append(probe(python, folder, scratch / "run", env, args, sides=True))

    def median(label: str, measure: Callable[[Record], float]) -> float:
        return statistics.median(measure(record) for record in records[label])

    bare = median("empty folder", lambda r: float(r["self_cpu"]))
    per_trivial = (median(f"{count} trivial tests", lambda r: r["self_cpu"]) - bare) / count
    columns = ("child ms", "server ms", "pytest ms", "all ms")
    faults = ("child faults", "server faults")
    lines = [
        f"{corpus.spec.description}, {corpus.spec.workers} workers; CPU per script in the "
        f"steady state (medians of {runs} runs)",
        "",
        "| arm | " + " | ".join(columns + faults) + " | pytest ms/item, whole run | / trivial |",
        "|---|" + "--:|" * (len(columns) + len(faults) + 2),
    ]
    for label in (f"warm ({default})", f"cold ({default})"):
        steady = [_steady(record) for record in records[label]]
        cells = [statistics.median(row[key] for row in steady) for key in columns + faults]
        whole = (median(label, lambda r: r["self_cpu"]) - bare) / count
        lines.append(
            f"| {label} | "
            + " | ".join(f"{cell:.2f}" for cell in cells[: len(columns)])
            + " | "
            + " | ".join(f"{cell:.0f}" for cell in cells[len(columns) :])
            + f" | {whole * 1000:.2f} | {whole / per_trivial:.2f}x |"
        )
    lines.append(f"| {count} trivial tests | | | | | | | {per_trivial * 1000:.2f} | 1.00x |")
    text = "\n".join(lines)
    (results / "sides.md").write_text(text + "\n")
    return text
