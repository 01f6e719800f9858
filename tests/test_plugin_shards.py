"""--exec-shard and the durations file: every item once over the shards, balanced, the same
split on every machine, empty shards that pass, and the merge command."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RUN_TIMEOUT, ExecPytester

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


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    entries = json.loads(path.read_text())["durations"]
    assert isinstance(entries, dict)
    return entries


@pytest.mark.parametrize("how", list(MODES))
def test_the_shards_run_every_item_exactly_once(px: ExecPytester, how: str) -> None:
    every = make_repository(px)
    px.conftest(MODE_TRACE)
    assert sorted(selected(px)) == sorted(every)
    # Some items remembered, the others count as their median; each machine has its own copy
    # of the file (each shard writes back to it).
    known = {nodeid: 0.5 + n for n, nodeid in enumerate(every) if n % 2}
    ran: list[str] = []
    for k in (1, 2, 3):
        write_durations(px.path / f"shard{k}.json", known)
        args = (f"--exec-shard={k}/3", f"--exec-durations-file=shard{k}.json", *MODES[how])
        result = px.run("-v", "-p", "no:cacheprovider", *args)
        outcomes = result.parseoutcomes()
        assert result.ret == pytest.ExitCode.OK, result.stdout
        # "nodeid PASSED", or under xdist "[gw0] PASSED nodeid".
        passed = {word for line in result.outlines if "PASSED" in line for word in line.split()}
        here = sorted(set(every) & passed)
        assert here, f"shard {k}/3 ran nothing"
        assert outcomes["passed"] == len(here)
        if how != "xdist":  # xdist's controller does not hear of the workers' deselections
            assert outcomes["deselected"] == len(every) - len(here)
        result.stdout.fnmatch_lines([f"*shard {k}/3: {len(here)} items, about * s of * s*"])
        assert set(read_entries(px.path / f"shard{k}.json")) == set(known) | set(here)
        ran += here
    assert sorted(ran) == sorted(every), "an item ran twice or not at all"
    traces = set((px.path / "modes.txt").read_text().split()) if how != "inline" else set()
    assert traces == {"inline": set(), "parallel": {"parallel"}, "xdist": {"xdist-worker"}}[how]


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


def test_the_durations_file_remembers_what_ran_and_merges_newest_first(
    px: ExecPytester,
) -> None:
    px.ini(exec_script_patterns="examples/*.py")
    px.script("examples/slow.py", "import time\ntime.sleep(0.6)\n")
    px.script("examples/quick.py", "")
    px.pytester.makepyfile(test_io="import time\n\ndef test_wait():\n    time.sleep(0.3)\n")
    # test_wait is unknown: it counts as the median of slow and quick (49.55 s).
    stale = {
        "examples/slow.py::slow": 99.0,
        "examples/quick.py::quick": 0.1,
        "gone/old.py::old": 7.0,
    }
    for k in (1, 2):  # each CI machine has its own copy of the committed file
        write_durations(px.path / f"shard{k}.json", stale)
        args = (f"--exec-shard={k}/2", f"--exec-durations-file=shard{k}.json")
        px.run("-p", "no:cacheprovider", *args).assert_outcomes(passed=1 if k == 1 else 2)

    first, second = read_entries(px.path / "shard1.json"), read_entries(px.path / "shard2.json")
    # Longest first: slow (99 s remembered) alone on shard 1, the other two on shard 2.
    assert 0.6 <= float(first["examples/slow.py::slow"]["seconds"]) < 30
    assert second["examples/slow.py::slow"]["seconds"] == 99.0, "an item not run kept its entry"
    assert 0.3 <= float(second["test_io.py::test_wait"]["seconds"]) < 30
    assert second["examples/quick.py::quick"]["measured"] > "2026-01-02T03:04:05+00:00"
    assert first["gone/old.py::old"] == second["gone/old.py::old"]
    text = (px.path / "shard2.json").read_text()
    assert text.splitlines()[3].startswith('    "examples/quick.py::quick": {"measured": ')

    out = px.path / "merged.json"
    merge = [sys.executable, "-m", "pytest_codomyrmex_exec", "merge-durations", str(out)]
    done = subprocess.run(
        [*merge, str(px.path / "shard2.json"), str(px.path / "shard1.json")],
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "4 items from 2 files" in done.stdout
    merged = read_entries(out)
    assert merged["examples/slow.py::slow"] == first["examples/slow.py::slow"], "newest wins"
    assert merged["test_io.py::test_wait"] == second["test_io.py::test_wait"]
    assert merged["gone/old.py::old"]["seconds"] == 7.0
    # The other way round: the same file, because the measurement time decides, not the order.
    subprocess.run(
        [*merge, str(px.path / "shard1.json"), str(px.path / "shard2.json")],
        check=True,
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    assert read_entries(out) == merged


def test_merge_durations_needs_no_pytest_and_names_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "durations": {"a.py::a": {"seconds": -1}}}')
    code = (
        "import sys\n"
        "from pytest_codomyrmex_exec.__main__ import main\n"
        f"status = main(['merge-durations', {str(tmp_path / 'out.json')!r}, {str(bad)!r}])\n"
        "print(status, any(m.split('.')[0] in ('pytest', '_pytest') for m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.stdout.split() == ["1", "False"], done.stderr
    assert f"{bad}: entry 'a.py::a' must be" in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_the_durations_file_orders_the_parallel_starts(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="examples/*.py")
    for name in ("a", "b", "c"):
        px.script(
            f"examples/{name}.py",
            "import pathlib\n"
            "with open(pathlib.Path(__file__).parent.parent / 'order.txt', 'a') as out:\n"
            f"    out.write('{name}\\n')\n",
        )
    write_durations(px.path / "d.json", {"examples/b.py::b": 5.0, "examples/c.py::c": 2.0})
    # No cache (-p no:cacheprovider): only the file can say that b takes longest.
    args = ("--exec-parallel", "--exec-workers=1", "-p", "no:cacheprovider")
    px.run(*args, "--exec-durations-file=d.json").assert_outcomes(passed=3)
    assert px.lines("order.txt") == ["b", "c", "a"]


def test_a_durations_file_that_cannot_be_read_is_a_usage_error(px: ExecPytester) -> None:
    px.ini(exec_script_patterns="examples/*.py", exec_durations_file="ci/durations.json")
    px.script("examples/a.py", "")
    (px.path / "ci").mkdir()
    (px.path / "ci" / "durations.json").write_text("<<<<<<< HEAD\n")
    result = px.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option 'exec_durations_file': *ci/durations.json: not JSON*"]
    )


def test_an_empty_shard_passes_and_says_so(px: ExecPytester) -> None:
    make_repository(px, scripts=1, tests=1)
    for extra in ((), ("-n", "2")):
        result = px.run("-p", "no:cacheprovider", "--exec-shard=3/3", *extra)
        assert result.ret == pytest.ExitCode.OK, result.stdout
        result.stdout.fnmatch_lines(["*shard 3/3 has nothing to run (2 items over 3 shards)*"])
    # Nothing left by -k: not the shard's doing, so pytest's "no tests collected" stays.
    result = px.run("-p", "no:cacheprovider", "--exec-shard=3/3", "-k", "no_such_item")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_the_shard_can_come_from_the_environment(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = make_repository(px, scripts=2, tests=2)
    monkeypatch.setenv("EXEC_SHARD", "2/2")
    from_env = selected(px)
    assert 0 < len(from_env) < len(every)
    assert from_env == selected(px, "--exec-shard=2/2")
    header = f"shard 2/2: {len(from_env)} of {len(every)} items (no remembered durations*"
    px.run("--collect-only").stdout.fnmatch_lines([header])
    assert sorted(from_env + selected(px, "--exec-shard=1/2")) == sorted(every), "option wins"
    # The shard is this run's: a script that runs pytest itself must not inherit it.
    px.script("examples/env.py", "import os, sys\nsys.exit(os.environ.get('EXEC_SHARD'))\n")
    px.run("-p", "no:cacheprovider", "--exec-shard=1/1", "examples/env.py").assert_outcomes(
        passed=1
    )


@pytest.mark.parametrize("value", ["0/3", "4/3", "a/b", "3", "1/0", ""])
def test_a_bad_shard_is_a_usage_error_naming_its_source(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    px.script("a_script.py", "")
    # In this process: a usage error runs no script.
    result = px.run_inprocess(f"--exec-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--exec-shard: expected K/N with 1 <= K <= N*{value!r}*"])
    if value:
        monkeypatch.setenv("EXEC_SHARD", value)
        result = px.run_inprocess()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*environment variable EXEC_SHARD: expected K/N*{value!r}*"])


def test_the_split_is_of_what_last_failed_left(px: ExecPytester) -> None:
    # --lf filters most files as it collects them, but a file named on the command line is
    # collected whole and its passing tests are deselected afterwards, by a hook wrapper.
    # Split before that, by name, shard 1 would get two of the three failures, shard 3 none.
    px.script("examples/demo_script.py", "")
    body = "".join(f"def test_{n}():\n    assert {n not in (0, 1, 3)}\n\n" for n in range(6))
    px.pytester.makepyfile(test_mod=body)
    px.run().assert_outcomes(passed=4, failed=3)
    shards = [
        {
            line.split()[1]
            for line in px.run("-rf", "--lf", f"--exec-shard={k}/3", "test_mod.py").outlines
            if line.startswith("FAILED ")
        }
        for k in (1, 2, 3)
    ]
    assert all(len(shard) == 1 for shard in shards), shards
    assert set().union(*shards) == {f"test_mod.py::test_{n}" for n in (0, 1, 3)}


def test_the_durations_file_as_two_arguments_is_a_usage_error(
    px: ExecPytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A file outside the project, given as a separate value: pytest would take it for a test
    # path while choosing the rootdir, before the option exists, and move the rootdir.
    elsewhere = tmp_path_factory.mktemp("ci") / "durations.json"
    write_durations(elsewhere, {})
    px.script("a_script.py", "open('ran', 'w').close()\n")
    result = px.run("--exec-durations-file", str(elsewhere))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--exec-durations-file: write --exec-durations-file={elsewhere}*"]
    )
    assert not (px.path / "ran").exists()
    px.run(f"--exec-durations-file={elsewhere}").assert_outcomes(passed=1)
    assert "a_script.py::a_script" in read_entries(elsewhere)
