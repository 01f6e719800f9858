"""Summaries of the measured runs, the ratios that sum them up, and the table.

The table is Markdown, so the same text reads in a terminal and pastes into the docs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, final

from measure import Machine, Sample

PLUGIN = "plugin"
"""Key of the plugin with its default backend; the other backend is ``plugin-<name>``."""
WARM = "plugin-warm"
"""Key of the plugin with ``--exec-warm`` (``bench/run.py --warm``)."""
PEERS = ("xdist", "floor", "serial")
"""Arms the plugin is divided by, in the table's column order."""
# Arms that run no script (or are the reference): no CPU-over-floor figure for them.
_NOT_RUNS = ("floor", "collect", "startup")


@final
@dataclass(frozen=True, slots=True)
class ArmSummary:
    """One arm of one corpus: its command and the statistics of its successful runs."""

    key: str
    label: str
    workers: int
    argv: tuple[str, ...]
    samples: tuple[Sample, ...]

    @property
    def good(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def failed(self) -> int:
        return len(self.samples) - len(self.good)

    @property
    def disturbed(self) -> int:
        return sum(1 for s in self.good if s.disturbed)

    @staticmethod
    def _stat(values: Sequence[float], how: Literal["median", "min", "max"]) -> float | None:
        if not values:
            return None
        if how == "median":
            return statistics.median(values)
        return min(values) if how == "min" else max(values)

    @property
    def median_wall(self) -> float | None:
        return self._stat([s.wall for s in self.good], "median")

    @property
    def min_wall(self) -> float | None:
        return self._stat([s.wall for s in self.good], "min")

    @property
    def max_wall(self) -> float | None:
        return self._stat([s.wall for s in self.good], "max")

    @property
    def median_cpu(self) -> float | None:
        return self._stat([s.cpu for s in self.good], "median")

    @property
    def others_cores(self) -> float | None:
        """Median load the rest of the machine put on it during this arm's runs, in cores."""
        return self._stat([s.others_cpu / s.wall for s in self.good if s.wall > 0], "median")

    @property
    def peak_rss_mb(self) -> float | None:
        return self._stat([s.maxrss_mb for s in self.good], "max")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "workers": self.workers,
            "argv": list(self.argv),
            "median_wall": self.median_wall,
            "min_wall": self.min_wall,
            "max_wall": self.max_wall,
            "median_cpu": self.median_cpu,
            "peak_rss_mb": self.peak_rss_mb,
            "others_cores": self.others_cores,
            "failed_runs": self.failed,
            "disturbed_runs": self.disturbed,
            "samples": [asdict(s) for s in self.samples],
        }


@final
@dataclass(slots=True)
class CorpusSummary:
    name: str
    description: str
    count: int
    arms: dict[str, ArmSummary] = field(default_factory=dict)

    def wall(self, key: str) -> float | None:
        arm = self.arms.get(key)
        return arm.median_wall if arm else None

    def ratio(self, key: str, other: str) -> float | None:
        mine, theirs = self.wall(key), self.wall(other)
        if mine is None or theirs is None or theirs == 0:
            return None
        return mine / theirs

    def best_ratio(self, peer: str) -> float | None:
        """The lowest plugin/peer ratio any pytest-based runner can reach here.

        It cannot beat the floor plus pytest's own start-up (in an empty folder), paid before
        the first script is even known.
        """
        floor, startup, theirs = self.wall("floor"), self.wall("startup"), self.wall(peer)
        if floor is None or startup is None or not theirs:
            return None
        return (floor + startup) / theirs

    def cpu_over_floor_ms(self, key: str) -> float | None:
        """Extra CPU of this arm over the floor's, per script, in milliseconds."""
        arm, floor = self.arms.get(key), self.arms.get("floor")
        if arm is None or floor is None or arm.median_cpu is None or floor.median_cpu is None:
            return None
        return (arm.median_cpu - floor.median_cpu) / self.count * 1000

    def to_dict(self) -> dict[str, Any]:
        ratios = {
            f"{key}/{peer}": self.ratio(key, peer)
            for key in self.arms
            if key.startswith(PLUGIN)
            for peer in PEERS
            if peer in self.arms
        }
        return {
            "description": self.description,
            "count": self.count,
            "arms": {key: arm.to_dict() for key, arm in self.arms.items()},
            "ratios": ratios,
            "cpu_over_floor_ms_per_script": {
                key: self.cpu_over_floor_ms(key) for key in self.arms if key not in _NOT_RUNS
            },
        }


