"""--exec-shard and the durations file: every item once over the shards, balanced, the same
split on every machine, empty shards that pass, and the merge command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import ExecPytester

MODES = {
    "inline": (),
    "parallel": ("--exec-parallel",),
    "xdist": ("-n", "2"),
}

# A conftest that leaves a trace of the mode that really ran: the backend factory is asked
# only by the parallel session, and only an xdist worker has workerinput.
MODE_TRACE = """
import pathlib

TRACE = pathlib.Path(__file__).parent / "modes.txt"

def _trace(word):
    with open(TRACE, "a") as out:
        out.write(word + "\\n")

def pytest_configure(config):
    if hasattr(config, "workerinput"):
        _trace("xdist-worker")

def pytest_exec_make_backend(config):
    _trace("parallel")
"""


def make_repository(px: ExecPytester, scripts: int = 7, tests: int = 5) -> list[str]:
    """A small project: scripts under examples/ and docs/, test functions under tests/, the
    patterns in pytest.ini; returns every item's node id."""
    px.ini(exec_script_patterns="examples/**/*.py docs/*_demo.py")
    ids = []
    for n in range(scripts):
        where = f"examples/topic{n % 3}/step{n}.py" if n % 4 else f"docs/intro{n}_demo.py"
        px.script(where, f"print('step {n}')\n")
        ids.append(f"{where}::{Path(where).stem}")
    body = "".join(f"def test_case{n}():\n    assert {n} + 1 == {n + 1}\n\n" for n in range(tests))
    (px.path / "tests").mkdir()
    (px.path / "tests" / "test_core.py").write_text(body)
    ids += [f"tests/test_core.py::test_case{n}" for n in range(tests)]
    return ids


def selected(px: ExecPytester, *args: str) -> list[str]:
    """The node ids a session would run, from ``--collect-only -q``."""
    result = px.run("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), result.stdout
    return [line for line in result.outlines if "::" in line and " " not in line]


def write_durations(path: Path, seconds: dict[str, float]) -> None:
    entries = {
        nodeid: {"seconds": value, "measured": "2026-01-02T03:04:05+00:00"}
        for nodeid, value in seconds.items()
    }
    path.write_text(json.dumps({"version": 1, "durations": entries}))


@pytest.mark.parametrize("mode", list(MODES))
def test_the_shards_run_every_item_exactly_once(px: ExecPytester, mode: str) -> None:
    every = make_repository(px)
    px.conftest(MODE_TRACE)
    assert sorted(selected(px)) == sorted(every)
    ran: list[str] = []
    for k in (1, 2, 3):
        result = px.run("-v", "-p", "no:cacheprovider", f"--exec-shard={k}/3", *MODES[mode])
        outcomes = result.parseoutcomes()
        assert result.ret == pytest.ExitCode.OK, result.stdout
        # "nodeid PASSED", or under xdist "[gw0] PASSED nodeid".
        passed = {word for line in result.outlines if "PASSED" in line for word in line.split()}
        here = sorted(set(every) & passed)
        assert here, f"shard {k}/3 ran nothing"
        assert outcomes["passed"] == len(here)
        if mode != "xdist":  # xdist's controller does not hear of the workers' deselections
            assert outcomes["deselected"] == len(every) - len(here)
        result.stdout.fnmatch_lines([f"*shard {k}/3: {len(here)} of {len(every)} items*"])
        ran += here
    assert sorted(ran) == sorted(every), "an item ran twice or not at all"
    traces = set((px.path / "modes.txt").read_text().split()) if mode != "inline" else set()
    assert traces == {"inline": set(), "parallel": {"parallel"}, "xdist": {"xdist-worker"}}[mode]


def test_every_machine_computes_the_same_split(px: ExecPytester) -> None:
    every = make_repository(px, scripts=9, tests=6)
    known = {nodeid: float(n % 5) for n, nodeid in enumerate(every) if n % 3}
    write_durations(px.path / "durations.json", known)
    args = ("--exec-durations-file=durations.json",)
    for k in (1, 2, 3, 4):
        first = selected(px, f"--exec-shard={k}/4", *args)
        assert first, f"shard {k}/4 is empty"
        # Collected in another order (paths given the other way round): the same split.
        again = selected(px, f"--exec-shard={k}/4", *args, "tests", "examples", "docs")
        assert sorted(again) == sorted(first)


def test_balance_is_within_four_thirds_of_the_best_split(px: ExecPytester) -> None:
    # One long script and many shorter ones: taken in any order but longest first, or split
    # by count, the long one lands on a shard already loaded (5/3 of the best here).
    seconds = [30.0, 10.0, 10.0, 10.0, 0.5, 10.0, 10.0, 0.5, 10.0]
    px.ini(exec_script_patterns="examples/*.py")
    ids = []
    for n in range(len(seconds)):
        px.script(f"examples/s{n:02}.py", "")
        ids.append(f"examples/s{n:02}.py::s{n:02}")
    known = dict(zip(ids, seconds, strict=True))
    count = 3
    best = min(
        max(sum(s for s, at in zip(seconds, split, strict=True) if at == k) for k in range(count))
        for split in itertools.product(range(count), repeat=len(seconds))
    )
    by_count = [
        sum(known[nodeid] for nodeid in selected(px, f"--exec-shard={k}/{count}"))
        for k in range(1, count + 1)
    ]
    assert max(by_count) > best * 4 / 3, "the corpus would not tell a balanced split"

    write_durations(px.path / "durations.json", known)
    loads = []
    for k in range(1, count + 1):
        args = (f"--exec-shard={k}/{count}", "--exec-durations-file=durations.json")
        kept = selected(px, *args)
        load = sum(known[nodeid] for nodeid in kept)
        header = f"shard {k}/{count}: {len(kept)} items, about {load:.1f} s of {sum(seconds):.1f} s"
        px.run("--collect-only", "-p", "no:cacheprovider", *args).stdout.fnmatch_lines([header])
        loads.append(load)
    assert sum(loads) == sum(seconds), "an item is in no shard or in two"
    assert max(loads) <= best * 4 / 3, (loads, best)
