"""``bench/run.py --overhead``: the pytest process's own CPU per script against a trivial test.

Once a script starts in a millisecond (warm start), what is left per script is what the
pytest process itself spends on it: collecting the file, starting and supervising the child,
turning the result into reports. The yardstick is what pytest spends on a trivial ordinary
test, measured in the same run.

Every arm runs through ``bench/probe.py``, which records ``RUSAGE_SELF``: the pytest process
alone, all its threads, without the scripts (those are ``RUSAGE_CHILDREN``). CPU time, unlike
wall time, hardly moves when other work shares the machine. Per item is
``(arm - empty folder) / items``, so pytest's fixed start-up is paid by neither side and
collection is counted on both. The arms are interleaved round by round; the table shows
medians and the ratio of medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

from corpora import Corpus
from profiling import probe

_NOOP_TESTS = '''\
"""The peer: the cheapest ordinary test pytest can run, parametrized once per script."""

import pytest


@pytest.mark.parametrize("index", range({count}))
def test_noop(index: int) -> None:
    pass
'''


def write_noop_tests(folder: Path, count: int) -> Path:
    """A folder of ``count`` trivial parametrized tests, the yardstick of a pytest item."""
    folder.mkdir(exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_noop.py").write_text(_NOOP_TESTS.format(count=count))
    return folder


def write_baselines(corpus: Corpus) -> tuple[Path, Path]:
    """Beside the corpus: a folder of as many trivial tests as it has scripts, and an empty
    folder (pytest's own start-up), the two baselines a script's cost is set against."""
    noop = write_noop_tests(corpus.folder.parent / "noop-tests", corpus.spec.count)
    empty = corpus.folder.parent / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "pytest.ini").write_text("[pytest]\n")
    return noop, empty


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

    default, other = backends
    plugin = ["-q", "-p", "no:randomly", "--exec-parallel", "--exec-workers", "2"]
    arms: dict[str, tuple[Path, list[str]]] = {
        "empty folder (pytest start-up)": (empty, ["-q", "-p", "no:randomly"]),
        f"{count} trivial tests (parametrized no-op)": (noop, ["-q", "-p", "no:randomly"]),
        f"plugin, warm ({default})": (corpus.folder, [*plugin, "--exec-warm"]),
        f"plugin, cold ({default})": (corpus.folder, plugin),
        f"plugin, warm ({other})": (
            corpus.folder,
            [*plugin, "--exec-warm", "--exec-backend", other],
        ),
    }
    scratch = results / "overhead"
    scratch.mkdir(parents=True, exist_ok=True)
    for folder, args in arms.values():  # a warm-up: bytecode and pytest caches
        probe(python, folder, scratch / "warmup", env, args)
    cpu: dict[str, list[float]] = {label: [] for label in arms}
    for _ in range(runs):
        for label, (folder, args) in arms.items():
            cpu[label].append(probe(python, folder, scratch / "run", env, args)["self_cpu"])

    medians = {label: statistics.median(values) for label, values in cpu.items()}
    bare = medians["empty folder (pytest start-up)"]
    trivial_label = f"{count} trivial tests (parametrized no-op)"
    per_trivial = (medians[trivial_label] - bare) / count
    lines = [
        f"pytest process's own CPU (RUSAGE_SELF), {count} items, median of {runs} runs",
        "",
        "| arm | CPU s (median) | min..max s | ms per item over start-up | / trivial test |",
        "|---|--:|--:|--:|--:|",
    ]
    for label, values in cpu.items():
        median = medians[label]
        span = f"{min(values):.2f}..{max(values):.2f}"
        if label.startswith("empty"):
            lines.append(f"| {label} | {median:.2f} | {span} | | |")
            continue
        per_item = (median - bare) / count
        lines.append(
            f"| {label} | {median:.2f} | {span} | {per_item * 1000:.2f} | "
            f"{per_item / per_trivial:.2f}x |"
        )
    text = "\n".join(lines)
    (results / "overhead.md").write_text(text + "\n")
    return text
