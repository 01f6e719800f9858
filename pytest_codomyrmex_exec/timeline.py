"""The run as a picture: one self-contained HTML page drawn from a results stream.

``--exec-timeline PATH`` writes it at the end of a run, and ``python -m
pytest_codomyrmex_exec timeline RESULTS.jsonl`` draws it from a results file
(``--exec-report``) of any earlier run: both from the same records (docs/report.md), so the
same run gives the same page. Each script is a bar from its ``start`` to its ``end`` in a
lane of the worker that ran it, coloured by outcome; the page has no remote asset (its CSS
and script are inline, it draws on a canvas) and opens from a file or a CI artifact.

This module imports neither pytest nor the plugin: the command uses it on its own.
"""

from __future__ import annotations

import bisect
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_SCHEMA = "pytest-codomyrmex-exec/report"
"""The ``schema`` of a results file's header line."""

KINDS = ("passed", "failed", "timeout", "error", "skipped", "flaky")
"""The colours of the bars: what became of each script, as a reader of the picture asks."""

CRITICAL_GAP = 0.25
"""Seconds between one script's end and the next one's start for the critical path to join
them: within this, the later script was waiting for the earlier one's slot (the session sees
an end and the start it allows a few milliseconds apart, more on a loaded machine)."""


class ReportFileError(Exception):
    """A results file that cannot be drawn; the message names the file (and line)."""


def read_report(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the script lines of a results file.

    A run killed while writing leaves its last line incomplete: that line is left out.
    Anything else that is not a results file is a :class:`ReportFileError`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFileError(f"{path}: cannot read it: {exc}") from None
    rows = text.splitlines()
    parsed: list[dict[str, Any]] = []
    for number, row in enumerate(rows, 1):
        if not row.strip():
            continue
        try:
            value = json.loads(row)
        except json.JSONDecodeError as exc:
            if number == len(rows) and not text.endswith("\n"):
                break  # cut off by a kill in the middle of the write
            raise ReportFileError(f"{path}:{number}: not a JSON line ({exc})") from None
        if not parsed and (not isinstance(value, dict) or value.get("schema") != REPORT_SCHEMA):
            break  # not the header
        if not isinstance(value, dict):
            raise ReportFileError(f"{path}:{number}: not a JSON object")
        if parsed:  # a script's line: what its bar needs
            _check_times(value, f"{path}:{number}")
        parsed.append(value)
    if not parsed:
        raise ReportFileError(
            f"{path}: not a results file of --exec-report (its first line is not a header "
            f"with schema {REPORT_SCHEMA!r})"
        )
    header, lines = parsed[0], parsed[1:]
    if not lines:
        raise ReportFileError(f"{path}: no script record (no script finished in that run)")
    return header, lines


def _kind(line: Mapping[str, Any]) -> str:
    """The colour of a script's bar, from its record."""
    status, outcome = line.get("status"), line.get("outcome")
    if line.get("flaky") is True or "flaky" in (status, outcome):
        return "flaky"
    if status == "timeout":
        return "timeout"
    if status in ("skipped", "cancelled") or outcome in ("skipped", "xfailed"):
        return "skipped"
    if status == "error" or outcome == "error":
        return "error"
    if outcome in ("failed", "rerun") or status == "failed":
        return "failed"
    return "passed"


def _check_times(line: Mapping[str, Any], where: str) -> None:
    for key, may_be_null in (("start", True), ("end", False)):
        value = line.get(key)
        if value is None and may_be_null:
            continue  # it never started (cancelled first, or no resource for it)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReportFileError(
                f"{where}: no {key!r} time in the line of {line.get('nodeid', '?')}: the file "
                "was written by a version of the plugin from before the timeline"
            )
        if not math.isfinite(value):
            raise ReportFileError(f"{where}: {key!r} is {value}, not a time")


def _group(line: Mapping[str, Any]) -> str:
    """Where a script ran: the pytest-xdist worker, the Dask worker (``host``), or pytest."""
    where = [str(line[key]) for key in ("worker", "host") if line.get(key)]
    return " ".join(where) or "pytest"


