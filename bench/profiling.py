"""``bench/run.py --profile``: where the pytest process spends its time, per script.

For each corpus (tiny and scale-500) and the default backend:

1. the pytest process's own CPU (``bench/probe.py``, no profiler): for a full run, for
   ``--collect-only`` of the same corpus and for ``--collect-only`` of an empty folder, so
   start-up, collection and running+reporting can be told apart; and the other backend's;
2. ``python -m cProfile -o ... -m pytest ...``: the main thread on the wall clock, top
   functions by cumulative and own time, and the phases of a session in ms per script;
3. every thread on its own CPU clock (``probe.py --threads``), grouped by thread name, for
   both backends, and the main thread's phases on that clock: the background threads that
   start and supervise the scripts are invisible to (2).

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

# (label, file-name fragment, function name, "cum" or "own"): session phases read off the
# main-thread profile. The fragments are matched with "/" separators so a renamed module
# shows as "—" rather than as a wrong number.
_PHASES: tuple[tuple[str, str, str, str], ...] = (
    ("pytest main() in all", "_pytest/config/__init__.py", "main", "cum"),
    ("  config: plugins, options, conftest", "_pytest/config/__init__.py", "_prepareconfig", "cum"),
    ("  pytest_configure hooks", "_pytest/config/__init__.py", "_do_configure", "cum"),
    ("  collection", "_pytest/main.py", "pytest_collection", "cum"),
    ("    our ScriptFile.collect", "pytest_codomyrmex_exec/plugin/items.py", "collect", "cum"),
    (
        "    our pytest_collect_file",
        "pytest_codomyrmex_exec/plugin/__init__.py",
        "pytest_collect_file",
        "cum",
    ),
    (
        "  run loop (ExecSession)",
        "pytest_codomyrmex_exec/plugin/session.py",
        "pytest_runtestloop",
        "cum",
    ),
    ("    waiting for scripts", "~", "<method 'get' of '_queue.SimpleQueue' objects>", "own"),
    ("    ordering jobs (_jobs)", "pytest_codomyrmex_exec/plugin/session.py", "_jobs", "cum"),
    ("    backend start", "pytest_codomyrmex_exec/plugin/backends.py", "start", "cum"),
    (
        "    events (_absorb_events)",
        "pytest_codomyrmex_exec/plugin/session.py",
        "_absorb_events",
        "cum",
    ),
    (
        "    item protocol (setup/call/teardown)",
        "_pytest/runner.py",
        "pytest_runtest_protocol",
        "cum",
    ),
    ("      terminal progress", "_pytest/terminal.py", "pytest_runtest_logreport", "cum"),
    (
        "      our makereport wrapper",
        "pytest_codomyrmex_exec/plugin/__init__.py",
        "pytest_runtest_makereport",
        "cum",
    ),
    ("    backend stop", "pytest_codomyrmex_exec/plugin/session.py", "_stop", "cum"),
    (
        "  session finish: our durations",
        "pytest_codomyrmex_exec/plugin/__init__.py",
        "pytest_sessionfinish",
        "cum",
    ),
    (
        "  session finish: cache (lastfailed)",
        "_pytest/cacheprovider.py",
        "pytest_sessionfinish",
        "cum",
    ),
    ("  terminal summary", "_pytest/terminal.py", "pytest_terminal_summary", "cum"),
    ("  unconfigure", "_pytest/config/__init__.py", "_ensure_unconfigure", "cum"),
)

_StatKey = tuple[str, int, str]


def _lookup(stats: Mapping[_StatKey, Any], fragment: str, function: str, kind: str) -> float | None:
    """The largest matching entry (a recursive or re-entered function counts once)."""
    found = [
        value[3] if kind == "cum" else value[2]
        for (filename, _, name), value in stats.items()
        if name == function and (fragment == "~" or fragment in filename.replace("\\", "/"))
    ]
    return max(found) if found else None


def _phases(path: Path, count: int, clock: str) -> list[str]:
    stats = pstats.Stats(str(path))
    table: Mapping[_StatKey, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    lines = [
        f"{f'phase (main thread, {clock})':<46} {'ms':>9} {'ms/script':>10}",
        f"{'profiled in all':<46} {total * 1000:9.1f} {total * 1000 / count:10.3f}",
    ]
    inside = _lookup(table, *_PHASES[0][1:])
    if inside is not None:
        before = total - inside
        lines.append(f"{'  before main(): importing pytest':<46} {before * 1000:9.1f} {'':>10}")
    for label, fragment, function, kind in _PHASES:
        value = _lookup(table, fragment, function, kind)
        if value is None:
            lines.append(f"{label:<46} {'—':>9}")
        else:
            lines.append(f"{label:<46} {value * 1000:9.1f} {value * 1000 / count:10.3f}")
    return lines


def _top(path: Path | Sequence[Path], order: str, limit: int = TOP) -> str:
    paths = [path] if isinstance(path, Path) else list(path)
    buffer = io.StringIO()
    stats = pstats.Stats(str(paths[0]), stream=buffer)
    for extra in paths[1:]:
        stats.add(str(extra))
    stats.strip_dirs().sort_stats(order).print_stats(limit)
    # pstats opens with the file names and a blank line; keep from the summary line on.
    text = buffer.getvalue()
    start = text.find("function calls")
    return text[text.rfind("\n", 0, start) + 1 :] if start >= 0 else text


# pytest's exit code when nothing was collected: expected for the empty folder.
_NO_TESTS = 5


def probe(
    python: str,
    cwd: Path,
    out: Path,
    env: Mapping[str, str],
    args: Sequence[str],
    threads: bool = False,
) -> dict[str, Any]:
    """One ``bench/probe.py`` run of ``pytest args`` in ``cwd``: its record, with the wall."""
    if out.exists():
        shutil.rmtree(out)
    argv = [python, str(BENCH / "probe.py"), str(out), *(["--threads"] if threads else [])]
    sample = run_once([*argv, "--", *args], cwd=cwd, env=env)
    if sample.returncode not in (0, _NO_TESTS):
        raise SystemExit(f"probe run failed in {cwd}: {sample.problem}")
    record: dict[str, Any] = json.loads((out / "probe.json").read_text())
    record["wall"] = sample.wall
    return record


def _thread_groups(
    out: Path, record: Mapping[str, Any], count: int
) -> tuple[list[str], list[Path]]:
    """CPU per group of threads (pool workers, waitpid helpers...) and their profile files."""
    groups: dict[str, list[float]] = defaultdict(list)
    background: list[Path] = []
    for entry in record["threads"]:
        group = re.sub(r"[-_]\d+(\s.*)?$", "", entry["name"])
        groups[group].append(entry["cpu"])
        if entry["name"] != "MainThread":
            background.append(out / entry["file"])
    lines = [
        f"{'thread group (CPU clock, profiled)':<40} {'threads':>7} {'CPU ms':>9} {'ms/script':>10}"
    ]
    for group, cpus in sorted(groups.items(), key=lambda item: -sum(item[1])):
        total = sum(cpus) * 1000
        lines.append(f"{group:<40} {len(cpus):7d} {total:9.1f} {total / count:10.3f}")
    return lines, background


def _profile_corpus(
    corpus: Corpus,
    *,
    python: str,
    env: Mapping[str, str],
    results: Path,
    backends: tuple[str, str],
    empty: Path,
) -> str:
    count = corpus.spec.count
    name = corpus.spec.name
    scratch = results / f"profile-{name}"
    scratch.mkdir(parents=True, exist_ok=True)
    plugin = [
        "-q",
        "-p",
        "no:randomly",
        "--exec-parallel",
        "--exec-workers",
        str(corpus.spec.workers),
    ]
    default, other = backends
    out: list[str] = [f"=== {name}: {corpus.spec.description}, {corpus.spec.workers} workers ==="]

    # A warm-up, so the bytecode cache is full and the duration cache is in its steady state.
    probe(python, corpus.folder, scratch / "warm", env, plugin, threads=False)

    # 1. The pytest process's own CPU, without any profiler.
    runs = {
        f"full run ({default})": probe(python, corpus.folder, scratch / "a", env, plugin, False),
        f"full run ({other})": probe(
            python, corpus.folder, scratch / "b", env, [*plugin, "--exec-backend", other], False
        ),
        "--collect-only of the corpus": probe(
            python, corpus.folder, scratch / "c", env, ["-q", "--collect-only"], False
        ),
        "--collect-only of an empty folder": probe(
            python, empty, scratch / "d", env, ["-q", "--collect-only"], False
        ),
    }
    out += [
        "",
        "pytest process alone (RUSAGE_SELF; scripts are RUSAGE_CHILDREN), no profiler:",
        f"{'run':<36} {'wall s':>7} {'own CPU ms':>11} {'ms/script':>10} "
        f"{'scripts CPU ms':>15} {'own RSS MB':>11}",
    ]
    for label, record in runs.items():
        own = record["self_cpu"] * 1000
        out.append(
            f"{label:<36} {record['wall']:7.2f} {own:11.1f} {own / count:10.3f} "
            f"{record['children_cpu'] * 1000:15.1f} {record['self_maxrss_mb']:11.1f}"
        )
    full = runs[f"full run ({default})"]["self_cpu"]
    collect = runs["--collect-only of the corpus"]["self_cpu"]
    bare = runs["--collect-only of an empty folder"]["self_cpu"]
    out += [
        f"=> fixed start-up (empty folder): {bare * 1000:.1f} ms; collection: "
        f"{(collect - bare) * 1000 / count:.3f} ms/script; running + reporting: "
        f"{(full - collect) * 1000 / count:.3f} ms/script (CPU of the pytest process)",
    ]

    # 2. The brief's command: cProfile of the main thread, wall clock.
    main_prof = scratch / "main.prof"
    sample = run_once(
        [python, "-m", "cProfile", "-o", str(main_prof), "-m", "pytest", *plugin],
        cwd=corpus.folder,
        env=env,
        expect_passed=count,
    )
    if not sample.ok:
        raise SystemExit(f"cProfile run failed: {sample.problem}")
    out += ["", f"python -m cProfile -m pytest (main thread, wall {sample.wall:.2f} s):"]
    out += _phases(main_prof, count, "wall clock")
    out += ["", f"top {TOP} by cumulative time (main thread):", _top(main_prof, "cumulative")]
    out += [f"top {TOP} by own time (main thread):", _top(main_prof, "tottime")]

    # 3. All threads, CPU clock.
    threaded = scratch / "threads"
    record = probe(python, corpus.folder, threaded, env, plugin, threads=True)
    groups, background = _thread_groups(threaded, record, count)
    out += ["", f"every thread on its CPU clock ({default} backend; the profiler inflates it):"]
    out += groups
    main_thread = threaded / "thread-0000-MainThread.prof"
    if main_thread.exists():
        out += ["", *_phases(main_thread, count, "CPU clock, profiled")]
    if background:
        out += [
            "",
            f"top {TOP} by own CPU time, background threads together:",
            _top(background, "tottime"),
            f"top {TOP} by cumulative CPU time, background threads together:",
            _top(background, "cumulative"),
        ]
    if main_thread.exists():
        out += [f"top {TOP} by own CPU time, main thread:", _top(main_thread, "tottime")]

    # The other backend's threads: its engine runs on other threads (an event loop, and on
    # some Python versions a waitpid thread per child).
    other_dir = scratch / "threads-other"
    record = probe(
        python, corpus.folder, other_dir, env, [*plugin, "--exec-backend", other], threads=True
    )
    groups, _ = _thread_groups(other_dir, record, count)
    out += ["", f"every thread on its CPU clock ({other} backend):", *groups]
    return "\n".join(out)


def run(
    corpora: Sequence[Corpus],
    *,
    python: str,
    env: Mapping[str, str],
    results: Path,
    backends: tuple[str, str],
) -> None:
    """Profile each corpus; print the findings and keep them in ``results``."""
    empty = corpora[0].folder.parent / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "pytest.ini").write_text("[pytest]\n")
    for corpus in corpora:
        text = _profile_corpus(
            corpus, python=python, env=env, results=results, backends=backends, empty=empty
        )
        print(text, flush=True)
        path = results / f"profile-{corpus.spec.name}.txt"
        path.write_text(text + "\n")
        print(f"(written to {path})\n", file=sys.stderr)
