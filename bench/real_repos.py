"""The plugin on a real repository's scripts, against a hand-written peer under xdist.

    python bench/real_repos.py TREE --scripts 'examples/*.py' [options]

TREE is a local checkout (nothing is fetched at bench time); ``--scripts`` picks its scripts
the way a user would, as ``exec_script_patterns``. The tree is copied into a work folder (the
scripts may write beside themselves) with a ``pytest.ini`` that selects the scripts and
nothing else (``python_files`` matches no file there, so only script items run). Arms:

- ``cold``: ``pytest --exec-parallel`` with the defaults (``--exec-workers auto``);
- ``warm``: the same with ``--exec-warm``;
- ``auto``: the same with ``--exec-warm --exec-preload auto``, primed by the untimed rounds;
- ``xdist``: one parametrized test that ``subprocess.run``s each script from its own folder
  with the same stdin, ``PYTHONPATH`` and time limits, under ``pytest -n N`` (the plugin
  disabled).

First an untimed round runs every arm once and compares the outcomes script by script: a
script that fails in the cold arm (a prompt, the network, a missing file) is left out of the
measured runs of every arm by ``--deselect`` (the peer skips it from its list), and one whose
outcome differs between arms is named (a defect of the plugin or of the peer) and left out
too. Then the arms run interleaved, ``--runs`` rounds; the table shows medians of wall and
CPU seconds (the whole process tree) and their ratios against the xdist peer.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

from measure import RUN_TIMEOUT, child_environment, load_average, real_interpreter, run_once

# A name no file has: with it pytest collects no test module, only the script items.
_NO_TEST_FILES = "codomyrmex_bench_no_test_files_*.py"
_RUN_FOR_CONFTEST = """\
import pytest
from pytest_codomyrmex_exec.plugin import ScriptItem

RUN_FOR = {run_for!r}


def pytest_collection_modifyitems(items):
    for item in items:
        seconds = RUN_FOR.get(item.nodeid.split("::")[0])
        if isinstance(item, ScriptItem) and seconds is not None:
            item.add_marker(pytest.mark.exec(run_for=seconds))