def _pack(bars: list[dict[str, Any]]) -> list[str]:
    """Give each bar (sorted by start) a lane: per place it ran, the lowest slot free at its
    start. As many lanes as scripts ran there at once, so never more than its workers."""
    slot_ends: dict[str, list[float]] = {}
    for bar in bars:
        ends = slot_ends.setdefault(bar["group"], [])
        slot = next((i for i, end in enumerate(ends) if end <= bar["start"]), len(ends))
        if slot == len(ends):
            ends.append(bar["end"])
        else:
            ends[slot] = bar["end"]
        bar["slot"] = slot
    labels: list[str] = []
    index: dict[tuple[str, int], int] = {}
    for group in sorted(slot_ends):
        count = len(slot_ends[group])
        for slot in range(count):
            index[(group, slot)] = len(labels)
            labels.append(f"{group} · slot {slot}" if count > 1 else group)
    for bar in bars:
        bar["lane"] = index[(bar["group"], bar["slot"])]
    return labels


def critical_path(starts: Sequence[float], ends: Sequence[float]) -> list[int]:
    """The chain of scripts that ended the run, from its first to the one that ended last.

    It begins with the script that ended last; before each script comes the one that ended
    last at or before its start, when that end is at most :data:`CRITICAL_GAP` earlier (the
    script was waiting for that slot to come free). A script that started with no such end
    before it (at the run's start, or after an idle moment) begins the chain. Shortening any
    script on the chain shortens the run, unless another chain was about as long.
    """
    if not ends:
        return []
    by_end = sorted(range(len(ends)), key=lambda i: (ends[i], starts[i], i))
    sorted_ends = [ends[i] for i in by_end]
    chain = [by_end[-1]]
    taken = {by_end[-1]}
    while True:
        current = chain[-1]
        position = bisect.bisect_right(sorted_ends, starts[current]) - 1
        while position >= 0 and by_end[position] in taken:
            position -= 1  # itself, when it lasted no time
        if position < 0 or starts[current] - sorted_ends[position] > CRITICAL_GAP:
            break
        chain.append(by_end[position])
        taken.add(by_end[position])
    return chain[::-1]


def timeline_data(header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the page draws, in columns (one entry per script line, in start order): compact
    for runs of many thousand scripts."""
    bars: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        end, start = float(line["end"]), line["start"]
        bars.append(
            {
                "index": index,
                "start": end if start is None else min(float(start), end),
                "end": end,
                "group": _group(line),
                "line": line,
            }
        )
    bars.sort(key=lambda bar: (bar["start"], bar["end"], bar["index"]))
    lanes = _pack(bars)
    starts = [bar["start"] for bar in bars]
    ends = [bar["end"] for bar in bars]
    options = header.get("options")
    options = options if isinstance(options, Mapping) else {}

    def column(key: str, default: object = None) -> list[Any]:
        return [bar["line"].get(key, default) for bar in bars]

    return {
        "started": header.get("started"),
        "parallel": options.get("parallel"),
        "workers": options.get("workers"),
        "backend": options.get("backend"),
        "lanes": lanes,
        "kinds": list(KINDS),
        "lane": [bar["lane"] for bar in bars],
        "start": starts,
        "end": ends,
        "kind": [KINDS.index(_kind(bar["line"])) for bar in bars],
        "name": column("nodeid", "?"),
        "status": column("status"),
        "outcome": column("outcome"),
        "duration": column("duration"),
        "exit_code": column("exit_code"),
        "attempts": column("attempts"),
        "message": column("message"),
        "stdout": column("stdout_tail", ""),
        "stderr": column("stderr_tail", ""),
        "critical": critical_path(starts, ends),
    }


def _script_safe_json(value: object) -> str:
    """JSON that cannot end the ``<script>`` element holding it, whatever the scripts
    printed: ``<``, ``>`` and ``&`` become ``\\u`` escapes, which JSON.parse reads back."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> str:
    """The page for a run: its header line and its script lines, as the results file has them."""
    data = timeline_data(header, lines)
    count = len(lines)
    title = f"Timeline: {count} script{'s' if count != 1 else ''}"
    if header.get("started"):
        title += f", started {header['started']}"
    return _PAGE.replace("__TITLE__", html.escape(title)).replace(
        "__DATA__", _script_safe_json(data)
    )


def write_timeline(
    path: str | Path, header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]
) -> None:
    """Write the page of a run to ``path`` (``OSError`` if it cannot)."""
    Path(path).write_text(render(header, lines), encoding="utf-8")


