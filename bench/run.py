"""The benchmark's one command: the plugin against its peers and the floor, side by side.

    python bench/run.py                      # every corpus, 5 interleaved runs each
    python bench/run.py --quick              # 3 runs, no serial peer, scale only at 500
    python bench/run.py --corpora tiny,cpu --runs 7
    python bench/run.py --profile            # where the pytest process spends its time
    python bench/run.py --overhead           # pytest's own CPU per script / per trivial test
    python bench/run.py --sides              # CPU per script: child, warm server, pytest

Prints the table (Markdown) and writes ``bench/results/latest.json``, ``latest.md`` and the
chart ``latest.svg``. See ``bench/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import final

import chart
import overhead
import profiling
import sides
from corpora import SPECS, Corpus, generate
from measure import (
    Sample,
    child_environment,
    load_average,
    machine,
    real_interpreter,
    run_once,
    wait_for_quiet,
)
from report import PLUGIN, WARM, ArmSummary, CorpusSummary, ratios, render

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
ALL_CORPORA = ("tiny", "cpu", "sleep", "skewed", "scale")
WARM_CORPORA = ("tiny", "numpy")
"""What ``--warm`` runs unless ``--corpora`` says otherwise."""
WARM_PRELOAD = {"numpy": "numpy"}
"""``--exec-preload`` of the warm arm, per corpus."""


@final
@dataclass(frozen=True, slots=True)
class Arm:
    """One way of running a corpus: a command, where it runs, and what success looks like."""

    key: str
    label: str
    workers: int
    argv: tuple[str, ...]
    cwd: Path
    stdin: Path | None = None
    expect_passed: int | None = None
    expect_collected: int | None = None
    before: Callable[[], None] | None = field(default=None, compare=False)


LOCAL_BACKENDS = ("async", "process")
"""The backends that run on this machine (``dask`` has ``bench/dask_row.py``)."""


def plugin_backends(python: str, env: Mapping[str, str], folder: Path) -> tuple[str, str]:
    """``(default, other)`` local backends; the default as ``pytest --help`` states it."""
    shown = subprocess.run(
        [python, "-m", "pytest", "--help"],
        cwd=folder,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r"--exec-backend\S*\s+.*?\(default\s+(\w+)", shown, re.S)
    if found is None or found.group(1) not in LOCAL_BACKENDS:
        raise SystemExit("pytest --help states no local default for --exec-backend")
    default = found.group(1)
    return default, next(name for name in LOCAL_BACKENDS if name != default)


def _pytest(python: str, *args: str) -> tuple[str, ...]:
    # -p no:randomly: a random order would make runs incomparable (it is not installed here,
    # and naming an absent plugin is harmless).
    return (python, "-m", "pytest", "-q", "-p", "no:randomly", *args)


def make_arms(
    corpus: Corpus,
    python: str,
    *,
    backends: tuple[str, str],
    serial: bool,
    cache: bool,
    empty: Path,
    warm: bool = False,
) -> list[Arm]:
    """The arms of one corpus, in the order each round runs them."""
    spec, count = corpus.spec, corpus.spec.count
    workers, xdist = str(spec.workers), str(spec.xdist_workers)
    no_cache = () if cache else ("-p", "no:cacheprovider")
    plugin = ("--exec-parallel", "--exec-workers", workers, *no_cache)
    # The peer is what a user writes without our plugin, so our plugin is not loaded for it.
    peer = ("-p", "no:codomyrmex_exec", *no_cache)
    default, other = backends

    if spec.name == "skewed":
        cache_dir = corpus.folder / ".pytest_cache"
        return [
            Arm(
                "first",
                f"1st run, no remembered durations ({default})",
                spec.workers,
                _pytest(python, *plugin),
                corpus.folder,
                expect_passed=count,
                before=lambda: shutil.rmtree(cache_dir, ignore_errors=True),
            ),
            Arm(
                "second",
                "2nd run, durations remembered",
                spec.workers,
                _pytest(python, *plugin),
                corpus.folder,
                expect_passed=count,
            ),
            Arm(
                "collection-order",
                "2nd run, --exec-order collection",
                spec.workers,
                _pytest(python, *plugin, "--exec-order", "collection"),
                corpus.folder,
                expect_passed=count,
            ),
        ]

    arms = [
        Arm(
            PLUGIN,
            f"plugin ({default})",
            spec.workers,
            _pytest(python, *plugin),
            corpus.folder,
            expect_passed=count,
        )
    ]
    large = spec.name == "scale-5000"
    if not large:
        arms.append(
            Arm(
                "xdist",
                f"peer under xdist -n {xdist}",
                spec.xdist_workers,
                _pytest(python, *peer, "-n", xdist),
                corpus.peer_folder,
                expect_passed=count,
            )
        )
    arms.append(
        Arm(
            "floor",
            f"floor: xargs -P {workers}",
            spec.workers,
            ("xargs", "-0", "-P", workers, "-n1", python),
            corpus.folder,
            stdin=corpus.file_list,
        )
    )
    if not large and other != default:
        arms.append(
            Arm(
                f"{PLUGIN}-{other}",
                f"plugin ({other})",
                spec.workers,
                _pytest(python, *plugin, "--exec-backend", other),
                corpus.folder,
                expect_passed=count,
            )
        )
    if warm:
        preload = WARM_PRELOAD.get(spec.name)
        arms.append(
            Arm(
                WARM,
                f"plugin warm ({default}{', preload ' + preload if preload else ''})",
                spec.workers,
                _pytest(
                    python,
                    *plugin,
                    "--exec-warm",
                    *(("--exec-preload", preload) if preload else ()),
                ),
                corpus.folder,
                expect_passed=count,
            )
        )
    if serial and not large:
        arms.append(
            Arm(
                "serial",
                "peer, serial",
                1,
                _pytest(python, *peer),
                corpus.peer_folder,
                expect_passed=count,
            )
        )
    if not large:
        # Any pytest-based runner pays this before its first script can start: with the
        # floor it bounds how close to the floor, and how far below xdist, a plugin can get.
        arms.append(
            Arm(
                "startup",
                "pytest start-up (empty folder)",
                1,
                _pytest(python, "--collect-only", *no_cache),
                empty,
                expect_collected=0,
            )
        )
    if spec.name.startswith("scale"):
        arms.append(
            Arm(
                "collect",
                "pytest --collect-only",
                1,
                _pytest(python, "--collect-only", *no_cache),
                corpus.folder,
                expect_collected=count,
            )
        )
    return arms


@final
@dataclass(frozen=True, slots=True)
class Quiet:
    """How the benchmark keeps other people's work on a shared machine out of its numbers."""

    threshold: float
    """Wait before each run until the machine uses fewer cores than this (0: never)."""
    limit: float
    """Longest such wait, in seconds."""
    disturbance: float
    """A run during which others used more cores than this on average is done again."""
    retries: int


