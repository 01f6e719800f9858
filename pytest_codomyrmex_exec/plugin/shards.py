"""``--exec-shard K/N``: keep the K-th of N shards of the collected items, balanced by time.

Every machine of a CI matrix computes the same split from the same node ids and the same
durations file: items go longest first to the least-loaded shard (LPT, within 4/3 of the
best split), ties broken by node id and then by shard number, never by collection order or
anything of the machine's.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, final

import pytest

from .durations import file_durations
from .environment import SHARD_VAR

_SHARD_PLUGIN = "codomyrmex-exec-shard"
_WORKER_OUTPUT_KEY = "codomyrmex_exec_shard"
"""Where an xdist worker leaves its split for the controller, which collects nothing."""


@final
@dataclass(frozen=True, slots=True)
class Shard:
    """The K-th (``index``, from 1) of ``count`` shards."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def add_shard_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--exec-shard",
        metavar="K/N",
        default=None,
        help=f"run only the K-th of N shards of the collected items, balanced by the "
        f"durations file (env: {SHARD_VAR})",
    )


def parse_shard(text: str, where: str) -> Shard:
    """``K/N`` with 1 <= K <= N, or a UsageError naming ``where``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match:
        index, count = int(match[1]), int(match[2])
        if 1 <= index <= count:
            return Shard(index, count)
    raise pytest.UsageError(f"{where}: expected K/N with 1 <= K <= N (e.g. 2/3), got {text!r}")


def resolve_shard(config: pytest.Config) -> Shard | None:
    """The shard from ``--exec-shard``, else from ``$EXEC_SHARD``, else none."""
    given = config.getoption("exec_shard")
    if given is not None:
        return parse_shard(str(given), "--exec-shard")
    from_env = os.environ.get(SHARD_VAR, "")
    if from_env.strip():
        return parse_shard(from_env, f"environment variable {SHARD_VAR}")
    return None


def estimates(nodeids: Sequence[str], known: dict[str, float]) -> list[float] | None:
    """Seconds expected of each item: remembered, else the median of the remembered ones
    among ``nodeids``; ``None`` when none is remembered (then every item counts the same)."""
    remembered = [known[nodeid] for nodeid in nodeids if nodeid in known]
    if not remembered:
        return None
    import statistics  # with fractions and decimal, only for sharding: not every session's

    median = statistics.median(remembered)
    return [known.get(nodeid, median) for nodeid in nodeids]


def split(nodeids: Sequence[str], seconds: Sequence[float], count: int) -> list[int]:
    """The shard (from 0) of each item: longest first to the least-loaded shard.

    Among equally loaded shards the one with fewer items wins, so no shard stays empty
    while there are at least ``count`` items, even when some take no time at all."""
    order = sorted(range(len(nodeids)), key=lambda i: (-seconds[i], nodeids[i], i))
    loads: list[tuple[float, int, int]] = [(0.0, 0, shard) for shard in range(count)]
    placed = [0] * len(nodeids)
    for i in order:
        load, items, shard = heapq.heappop(loads)
        placed[i] = shard
        heapq.heappush(loads, (load + seconds[i], items + 1, shard))
    return placed


@final
@dataclass(frozen=True, slots=True)
class ShardFacts:
    """What one shard got: for the header line and the empty-shard exit status."""

    shard: Shard
    kept: int
    total: int
    seconds: float | None
    """Expected seconds of this shard; ``None`` when no duration was known."""
    total_seconds: float | None

    def line(self) -> str:
        if self.seconds is None or self.total_seconds is None:
            return (
                f"shard {self.shard}: {self.kept} of {_items(self.total)} "
                "(no remembered durations: split by count)"
            )
        return (
            f"shard {self.shard}: {_items(self.kept)}, "
            f"about {self.seconds:.1f} s of {self.total_seconds:.1f} s"
        )


def configure_shard(config: pytest.Config) -> None:
    """Register the shard plugin when a shard is asked for (a bad value is a UsageError)."""
    shard = resolve_shard(config)
    if shard is not None:
        # Registered now, after cacheprovider's tryfirst pytest_configure registered --lf's
        # plugin: a later registration is an outer wrapper, so the split sees what --lf left.
        config.pluginmanager.register(ShardPlugin(shard), _SHARD_PLUGIN)


class ShardPlugin:
    """Deselects the other shards' items, says what this shard got, and exits 0 when empty."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.facts: ShardFacts | None = None
        self.from_worker = False
        """True on xdist's controller, which learns the split from a worker."""

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> Generator[None, None, None]:
        # After every other plugin's selection (-k, -m, --lf): the split is of what would run.
        yield
        nodeids = [item.nodeid for item in items]
        expected = estimates(nodeids, file_durations(config))
        placed = split(nodeids, expected or [1.0] * len(items), self.shard.count)
        mine = self.shard.index - 1
        kept = [item for item, shard in zip(items, placed, strict=True) if shard == mine]
        dropped = [item for item, shard in zip(items, placed, strict=True) if shard != mine]
        self.facts = ShardFacts(
            shard=self.shard,
            kept=len(kept),
            total=len(items),
            seconds=None if expected is None else _sum(expected, placed, mine),
            total_seconds=None if expected is None else sum(expected),
        )
        if hasattr(config, "workerinput"):
            config.workeroutput[_WORKER_OUTPUT_KEY] = _to_plain(self.facts)  # type: ignore[attr-defined]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    def pytest_report_collectionfinish(self) -> list[str]:
        return [self.facts.line()] if self.facts is not None else []

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist's controller: every worker made the same split; keep the first's facts."""
        output = getattr(node, "workeroutput", None) or {}
        plain = output.get(_WORKER_OUTPUT_KEY)
        if self.facts is None and isinstance(plain, dict):
            self.facts = ShardFacts(shard=self.shard, **plain)
            self.from_worker = True

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        facts = self.facts
        if facts is None or facts.kept or not facts.total:
            return  # nothing collected at all stays pytest's "no tests collected" (5)
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        facts = self.facts
        if facts is None:
            return
        if self.from_worker:
            # The controller collected nothing: the workers' split is told here.
            terminalreporter.write_sep("-", f"codomyrmex-exec: {facts.line()}")
        if not facts.kept and facts.total:
            terminalreporter.write_sep(
                "-",
                f"codomyrmex-exec: shard {facts.shard} has nothing to run "
                f"({_items(facts.total)} over {facts.shard.count} shards)",
            )


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _sum(seconds: Sequence[float], placed: Sequence[int], shard: int) -> float:
    return sum(s for s, where in zip(seconds, placed, strict=True) if where == shard)


def _to_plain(facts: ShardFacts) -> dict[str, Any]:
    """The facts as xdist's channel can carry them (no dataclasses)."""
    return {
        "kept": facts.kept,
        "total": facts.total,
        "seconds": facts.seconds,
        "total_seconds": facts.total_seconds,
    }