# The page: inline CSS and script only, system fonts, no link or source of any kind, so it
# shows the same from a CI artifact on a machine without a network. Output tails reach the
# page only through textContent: never parsed as HTML.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  :root { color-scheme: light; }
  body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 12px 16px;
         color: #1d2127; background: #fff; }
  h1 { font-size: 16px; margin: 0 0 4px; }
  #facts { color: #555; margin-bottom: 6px; }
  #bar { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin: 6px 0; }
  .key { display: inline-flex; align-items: center; gap: 5px; }
  .swatch { width: 14px; height: 10px; border-radius: 2px; display: inline-block; }
  .swatch.critical { background: #fff; outline: 2px solid #111; outline-offset: -2px; }
  button { font: inherit; padding: 1px 8px; }
  #hint { color: #777; }
  #chart { display: block; width: 100%; border: 1px solid #ddd; cursor: grab; }
  #chart.dragging { cursor: grabbing; }
  #tip { position: fixed; pointer-events: none; background: #1d2127; color: #fff;
         padding: 5px 8px; border-radius: 4px; font-size: 12px; display: none;
         max-width: 60ch; z-index: 2; white-space: pre-wrap; }
  #details { margin-top: 10px; }
  #details h2 { font-size: 14px; margin: 0 0 4px; word-break: break-all; }
  #details pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 6px 8px;
                 max-height: 22em; overflow: auto; white-space: pre-wrap; margin: 4px 0; }
  #details .label { color: #555; margin-top: 6px; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="facts"></div>
<div id="bar">
  <span id="legend"></span>
  <button id="zoom-in" type="button">zoom in</button>
  <button id="zoom-out" type="button">zoom out</button>
  <button id="reset" type="button">whole run</button>
  <span id="hint">wheel: zoom &middot; drag: pan &middot; click a bar: its output</span>