def measure_arm(arm: Arm, env: dict[str, str], quiet: Quiet) -> Sample:
    """One counted run of ``arm``, redone (up to ``quiet.retries`` times) if disturbed."""
    for attempt in range(1, quiet.retries + 2):
        if arm.before is not None:
            arm.before()
        waited = wait_for_quiet(quiet.threshold, quiet.limit)
        sample = run_once(
            arm.argv,
            cwd=arm.cwd,
            env=env,
            stdin=arm.stdin,
            expect_passed=arm.expect_passed,
            expect_collected=arm.expect_collected,
        )
        disturbed = sample.others_cpu > quiet.disturbance * sample.wall
        sample = dataclasses.replace(sample, waited=waited, attempts=attempt, disturbed=disturbed)
        if not sample.ok or not disturbed:
            break
    return sample


def run_corpus(
    corpus: Corpus,
    arms: Sequence[Arm],
    *,
    runs: int,
    warmup: int,
    env: dict[str, str],
    quiet: Quiet,
) -> CorpusSummary:
    """Run the arms round-robin (A B C, A B C, ...), so drift in the machine hits all alike."""
    samples: dict[str, list[Sample]] = {arm.key: [] for arm in arms}
    total = warmup + runs
    for round_ in range(total):
        tag = "warm-up" if round_ < warmup else f"run {round_ - warmup + 1}/{runs}"
        for arm in arms:
            sample = measure_arm(arm, env, quiet)
            status = "ok" if sample.ok else f"FAILED: {sample.problem}"
            print(
                f"[{corpus.spec.name} {tag}] {arm.label:<46} {sample.wall:8.2f} s "
                f"{sample.maxrss_mb:6.0f} MB  others {sample.others_cpu / sample.wall:4.2f} "
                f"cores  attempts {sample.attempts}  waited {sample.waited:4.1f} s  {status}",
                file=sys.stderr,
                flush=True,
            )
            if round_ >= warmup:
                samples[arm.key].append(sample)
    summary = CorpusSummary(corpus.spec.name, corpus.spec.description, corpus.spec.count)
    for arm in arms:
        summary.arms[arm.key] = ArmSummary(
            arm.key, arm.label, arm.workers, arm.argv, tuple(samples[arm.key])
        )
    return summary