"""
_PEER = '''\
"""The hand-written peer: each script in a subprocess from its own folder, as the plugin
runs it (empty or the given stdin, pytest's pythonpath first on PYTHONPATH)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TREE = Path({tree!r})
SCRIPTS = {scripts!r}
RUN_FOR = {run_for!r}
STDIN = {stdin!r}
TIMEOUT = {timeout!r}
PYTHONPATH = {pythonpath!r}


@pytest.mark.parametrize("path", SCRIPTS)
def test_script(path):
    script = TREE / path
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*PYTHONPATH, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    run_for = RUN_FOR.get(path)
    try:
        subprocess.run(
            [sys.executable, str(script)],
            cwd=script.parent,
            input=STDIN.encode(),
            capture_output=True,
            env=env,
            timeout=run_for or TIMEOUT,
            check=True,
        )
    except subprocess.TimeoutExpired:
        if run_for is None:
            raise
'''
_PEER_FAILED = re.compile(r"^FAILED test_peer\.py::test_script\[(.+?)\]", re.M)
_ARMS = ("cold", "warm", "auto", "xdist")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="a local checkout of the repository")
    parser.add_argument(
        "--scripts",
        required=True,
        nargs="+",
        metavar="GLOB",
        help="exec_script_patterns: file-name or rootdir-relative path globs",
    )
    parser.add_argument("--name", help="what the table calls the corpus (default: TREE's name)")
    parser.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="GLOB",
        help="scripts (rootdir-relative path globs) left out of every arm",
    )
    parser.add_argument(
        "--pythonpath",
        nargs="*",
        default=[],
        metavar="DIR",
        help="pytest's pythonpath ini entries, relative to TREE (the peer's PYTHONPATH too)",
    )
    parser.add_argument("--stdin", default="", help="every script's standard input (exec_stdin)")
    parser.add_argument("--timeout", type=float, help="seconds per script (exec_timeout)")
    parser.add_argument(
        "--run-for",
        nargs="*",
        default=[],
        metavar="GLOB=SECONDS",
        help="endless demos: still running after SECONDS they pass and are stopped",
    )
    parser.add_argument("--xdist", type=int, default=2, help="-n of the peer (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--python", help="interpreter for everything (default: this one)")
    parser.add_argument("--workdir", type=Path, help="where the copy goes (default: a temp dir)")
    args = parser.parse_args(argv)
    if not (args.tree / ".").is_dir():
        parser.error(f"{args.tree} is not a folder")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    for entry in args.run_for:
        if not re.fullmatch(r"[^=]+=\d+(\.\d+)?", entry):
            parser.error(f"--run-for {entry!r}: expected GLOB=SECONDS")
    return args


def _pytest(python: str, *args: str, quiet: bool = True) -> list[str]:
    # Not quiet: the header (where auto says what it preloads) is left out by -q.
    return [python, "-m", "pytest", *(["-q"] if quiet else []), "-p", "no:randomly", *args]


def prepare(args: argparse.Namespace, workdir: Path) -> Path:
    """Copy the tree, write its ini (and the run_for conftest); return the copy."""
    tree = workdir / "tree"
    shutil.copytree(
        args.tree, tree, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache")
    )
    lines = [
        "[pytest]",
        f"exec_script_patterns = {' '.join(args.scripts)}",
        f"python_files = {_NO_TEST_FILES}",
    ]
    if args.pythonpath:
        lines.append(f"pythonpath = {' '.join(args.pythonpath)}")
    if args.stdin:
        lines += ["exec_stdin =", *(f"    {line}" for line in args.stdin.splitlines())]
    if args.timeout is not None:
        lines.append(f"exec_timeout = {args.timeout:g}")
    (tree / "pytest.ini").write_text("\n".join(lines) + "\n")
    return tree


def collect(python: str, tree: Path, env: dict[str, str]) -> list[str]:
    """The script files the plugin collects, rootdir-relative."""
    done = subprocess.run(
        _pytest(python, "--collect-only", "-p", "no:cacheprovider"),
        cwd=tree,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    paths = sorted({line.split("::")[0] for line in done.stdout.splitlines() if "::" in line})
    if not paths:
        raise SystemExit(f"no script collected in {tree}:\n{done.stdout[-2000:]}")
    return paths


def write_peer(args: argparse.Namespace, workdir: Path, tree: Path, scripts: list[str]) -> Path:
    peer = workdir / "peer"
    shutil.rmtree(peer, ignore_errors=True)
    peer.mkdir()
    (peer / "pytest.ini").write_text("[pytest]\n")
    source = _PEER.format(
        tree=str(tree),
        scripts=scripts,
        run_for=run_for_of(args, scripts),
        stdin=args.stdin + "\n" if args.stdin else "",
        timeout=args.timeout,
        pythonpath=[str(tree / entry) for entry in args.pythonpath],
    )
    (peer / "test_peer.py").write_text(source)
    return peer


def run_for_of(args: argparse.Namespace, scripts: list[str]) -> dict[str, float]:
    globs = [(glob, float(seconds)) for glob, seconds in (e.rsplit("=", 1) for e in args.run_for)]
    return {
        path: next(seconds for glob, seconds in globs if fnmatch(path, glob))
        for path in scripts
        if any(fnmatch(path, glob) for glob, _ in globs)
    }


def plugin_argv(
    python: str, arm: str, report: Path | None, deselect: list[str], quiet: bool = True
) -> list[str]:
    extra = {"cold": [], "warm": ["--exec-warm"]}.get(
        arm, ["--exec-warm", "--exec-preload", "auto"]
    )
    argv = _pytest(python, "--exec-parallel", *extra, quiet=quiet)
    argv += [f"--exec-report={report}"] if report is not None else []
    for path in deselect:
        argv += ["--deselect", path]
    return argv


def discover(
    python: str, tree: Path, peer: Path, xdist: int, env: dict[str, str], excluded: list[str]
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """One untimed round of every arm (auto twice: its first run records): each script's
    outcome per arm, and the header and end lines ``auto`` printed on its primed run."""
    outcomes: dict[str, dict[str, str]] = {}
    auto_lines: list[str] = []
    for arm in ("cold", "warm", "auto", "auto", "xdist"):
        report = tree.parent / f"discover-{arm}.jsonl"
        if arm == "xdist":
            argv, cwd = _pytest(python, "-p", "no:codomyrmex_exec", "-rf", "-n", str(xdist)), peer
        else:
            argv, cwd = plugin_argv(python, arm, report, excluded, quiet=False), tree
        done = subprocess.run(
            argv, cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        if arm == "xdist":
            failed = set(_PEER_FAILED.findall(done.stdout))
            outcomes[arm] = {p: "failed" if p in failed else "passed" for p in outcomes["cold"]}
        else:
            outcomes[arm] = {}
            for line in report.read_text().splitlines()[1:]:
                result = json.loads(line)
                if "nodeid" in result:
                    outcomes[arm][result["nodeid"].split("::")[0]] = result["outcome"]
        if arm == "auto":
            auto_lines = [line for line in done.stdout.splitlines() if "preload" in line]
        print(f"[untimed] {arm}: {done.stdout.strip().splitlines()[-1]}", file=sys.stderr)
    return outcomes, auto_lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = real_interpreter(args.python or sys.executable)
    name = args.name or args.tree.resolve().name
    made = args.workdir is None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-real-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = child_environment(workdir / "pycache")
    try:
        tree = prepare(args, workdir)
        collected = collect(python, tree, env)
        excluded = [p for p in collected if any(fnmatch(p, glob) for glob in args.exclude)]
        scripts = [p for p in collected if p not in excluded]
        run_for = run_for_of(args, scripts)
        if run_for:
            if (tree / "conftest.py").exists():
                raise SystemExit(f"--run-for needs a conftest.py of its own: {args.tree} has one")
            (tree / "conftest.py").write_text(_RUN_FOR_CONFTEST.format(run_for=run_for))
        peer = write_peer(args, workdir, tree, scripts)
        outcomes, auto_lines = discover(python, tree, peer, args.xdist, env, excluded)
        failing = sorted(p for p in scripts if outcomes["cold"].get(p) != "passed")
        differing = sorted(p for p in scripts if len({outcomes[arm].get(p) for arm in _ARMS}) > 1)
        left_out = sorted({*excluded, *failing, *differing})
        kept = [p for p in scripts if p not in left_out]
        peer = write_peer(args, workdir, tree, kept)
        arms = {
            arm: plugin_argv(python, arm, None, [p for p in collected if p not in kept])
            for arm in _ARMS[:-1]
        }
        arms["xdist"] = _pytest(python, "-p", "no:codomyrmex_exec", "-n", str(args.xdist))
        load_before = load_average()
        walls: dict[str, list[float]] = {arm: [] for arm in arms}
        cpus: dict[str, list[float]] = {arm: [] for arm in arms}
        troubled = dict.fromkeys(arms, 0)  # runs not all passed (a script timed out, say)
        for round_ in range(args.runs):
            for arm, command in arms.items():
                cwd = peer if arm == "xdist" else tree
                sample = run_once(command, cwd=cwd, env=env, expect_passed=len(kept))
                status = "ok" if sample.ok else sample.problem.splitlines()[0]
                print(
                    f"[run {round_ + 1}/{args.runs}] {arm:<6} {sample.wall:7.2f} s wall "
                    f"{sample.cpu:7.2f} s CPU {status}",
                    file=sys.stderr,
                    flush=True,
                )
                if not sample.ok:  # counted all the same, and named in the table
                    troubled[arm] += 1
                walls[arm].append(sample.wall)
                cpus[arm].append(sample.cpu)
    finally:
        if made:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = {arm: statistics.median(values) for arm, values in walls.items()}
    cpu = {arm: statistics.median(values) for arm, values in cpus.items()}
    print(
        f"{name}: {len(kept)} scripts ({len(collected)} collected), medians of {args.runs} "
        f"interleaved runs; load average {load_before} before, {load_average()} after"
    )
    for label, paths in (
        ("excluded (--exclude)", excluded),
        ("left out, failing cold", [p for p in failing if p not in excluded]),
        ("left out, outcome differs between arms", differing),
    ):
        if paths:
            print(f"{label}: {len(paths)}")
            for path in paths:
                print(f"    {path}  " + ", ".join(f"{a} {outcomes[a].get(path)}" for a in _ARMS))
    for line in auto_lines:
        print(line)
    print("| arm | wall s | CPU s | wall / xdist | CPU / xdist |")
    print("|---|--:|--:|--:|--:|")
    for arm in arms:
        flag = f" ({troubled[arm]} of {args.runs} runs not all passed)" if troubled[arm] else ""
        print(
            f"| {arm}{flag} | {wall[arm]:.2f} | {cpu[arm]:.2f} | {wall[arm] / wall['xdist']:.2f}x "
            f"| {cpu[arm] / cpu['xdist']:.2f}x |"
        )
    return 1 if any(troubled.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
