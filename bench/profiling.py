"""``bench/run.py --profile``: where the pytest process spends its time, per script.

For each corpus (tiny and scale-500), through ``bench/probe.py`` (``pytest.main`` in one
process, timed on pytest's public session hooks):

1. the pytest process's own CPU, without a profiler: a full run with each local backend,
   ``--collect-only`` of the corpus and of an empty folder, so start-up, collection and
   running + reporting per script can be told apart;
2. the session's phases (collection, run loop, session finish, terminal summary), wall and
   main-thread CPU, in ms and ms per script;
3. ``cProfile`` of every thread on its own CPU clock: CPU per group of threads and the top
   functions, main thread and background threads apart. Profiling inflates these; take
   absolute costs from (1).

Everything printed is also written to ``bench/results/profile-<corpus>.txt``.
"""

from __future__ import annotations

import io
import json
import pstats
import re
import shutil
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corpora import Corpus
from measure import run_once

BENCH = Path(__file__).resolve().parent
TOP = 25
_NO_TESTS = 5
"""pytest's exit code when it collected nothing: expected for the empty folder."""


def probe(
    python: str,
    cwd: Path,
    out: Path,
    env: Mapping[str, str],
    args: Sequence[str],
    profile: bool = False,
    sides: bool = False,
) -> dict[str, Any]:
    """One ``bench/probe.py`` run of ``pytest args`` in ``cwd``: its record, with the wall."""
    if out.exists():
        shutil.rmtree(out)
    argv = [
        python,
        str(BENCH / "probe.py"),
        str(out),
        *(["--profile"] if profile else []),
        *(["--sides"] if sides else []),
    ]
    sample = run_once([*argv, "--", *args], cwd=cwd, env=env)
    if sample.returncode not in (0, _NO_TESTS):
        raise SystemExit(f"probe run failed in {cwd}: {sample.problem}")
    record: dict[str, Any] = json.loads((out / "probe.json").read_text())
    record["wall"] = sample.wall
    return record


def _top(paths: Sequence[Path], order: str) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(str(paths[0]), stream=buffer)
    for extra in paths[1:]:
        stats.add(str(extra))
    stats.strip_dirs().sort_stats(order).print_stats(TOP)
    text = buffer.getvalue()
    start = text.find("function calls")  # drop the file names pstats opens with
    return text[text.rfind("\n", 0, start) + 1 :] if start >= 0 else text


def _phases(record: Mapping[str, Any], count: int) -> list[str]:
    lines = [f"{'phase (main thread)':<24} {'wall ms':>9} {'CPU ms':>9} {'CPU ms/script':>14}"]
    for name, phase in record["phases"].items():
        wall, cpu = phase["wall"] * 1000, phase["cpu"] * 1000
        lines.append(f"{name:<24} {wall:9.1f} {cpu:9.1f} {cpu / count:14.3f}")
    return lines


def _threads(out: Path, record: Mapping[str, Any], count: int) -> list[str]:
    groups: dict[str, list[float]] = defaultdict(list)
    for entry in record["threads"]:
        groups[re.sub(r"[-_ ]?\(?\d+.*$", "", entry["name"])].append(entry["cpu"])
    lines = [f"{'threads (CPU clock, profiled)':<36} {'count':>5} {'CPU ms':>9} {'ms/script':>10}"]
    for group, cpus in sorted(groups.items(), key=lambda item: -sum(item[1])):
        total = sum(cpus) * 1000
        lines.append(f"{group:<36} {len(cpus):5d} {total:9.1f} {total / count:10.3f}")
    main = [out / e["file"] for e in record["threads"] if e["name"] == "MainThread"]
    background = [out / e["file"] for e in record["threads"] if e["name"] != "MainThread"]
    for title, files in (("main thread", main), ("background threads together", background)):
        if files:
            lines += [
                "",
                f"top {TOP} by own CPU time, {title}:",
                _top(files, "tottime"),
                f"top {TOP} by cumulative CPU time, {title}:",
                _top(files, "cumulative"),
            ]
    return lines


def profile_corpus(
    corpus: Corpus,
    *,
    python: str,
    env: Mapping[str, str],
    scratch: Path,
    backends: tuple[str, str],
    empty: Path,
) -> str:
    """The three views of one corpus, as text."""
    count, folder = corpus.spec.count, corpus.folder
    plugin = ["-q", "-p", "no:randomly", "--exec-parallel", "--exec-workers"]
    plugin.append(str(corpus.spec.workers))
    default, other = backends
    # A warm-up, so the bytecode cache is full and the duration cache in its steady state.
    probe(python, folder, scratch / "warm-up", env, plugin)
    runs = {
        f"full run ({default})": probe(python, folder, scratch / "a", env, plugin),
        f"full run ({other})": probe(
            python, folder, scratch / "b", env, [*plugin, "--exec-backend", other]
        ),
        "--collect-only of the corpus": probe(
            python, folder, scratch / "c", env, ["-q", "--collect-only"]
        ),
        "--collect-only of an empty folder": probe(
            python, empty, scratch / "d", env, ["-q", "--collect-only"]
        ),
    }
    out = [
        f"=== {corpus.spec.name}: {corpus.spec.description}, {corpus.spec.workers} workers ===",
        "",
        "pytest process alone (RUSAGE_SELF; the scripts are RUSAGE_CHILDREN), no profiler:",
        f"{'run':<36} {'wall s':>7} {'own CPU ms':>11} {'ms/script':>10} {'own RSS MB':>11}",
    ]
    for label, record in runs.items():
        own = record["self_cpu"] * 1000
        out.append(
            f"{label:<36} {record['wall']:7.2f} {own:11.1f} {own / count:10.3f} "
            f"{record['self_maxrss_mb']:11.1f}"
        )
    full = runs[f"full run ({default})"]["self_cpu"]
    collect = runs["--collect-only of the corpus"]["self_cpu"]
    bare = runs["--collect-only of an empty folder"]["self_cpu"]
    out += [
        f"=> start-up {bare * 1000:.0f} ms; collection {(collect - bare) * 1000 / count:.3f} "
        f"ms/script; running + reporting {(full - collect) * 1000 / count:.3f} ms/script",
        "",
        f"full run ({default}), by phase:",
        *_phases(runs[f"full run ({default})"], count),
    ]
    profiled = scratch / "profiled"
    record = probe(python, folder, profiled, env, plugin, profile=True)
    out += ["", f"cProfile, every thread ({default} backend):", *_threads(profiled, record, count)]
    return "\n".join(out)


def run(
    corpora: Sequence[Corpus],
    *,
    python: str,
    env: Mapping[str, str],
    results: Path,
    backends: tuple[str, str],
    empty: Path,
) -> None:
    """Profile each corpus; print the findings and keep them in ``results``."""
    for corpus in corpora:
        scratch = results / f"profile-{corpus.spec.name}"
        scratch.mkdir(parents=True, exist_ok=True)
        text = profile_corpus(
            corpus, python=python, env=env, scratch=scratch, backends=backends, empty=empty
        )
        print(text, flush=True)
        path = results / f"profile-{corpus.spec.name}.txt"
        path.write_text(text + "\n")
        print(f"(written to {path})\n", file=sys.stderr)