def _corpus_names(requested: str, quick: bool) -> list[str]:
    names: list[str] = []
    for name in (part.strip() for part in requested.split(",") if part.strip()):
        if name == "scale":
            names += ["scale-500"] if quick else ["scale-500", "scale-5000"]
        elif name in SPECS:
            names.append(name)
        else:
            known = ", ".join([*ALL_CORPORA, "numpy", "scale-500", "scale-5000"])
            raise SystemExit(f"unknown corpus {name!r} (known: {known})")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark pytest-codomyrmex-exec against its peers and the xargs floor.",
    )
    parser.add_argument("--runs", type=int, help="measured runs per arm (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--corpora",
        help="comma-separated: tiny, cpu, sleep, skewed, numpy, scale (= scale-500 and "
        f"scale-5000); default {','.join(ALL_CORPORA)}, with --warm {','.join(WARM_CORPORA)}",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="add the plugin with --exec-warm as an arm",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 runs, no serial peer, scale only at 500 (a smoke test, not numbers to quote)",
    )
    parser.add_argument("--no-serial", action="store_true", help="skip the serial peer")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run pytest with -p no:cacheprovider (not for skewed, which needs the cache)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.3,
        metavar="CORES",
        help="before each run, wait until the machine uses fewer cores than this (0: never; "
        "default 0.3)",
    )
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for a quiet machine before a run (default 30)",
    )
    parser.add_argument(
        "--disturbance",
        type=float,
        default=0.25,
        metavar="CORES",
        help="redo a run during which the rest of the machine used more cores than this on "
        "average (default 0.25)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="redos of a disturbed run at most (default 2)"
    )
    parser.add_argument("--python", help="interpreter for everything (default: this one)")
    parser.add_argument("--workdir", type=Path, help="where corpora go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark: profile the plugin on tiny and scale-500",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="instead of the benchmark: the pytest process's CPU per script (scale-500, warm"
        " and cold) against a trivial parametrized test",
    )
    parser.add_argument(
        "--sides",
        action="store_true",
        help="instead of the benchmark: CPU per script of the child, the warm server and the"
        " pytest process (tiny, warm and cold)",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    if args.corpora is None:
        args.corpora = ",".join(WARM_CORPORA if args.warm else ALL_CORPORA)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # As an exception, so the run in progress is killed and the work folder removed.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    python = real_interpreter(args.python or sys.executable)
    names = ["tiny", "scale-500"] if args.profile else _corpus_names(args.corpora, args.quick)
    made_workdir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="codomyrmex-bench-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results: Path = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    env = child_environment(workdir / "pycache")
    quiet = Quiet(args.quiet, args.quiet_limit, args.disturbance, max(args.retries, 0))
    try:
        empty = workdir / "empty"
        empty.mkdir(exist_ok=True)
        (empty / "pytest.ini").write_text("[pytest]\n")
        backends = plugin_backends(python, env, empty)
        if args.profile:
            corpora = [generate(SPECS[name], workdir) for name in names]
            profiling.run(
                corpora, python=python, env=env, results=results, backends=backends, empty=empty
            )
            return 0
        if args.sides:
            corpus = generate(SPECS["tiny"], workdir)
            print(
                sides.run(
                    corpus,
                    python=python,
                    env=env,
                    results=results,
                    backends=backends,
                    runs=args.runs,
                )
            )
            return 0
        if args.overhead:
            corpus = generate(SPECS["scale-500"], workdir)
            print(
                overhead.run(
                    corpus,
                    python=python,
                    env=env,
                    results=results,
                    backends=backends,
                    runs=args.runs,
                )
            )
            return 0

        host = machine(python, REPO)
        print("\n".join(["Benchmark of pytest-codomyrmex-exec", host.cpu_model]), file=sys.stderr)
        summaries: dict[str, CorpusSummary] = {}
        for name in names:
            corpus = generate(SPECS[name], workdir)
            arms = make_arms(
                corpus,
                python,
                backends=backends,
                serial=not (args.quick or args.no_serial),
                cache=not args.no_cache,
                empty=empty,
                warm=args.warm and name != "skewed",
            )
            summaries[name] = run_corpus(
                corpus,
                arms,
                runs=args.runs,
                warmup=args.warmup,
                env=env,
                quiet=quiet,
            )

        found = ratios(summaries)
        load_after = load_average()
        text = render(
            host, summaries, found, runs=args.runs, warmup=args.warmup, load_after=load_after
        )
        print(text)
        document = {
            "schema": 1,
            "command": ["bench/run.py", *(sys.argv[1:] if argv is None else argv)],
            "settings": {
                "runs": args.runs,
                "warmup": args.warmup,
                "quick": args.quick,
                "cache": not args.no_cache,
                "serial": not (args.quick or args.no_serial),
                "warm": args.warm,
                "quiet": dataclasses.asdict(quiet),
                "backends": {"default": backends[0], "other": backends[1]},
            },
            "machine": host.to_dict(),
            "load_after": load_after,
            "corpora": {name: summary.to_dict() for name, summary in summaries.items()},
            "ratios": [ratio.to_dict() for ratio in found],
            "table": text,
        }
        json_path = results / "latest.json"
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        (results / "latest.md").write_text(text + "\n")
        print(f"\nwrote {json_path} and {results / 'latest.md'}", file=sys.stderr)
        try:
            print(f"wrote {chart.write(document, results / 'latest.svg')}", file=sys.stderr)
        except ImportError:
            print("no chart: matplotlib is missing (pip install -e '.[bench]')", file=sys.stderr)
        failed = any(arm.failed for summary in summaries.values() for arm in summary.arms.values())
        return 1 if failed else 0
    finally:
        if made_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