@final
@dataclass(frozen=True, slots=True)
class Ratio:
    """One figure of the summary: what was measured, and what bounds it where that is known."""

    check: str
    measured: float | None
    unit: str
    best: float | None = None
    """For the plugin against a peer: (floor + pytest start-up) / peer, the reachable best."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scale_per_script(corpora: dict[str, CorpusSummary], key: str) -> tuple[float, float] | None:
    """Median wall seconds per script at 500 and at 5,000 scripts, for one arm."""
    small, large = corpora.get("scale-500"), corpora.get("scale-5000")
    if small is None or large is None:
        return None
    a, b = small.wall(key), large.wall(key)
    if a is None or b is None:
        return None
    return a / small.count, b / large.count


def ratios(corpora: dict[str, CorpusSummary]) -> list[Ratio]:
    """The ratios that sum a run up, for the plugin with its default backend."""
    found: list[Ratio] = []
    for name, summary in corpora.items():
        if name.startswith("scale") or name == "skewed":
            continue
        for peer in ("xdist", "floor"):
            if PLUGIN in summary.arms and peer in summary.arms:
                found.append(
                    Ratio(
                        f"{name}: plugin / {peer}",
                        summary.ratio(PLUGIN, peer),
                        "x",
                        best=summary.best_ratio(peer),
                    )
                )
        if WARM in summary.arms and "floor" in summary.arms:
            found.append(Ratio(f"{name}: plugin warm / floor", summary.ratio(WARM, "floor"), "x"))

    skewed = corpora.get("skewed")
    if skewed is not None:
        found.append(Ratio("skewed: 2nd run / 1st run", skewed.ratio("second", "first"), "x"))
        found.append(
            Ratio(
                "skewed: 2nd run with --exec-order collection / 1st",
                skewed.ratio("collection-order", "first"),
                "x",
            )
        )

    per_script = scale_per_script(corpora, PLUGIN)
    if per_script:
        found.append(
            Ratio("scale: wall per script, 5,000 / 500", per_script[1] / per_script[0], "x")
        )
    large = corpora.get("scale-5000")
    if large is not None:
        plugin, collect = large.arms.get(PLUGIN), large.arms.get("collect")
        found.append(
            Ratio("scale: peak RSS at 5,000 scripts", plugin.peak_rss_mb if plugin else None, "MB")
        )
        found.append(
            Ratio(
                "scale: --collect-only of 5,000 scripts",
                collect.median_wall if collect else None,
                "s",
            )
        )
    return found


def _num(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _ratio_cell(corpus: CorpusSummary, key: str, peer: str) -> str:
    if not key.startswith(PLUGIN) or peer not in corpus.arms:
        return ""
    return _num(corpus.ratio(key, peer), 2, "x")


def machine_lines(machine: Machine, runs: int, warmup: int) -> list[str]:
    return [
        f"Machine: {machine.cpu_model}, {machine.cores} cores ({machine.usable_cores} usable), "
        f"{machine.memory_gb} GB, {machine.system}",
        f"Python {machine.python} ({machine.interpreter}); pytest {machine.pytest}, "
        f"pytest-xdist {machine.pytest_xdist}, pytest-codomyrmex-exec {machine.plugin} "
        f"at {machine.commit}{' + uncommitted changes' if machine.dirty else ''}",
        f"Date: {machine.date}; load average before: {machine.load_before}; "
        f"medians of {runs} interleaved runs after {warmup} warm-up round(s)",
    ]


def render(
    machine: Machine,
    corpora: dict[str, CorpusSummary],
    found: Sequence[Ratio],
    *,
    runs: int,
    warmup: int,
    load_after: str,
) -> str:
    """The full report: machine, the table of arms, the ratios."""
    lines = machine_lines(machine, runs, warmup)
    lines[-1] += f"; load average after: {load_after}"
    lines += [
        "",
        "| corpus | arm | workers | median s | min..max s | CPU s | CPU over floor ms/script "
        "| peak RSS MB | others' load, cores | /xdist | /floor | /serial |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for corpus in corpora.values():
        for arm in corpus.arms.values():
            spread = (
                "—"
                if arm.min_wall is None or arm.max_wall is None
                else f"{arm.min_wall:.2f}..{arm.max_wall:.2f}"
            )
            notes = [f"{arm.failed} failed"] if arm.failed else []
            notes += [f"{arm.disturbed} disturbed"] if arm.disturbed else []
            failed = f" ({', '.join(notes)})" if notes else ""
            over = corpus.cpu_over_floor_ms(arm.key) if arm.key not in _NOT_RUNS else None
            cells = [
                f"{corpus.name} ({corpus.count})",
                arm.label + failed,
                str(arm.workers),
                _num(arm.median_wall),
                spread,
                _num(arm.median_cpu),
                _num(over, 1),
                _num(arm.peak_rss_mb, 0),
                _num(arm.others_cores),
                *(_ratio_cell(corpus, arm.key, peer) for peer in PEERS),
            ]
            lines.append("| " + " | ".join(cells) + " |")

    per_script = scale_per_script(corpora, PLUGIN)
    floor_per_script = scale_per_script(corpora, "floor")
    if per_script:
        lines += [
            "",
            f"Scale, wall per script: plugin {per_script[0] * 1000:.2f} ms at 500, "
            f"{per_script[1] * 1000:.2f} ms at 5,000"
            + (
                f"; floor {floor_per_script[0] * 1000:.2f} ms and "
                f"{floor_per_script[1] * 1000:.2f} ms"
                if floor_per_script
                else ""
            ),
        ]

    lines += [
        "",
        "| ratio | measured | best possible: (floor + pytest start-up) / peer |",
        "|---|--:|--:|",
    ]
    for ratio in found:
        digits = 0 if ratio.unit == "MB" else 2
        unit = "x" if ratio.unit == "x" else f" {ratio.unit}"
        best = "" if ratio.best is None else _num(ratio.best, 2, "x")
        lines.append(f"| {ratio.check} | {_num(ratio.measured, digits, unit)} | {best} |")
    return "\n".join(lines)
