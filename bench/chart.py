"""Render the benchmark's JSON as a bar chart in plain SVG (no plotting library needed).

    python bench/chart.py [bench/results/latest.json] [-o bench/results/latest.svg]

One panel per corpus, one bar per arm: the median wall time, with a thin line from the fastest
to the slowest run. Each panel has its own scale, since the corpora differ tenfold in length.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

WIDTH = 1040
LABEL_WIDTH = 330
BAR_SPACE = 400
RANGE_ROOM = 1.12
"""How far past the longest median a run's range may reach before it is cut."""
ROW = 22
BAR = 14
PANEL_GAP = 18
TITLE = 22

_COLOURS = {
    "plugin": "#2b6cb0",
    "xdist": "#dd6b20",
    "floor": "#38a169",
    "serial": "#a0aec0",
    "collect": "#805ad5",
    "first": "#718096",
    "second": "#2b6cb0",
    "collection-order": "#90cdf4",
}
_OTHER_PLUGIN = "#63b3ed"


def _colour(key: str) -> str:
    if key in _COLOURS:
        return _COLOURS[key]
    return _OTHER_PLUGIN if key.startswith("plugin-") else "#4a5568"


def _text(x: float, y: float, content: str, *, anchor: str = "start", weight: str = "") -> str:
    bold = f' font-weight="{weight}"' if weight else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{bold}>{escape(content)}</text>'


def _panel(name: str, corpus: Mapping[str, Any], top: float) -> tuple[list[str], float]:
    """SVG elements of one corpus's panel, and the height it takes."""
    arms: Mapping[str, Mapping[str, Any]] = corpus["arms"]
    measured = {k: a for k, a in arms.items() if a.get("median_wall") is not None}
    parts = [_text(10, top + 15, f"{name}: {corpus['description']}", weight="bold")]
    if not measured:
        return [*parts, _text(LABEL_WIDTH, top + 15 + ROW, "no successful runs")], TITLE + ROW
    # Scaled to the longest median, not the slowest run: one run slowed by someone else's
    # work must not squash the panel. Longer ranges are cut at the panel's edge.
    longest = max(float(a["median_wall"]) for a in measured.values())
    scale = BAR_SPACE / longest if longest > 0 else 0.0
    edge = BAR_SPACE * RANGE_ROOM
    floor = arms.get("floor", {}).get("median_wall")
    y = top + TITLE
    for key, arm in measured.items():
        median = float(arm["median_wall"])
        low, high = float(arm["min_wall"]), float(arm["max_wall"])
        parts.append(_text(LABEL_WIDTH - 8, y + BAR - 2, str(arm["label"]), anchor="end"))
        parts.append(
            f'<rect x="{LABEL_WIDTH}" y="{y:.1f}" width="{max(median * scale, 1):.1f}" '
            f'height="{BAR}" fill="{_colour(key)}"/>'
        )
        middle = y + BAR / 2
        reach = min(high * scale, edge)
        parts.append(
            f'<line x1="{LABEL_WIDTH + low * scale:.1f}" y1="{middle:.1f}" '
            f'x2="{LABEL_WIDTH + reach:.1f}" y2="{middle:.1f}" stroke="#1a202c"/>'
        )
        notes = []
        if key.startswith("plugin") and floor:
            notes.append(f"{median / float(floor):.2f}x floor")
        if high * scale > edge:
            notes.append(f"slowest run {high:.1f} s")
        value = f"{median:.2f} s" + (f"  ({'; '.join(notes)})" if notes else "")
        parts.append(_text(LABEL_WIDTH + max(median * scale, reach) + 6, y + BAR - 2, value))
        y += ROW
    if floor:
        # The floor as a dashed rule across the panel: how far each bar is from it shows.
        x = LABEL_WIDTH + float(floor) * scale
        first, last = top + TITLE - 3, y - ROW + BAR + 3
        parts.append(
            f'<line x1="{x:.1f}" y1="{first:.1f}" x2="{x:.1f}" y2="{last:.1f}" '
            'stroke="#38a169" stroke-dasharray="4 3"/>'
        )
    return parts, y - top


def render(document: Mapping[str, Any]) -> str:
    """The whole chart as an SVG document."""
    host = document.get("machine", {})
    runs = document.get("settings", {}).get("runs", "?")
    heading = "pytest-codomyrmex-exec: median wall time (lower is better)"
    machine = (
        f"{host.get('cpu_model', '?')}, {host.get('cores', '?')} cores, "
        f"Python {host.get('python', '?')}, pytest {host.get('pytest', '?')}, "
        f"{host.get('date', '?')}"
    )
    legend = f"median of {runs} runs; thin line: fastest to slowest run; dashed: the floor"
    body = [
        _text(10, 22, heading, weight="bold"),
        _text(10, 42, machine),
        _text(10, 60, legend),
    ]
    top = 76.0
    for name, corpus in document.get("corpora", {}).items():
        parts, height = _panel(name, corpus, top)
        body += parts
        top += height + PANEL_GAP
    height = int(top + 10)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
            f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def write(document: Mapping[str, Any], path: Path) -> Path:
    path.write_text(render(document))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    here = Path(__file__).resolve().parent / "results"
    parser = argparse.ArgumentParser(description="Render bench/run.py's JSON as an SVG chart.")
    parser.add_argument("source", nargs="?", type=Path, default=here / "latest.json")
    parser.add_argument("-o", "--output", type=Path, help="default: the source with .svg")
    args = parser.parse_args(argv)
    document = json.loads(args.source.read_text())
    output = write(document, args.output or args.source.with_suffix(".svg"))
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