</div>
<canvas id="chart"></canvas>
<div id="tip"></div>
<section id="details"><p id="none-chosen">Click a bar to see its output.</p></section>
<script type="application/json" id="timeline-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("timeline-data").textContent);
  var COLOURS = { passed: "#3a9d5d", failed: "#d9453d", timeout: "#ef8a17",
                  error: "#8e44ad", skipped: "#a3a8ae", flaky: "#e3c02a" };
  var count = D.start.length;
  var span = 0;
  for (var i = 0; i < count; i++) { span = Math.max(span, D.end[i]); }
  span = Math.max(span, 0.001);
  var laneCount = D.lanes.length;
  var LABEL_W = 170, AXIS_H = 36, LANE_H = laneCount > 40 ? 12 : 24, BAR_PAD = 3;
  var critical = new Uint8Array(count);
  D.critical.forEach(function (k) { critical[k] = 1; });
  var byLane = D.lanes.map(function () { return []; });
  for (i = 0; i < count; i++) { byLane[D.lane[i]].push(i); }  // start order within each
  var startedMs = D.started ? Date.parse(D.started) : NaN;
  var canvas = document.getElementById("chart");
  var ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip");
  var view = { t0: 0, t1: span * 1.02 };
  var chosen = -1;

  function plotWidth() { return Math.max(canvas.clientWidth - LABEL_W - 8, 50); }
  function xOf(t) { return LABEL_W + (t - view.t0) / (view.t1 - view.t0) * plotWidth(); }
  function tOf(x) { return view.t0 + (x - LABEL_W) / plotWidth() * (view.t1 - view.t0); }
  function secs(t) {
    if (t === null || t === undefined) { return "?"; }
    if (t >= 100) { return t.toFixed(0) + " s"; }
    return t >= 1 ? t.toFixed(2) + " s" : (t * 1000).toFixed(1) + " ms";
  }
  function clock(t, fine) {
    if (isNaN(startedMs)) { return ""; }
    var iso = new Date(startedMs + t * 1000).toISOString();
    return iso.slice(11, fine ? 23 : 19);
  }
  function niceStep(raw) {
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var k = 0; k < steps.length; k++) {
      if (steps[k] * power >= raw) { return steps[k] * power; }
    }
    return 10 * power;
  }

  function draw() {
    var dpr = window.devicePixelRatio || 1;
    var cssW = canvas.clientWidth, cssH = AXIS_H + laneCount * LANE_H + 4;
    canvas.style.height = cssH + "px";
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.font = "11px system-ui, sans-serif";
    for (var l = 0; l < laneCount; l++) {
      ctx.fillStyle = l % 2 ? "#f7f8fa" : "#ffffff";
      ctx.fillRect(0, AXIS_H + l * LANE_H, cssW, LANE_H);
    }
    var step = niceStep((view.t1 - view.t0) / Math.max(plotWidth() / 110, 1));
    var digits = Math.max(0, -Math.floor(Math.log10(step)));
    ctx.textBaseline = "top";
    for (var t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      var x = xOf(t);
      ctx.fillStyle = "#e3e6ea";
      ctx.fillRect(x, AXIS_H - 4, 1, laneCount * LANE_H + 4);
      if (x + 3 + ctx.measureText(clock(t, step < 1)).width > cssW) { continue; }
      ctx.fillStyle = "#333";
      ctx.fillText(t.toFixed(digits) + " s", x + 3, 3);
      ctx.fillStyle = "#888";
      ctx.fillText(clock(t, step < 1), x + 3, 17);
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, AXIS_H, cssW - LABEL_W, laneCount * LANE_H);
    ctx.clip();
    var barH = LANE_H - 2 * BAR_PAD;
    for (var k = 0; k < D.kinds.length; k++) {
      ctx.fillStyle = COLOURS[D.kinds[k]];
      for (var b = 0; b < count; b++) {
        if (D.kind[b] !== k || D.end[b] < view.t0 || D.start[b] > view.t1) { continue; }
        var x0 = xOf(D.start[b]), width = Math.max(xOf(D.end[b]) - x0, 1.5);
        ctx.fillRect(x0, AXIS_H + D.lane[b] * LANE_H + BAR_PAD, width, barH);
      }
    }
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#111";
    D.critical.forEach(function (c) { outline(c); });
    if (chosen >= 0) { ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 3; outline(chosen); }
    ctx.restore();
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, AXIS_H, LABEL_W - 2, laneCount * LANE_H);
    ctx.fillStyle = "#333";
    ctx.textBaseline = "middle";
    for (l = 0; l < laneCount; l++) {
      ctx.fillText(fit(D.lanes[l], LABEL_W - 10), 4, AXIS_H + l * LANE_H + LANE_H / 2);
    }
    ctx.fillStyle = "#bbb";
    ctx.fillRect(0, AXIS_H - 1, cssW, 1);
  }
  function outline(b) {
    var x0 = xOf(D.start[b]), width = xOf(D.end[b]) - x0, top = AXIS_H + D.lane[b] * LANE_H;
    if (width >= 8) {
      ctx.strokeRect(x0, top + BAR_PAD, width, LANE_H - 2 * BAR_PAD);
    } else {  // an outline would hide a narrow bar's colour: a line under it instead
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillRect(x0, top + LANE_H - BAR_PAD, Math.max(width, 1.5), 2);
    }
  }
  function fit(text, width) {
    if (ctx.measureText(text).width <= width) { return text; }
    while (text.length > 1 && ctx.measureText("\\u2026" + text).width > width) {
      text = text.slice(1);
    }
    return "\\u2026" + text;
  }

  function barAt(x, y) {
    var lane = Math.floor((y - AXIS_H) / LANE_H);
    if (x < LABEL_W || lane < 0 || lane >= laneCount) { return -1; }
    var t = tOf(x), slack = 3 * (view.t1 - view.t0) / plotWidth();
    var bars = byLane[lane], lo = 0, hi = bars.length - 1, found = -1;
    while (lo <= hi) {  // the last bar starting before the pointer (with a few pixels' slack)
      var mid = (lo + hi) >> 1;
      if (D.start[bars[mid]] <= t + slack) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    for (var j = found; j >= 0 && j > found - 3; j--) {
      if (D.end[bars[j]] >= t - slack) { return bars[j]; }
    }
    return -1;
  }
  function pointer(event) {
    var box = canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  function showTip(b, event) {
    if (b < 0) { tip.style.display = "none"; return; }
    var exit = D.exit_code[b] === null ? "none" : String(D.exit_code[b]);
    tip.textContent = D.name[b] + "\\n" + D.kinds[D.kind[b]] +
      (critical[b] ? " (critical path)" : "") +
      "\\nduration " + secs(D.duration[b]) + ", exit code " + exit +
      "\\nworker " + D.lanes[D.lane[b]] +
      "\\nfrom " + secs(D.start[b]) + " to " + secs(D.end[b]) + " into the run";
    tip.style.display = "block";
    var left = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = left + "px";
    tip.style.top = (event.clientY + 14) + "px";
  }

  function choose(b) {
    chosen = b;
    draw();
    var details = document.getElementById("details");
    details.textContent = "";
    if (b < 0) { return; }
    function add(tag, text, cls) {
      var node = document.createElement(tag);
      node.textContent = text;
      if (cls) { node.className = cls; }
      details.appendChild(node);
      return node;
    }
    add("h2", D.name[b]);
    add("div", D.kinds[D.kind[b]] + " (status " + D.status[b] + ", pytest: " + D.outcome[b] +
        "), exit code " + (D.exit_code[b] === null ? "none" : D.exit_code[b]) + ", " +
        secs(D.duration[b]) + ", attempts " + D.attempts[b] + ", worker " + D.lanes[D.lane[b]]);
    if (D.message[b]) { add("div", D.message[b]); }
    add("div", "stdout (its end)", "label");
    add("pre", D.stdout[b] || "(nothing)");
    add("div", "stderr (its end)", "label");
    add("pre", D.stderr[b] || "(nothing)");
  }

  function zoom(factor, around) {
    var width = Math.min(Math.max((view.t1 - view.t0) * factor, 1e-4), span * 4);
    var ratio = (around - view.t0) / (view.t1 - view.t0);
    view.t0 = around - ratio * width;
    view.t1 = view.t0 + width;
    draw();
  }

  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    zoom(Math.exp(event.deltaY * 0.0015), tOf(pointer(event).x));
  }, { passive: false });
  var drag = null;
  canvas.addEventListener("mousedown", function (event) {
    drag = { x: pointer(event).x, t0: view.t0, t1: view.t1, moved: false };
    canvas.classList.add("dragging");
  });
  window.addEventListener("mousemove", function (event) {
    var at = pointer(event);
    if (drag) {
      var dt = (at.x - drag.x) / plotWidth() * (drag.t1 - drag.t0);
      drag.moved = drag.moved || Math.abs(at.x - drag.x) > 3;
      view.t0 = drag.t0 - dt;
      view.t1 = drag.t1 - dt;
      draw();
      tip.style.display = "none";
    } else if (event.target === canvas) {
      showTip(barAt(at.x, at.y), event);
    } else {
      tip.style.display = "none";
    }
  });
  window.addEventListener("mouseup", function (event) {
    if (drag && !drag.moved && event.target === canvas) {
      var at = pointer(event);
      choose(barAt(at.x, at.y));
    }
    drag = null;
    canvas.classList.remove("dragging");
  });
  canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  document.getElementById("zoom-in").onclick = function () { zoom(0.5, (view.t0 + view.t1) / 2); };
  document.getElementById("zoom-out").onclick = function () { zoom(2, (view.t0 + view.t1) / 2); };
  document.getElementById("reset").onclick = function () {
    view.t0 = 0; view.t1 = span * 1.02; draw();
  };
  window.addEventListener("resize", draw);

  var counts = D.kinds.map(function () { return 0; });
  for (i = 0; i < count; i++) { counts[D.kind[i]] += 1; }
  var legend = document.getElementById("legend");
  function key(swatchClass, colour, text) {
    var item = document.createElement("span");
    item.className = "key";
    var swatch = document.createElement("span");
    swatch.className = "swatch " + swatchClass;
    if (colour) { swatch.style.background = colour; }
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(text));
    legend.appendChild(item);
    legend.appendChild(document.createTextNode(" "));
  }
  D.kinds.forEach(function (kind, k) {
    if (counts[k]) { key("", COLOURS[kind], kind + " " + counts[k]); }
  });
  var criticalTime = 0;
  D.critical.forEach(function (c) { criticalTime += D.end[c] - D.start[c]; });
  key("critical", null, "critical path: " + D.critical.length + " script" +
      (D.critical.length === 1 ? "" : "s") + ", " + secs(criticalTime));
  var facts = [count + " script" + (count === 1 ? "" : "s") + " in " + secs(span)];
  if (D.started) { facts.push("started " + D.started); }
  if (D.parallel) {
    facts.push("--exec-parallel, " + D.backend + " backend, " + D.workers + " workers");
  }
  facts.push(laneCount + " lane" + (laneCount === 1 ? "" : "s"));
  document.getElementById("facts").textContent = facts.join(" \\u00b7 ");
  draw();
  if (location.hash.length > 1) {  // page.html#x_script.py::x_script opens with its output
    choose(D.name.indexOf(decodeURIComponent(location.hash.slice(1))));
  }
})();
</script>
</body>
</html>
"""
