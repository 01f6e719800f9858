"""Draw the benchmark's JSON as a bar chart with matplotlib (the ``bench`` extra).

    python bench/chart.py [bench/results/latest.json] [-o chart.svg]

One panel per corpus, one bar per arm: the median wall time, an error bar from the fastest
to the slowest run, the floor (``xargs -P``) dashed. Each panel has its own scale, since the
corpora differ tenfold in length. The format follows the output's suffix (.svg, .png, .pdf).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write(document: Mapping[str, Any], path: Path) -> Path:
    """Draw ``document`` (``bench/run.py``'s JSON) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
    matplotlib.rcParams["svg.hashsalt"] = "bench"  # the same numbers give the same file
    import matplotlib.pyplot as plt

    corpora = {
        name: {k: arm for k, arm in corpus["arms"].items() if arm.get("median_wall") is not None}
        for name, corpus in document["corpora"].items()
    }
    corpora = {name: arms for name, arms in corpora.items() if arms}
    heights = [len(arms) + 1.5 for arms in corpora.values()] or [1.0]
    figure, axes = plt.subplots(
        len(heights),
        1,
        figsize=(10, 0.32 * sum(heights) + 1.2),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for axis, (name, arms) in zip(axes[:, 0], corpora.items(), strict=False):
        labels = [str(arm["label"]) for arm in arms.values()]
        medians = [float(arm["median_wall"]) for arm in arms.values()]
        spread = [
            [m - float(arm["min_wall"]) for m, arm in zip(medians, arms.values(), strict=True)],
            [float(arm["max_wall"]) - m for m, arm in zip(medians, arms.values(), strict=True)],
        ]
        colours = [_colour(key) for key in arms]
        axis.barh(labels, medians, xerr=spread, color=colours, error_kw={"linewidth": 0.8})
        axis.invert_yaxis()
        for y, (median, arm) in enumerate(zip(medians, arms.values(), strict=True)):
            axis.annotate(
                f"{median:.2f} s",
                (max(median, float(arm["max_wall"])), y),
                xytext=(4, -3),
                textcoords="offset points",
            )
        floor = arms.get("floor", {}).get("median_wall")
        if floor:
            axis.axvline(float(floor), color="#38a169", linestyle="--", linewidth=1)
        description = document["corpora"][name]["description"]
        axis.set_title(f"{name}: {description}", loc="left", fontsize=10, fontweight="bold")
        axis.set_xlim(0, max(float(arm["max_wall"]) for arm in arms.values()) * 1.2)
        axis.tick_params(labelsize=8)
    host = document.get("machine", {})
    runs = document.get("settings", {}).get("runs", "?")
    axes[-1, 0].set_xlabel(
        f"wall time in s: median of {runs} runs, error bar from the fastest to the slowest, "
        "floor dashed",
        fontsize=8,
    )
    figure.suptitle(
        f"pytest-codomyrmex-exec benchmark: {host.get('cpu_model', '?')}, "
        f"{host.get('cores', '?')} cores, Python {host.get('python', '?')}, "
        f"{host.get('date', '?')}",
        fontsize=9,
        x=0.01,
        ha="left",
    )
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    return path


def _colour(key: str) -> str:
    if key == "floor":
        return "#38a169"
    if key in {"xdist", "serial"}:
        return "#dd6b20"
    if key.startswith("plugin") or key in ("first", "second", "collection-order"):
        return "#2b6cb0"
    return "#a0aec0"  # pytest's own start-up and collection


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw bench/run.py's JSON as a chart.")
    parser.add_argument("source", nargs="?", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("-o", "--output", type=Path, help="default: the source with .svg")
    args = parser.parse_args(argv)
    document = json.loads(args.source.read_text())
    print(write(document, args.output or args.source.with_suffix(".svg")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
