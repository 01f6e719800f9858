"""The run as a picture (``--exec-timeline``, ``python -m pytest_codomyrmex_exec timeline``):
the page of a real run, its redraw from the results file, and the page in a real browser."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import RUN_TIMEOUT, ExecPytester, Mode

from pytest_codomyrmex_exec.__main__ import main
from pytest_codomyrmex_exec.timeline import CRITICAL_GAP, critical_path, render

CHROMIUM = shutil.which("chromium")
CHROMIUM_DEADLINE = 90.0
"""Seconds one headless Chromium run may take on a loaded machine before the test fails."""

SCRIPT_TAG_OUTPUT = "</script><script>alert(1)</script>"


def _write_project(px: ExecPytester) -> None:
    """Two passing scripts, one failing that prints markup, one that times out, and one that
    passes on its second try (flaky)."""
    px.script("calm_script.py", "import time\ntime.sleep(0.3)\nprint('calm')\n")
    px.script("brief_script.py", "import time\ntime.sleep(0.2)\nprint('brief')\n")
    px.script(
        "markup_script.py",
        f"import time\ntime.sleep(0.2)\nprint({SCRIPT_TAG_OUTPUT!r})\nraise SystemExit(3)\n",
    )
    px.script("stuck_script.py", "# pytest.mark.exec(timeout=0.5)\nimport time\ntime.sleep(30)\n")
    px.script(
        "wobbly_script.py",
        """\
        # pytest.mark.exec(max_runs=2)
        import pathlib, sys
        first = pathlib.Path("tried")
        if not first.exists():
            first.touch()
            sys.exit(1)
        """,
    )


NODEIDS = {
    "calm_script.py::calm_script": "passed",
    "brief_script.py::brief_script": "passed",
    "markup_script.py::markup_script": "failed",
    "stuck_script.py::stuck_script": "timeout",
    "wobbly_script.py::wobbly_script": "flaky",
}


def _data(page: str) -> dict[str, Any]:
    """What the page draws: the JSON block its script reads."""
    found = re.search(
        r'<script type="application/json" id="timeline-data">(.*?)</script>', page, re.S
    )
    assert found, "no data block in the page"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def _run_timeline_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_codomyrmex_exec", "timeline", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


@pytest.mark.modes("inline", "process", "xdist")
def test_timeline_of_a_real_run(px: ExecPytester, mode: Mode) -> None:
    _write_project(px)
    page_path = px.path / "timeline.html"
    result = px.run(
        *mode, "--exec-workers", "2", *px.report_args(), "--exec-timeline", str(page_path)
    )
    result.assert_outcomes(passed=3, failed=2)
    assert f"codomyrmex-exec: the timeline of 5 scripts is in {page_path}\n" in result.stdout.str()
    page = page_path.read_text(encoding="utf-8")

    # Self-contained: nothing is fetched, and what the scripts printed cannot become markup.
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<link|\ssrc=|@import|url\(", page)
    assert SCRIPT_TAG_OUTPUT not in page
    assert page.count("<script") == 2  # the data block and the page's own script

    data = _data(page)
    names = data["name"]
    assert sorted(names) == sorted(NODEIDS), "one bar per script"
    kinds = {name: data["kinds"][kind] for name, kind in zip(names, data["kind"], strict=True)}
    assert kinds == NODEIDS
    markup = names.index("markup_script.py::markup_script")
    assert data["stdout"][markup] == SCRIPT_TAG_OUTPUT + "\n"
    assert data["exit_code"][markup] == 3

    lanes: list[str] = data["lanes"]
    if mode.xdist:
        assert 1 <= len(lanes) <= 2
        assert all(re.fullmatch(r"gw[01]", lane) for lane in lanes), lanes
    elif mode.parallel:
        # Four of the scripts last 0.2 s or more: on two workers two ran at once, never three.
        assert lanes == ["pytest · slot 0", "pytest · slot 1"]
    else:
        assert lanes == ["pytest"]
    bars = sorted(zip(data["lane"], data["start"], data["end"], names, strict=True))
    for (lane, start, end, name), following in zip(bars, [*bars[1:], None], strict=True):
        assert 0 < start <= end, name
        if following is not None and following[0] == lane:
            assert end <= following[1], f"{name} overlaps {following[3]} in its lane"
    stuck = names.index("stuck_script.py::stuck_script")
    assert data["end"][stuck] - data["start"][stuck] > 0.3, "timed out after 0.5 s"

    chain = data["critical"]
    assert chain
    assert data["end"][chain[-1]] == max(data["end"]), "it ends with the last end"
    for before, after in itertools.pairwise(chain):
        assert 0 <= data["start"][after] - data["end"][before] <= CRITICAL_GAP

    # The results file holds what the page drew: redrawn from it, the page is the same.
    lines = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    assert all(0 < line["start"] <= line["end"] for line in lines)
    assert all(line["host"] is None for line in lines)
    redraw = px.path / "redraw.html"
    done = _run_timeline_command(str(px.results_path), "-o", str(redraw))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"timeline: 5 scripts from {px.results_path} in {redraw}\n"
    assert redraw.read_text(encoding="utf-8") == page


def test_timeline_command_names_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = {"schema": "pytest-codomyrmex-exec/report", "version": 1, "started": "x"}
    line = {"nodeid": "a_script.py::a_script", "status": "passed", "outcome": "passed"}

    def results(name: str, *rows: object, tail: str = "") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)
        return path

    with pytest.raises(SystemExit) as usage:
        main(["timeline", str(tmp_path / "nowhere.jsonl")])
    assert usage.value.code == 2
    assert f"no such results file: {tmp_path / 'nowhere.jsonl'}" in capsys.readouterr().err

    cases = {
        results("empty.jsonl", header): "empty.jsonl: no script record",
        results("durations.jsonl", {"version": 1}, line): "durations.jsonl: not a results file",
        results("broken.jsonl", header, tail="{oops\n"): "broken.jsonl:2: not a JSON line",
        results("old.jsonl", header, line): "old.jsonl:2: no 'end' time in the line of a_scr",
        results("nan.jsonl", header, {**line, "start": 0, "end": float("nan")}): (
            "nan.jsonl:2: 'end' is nan, not a time"
        ),
    }
    for path, expected in cases.items():
        assert main(["timeline", str(path)]) == 1, path
        err = capsys.readouterr().err
        assert err.startswith(f"timeline: {tmp_path}/{expected}"), err
        assert not path.with_suffix(".html").exists()

    # A run killed while writing leaves its last line cut: the rest is drawn, to RESULTS.html,
    # by a command that imports no pytest.
    cut = results("cut.jsonl", header, {**line, "start": 0.5, "end": 1.0}, tail='{"nodeid": "b')
    code = (
        "import sys\n"
        "from pytest_codomyrmex_exec.__main__ import main\n"
        f"status = main(['timeline', {str(cut)!r}])\n"
        "print(status, any(m.split('.')[0] in ('pytest', '_pytest') for m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == [
        f"timeline: 1 script from {cut} in {cut.with_suffix('.html')}",
        "0 False",
    ], done.stderr
    assert _data(cut.with_suffix(".html").read_text())["name"] == ["a_script.py::a_script"]


def test_critical_path_is_the_chain_of_waits_back_from_the_last_end() -> None:
    # Two slots: a (0-2) then c (2.01-5) on one; b (0-1), d (1.02-3) and, after an idle
    # second, e (4-4.5) on the other. The run ends with c, which waited for a.
    starts = [0.0, 0.0, 2.01, 1.02, 4.0]
    ends = [2.0, 1.0, 5.0, 3.0, 4.5]
    assert critical_path(starts, ends) == [0, 2]
    # Had e ended last and c at 3.5, e would be the whole chain: half a second passed between
    # the last end before it and its start, so it was waiting for no slot.
    assert critical_path(starts, [2.0, 1.0, 3.5, 3.0, 6.0]) == [4]
    # A script that lasted no time is not its own predecessor.
    assert critical_path([0.0, 1.0], [1.0, 1.0]) == [0, 1]


def test_a_page_of_ten_thousand_scripts_stays_small() -> None:
    # 16 workers, each script printing a line: the records' columns, not a copy per bar.
    header = {"schema": "pytest-codomyrmex-exec/report", "started": "2026-12-04T22:00:00Z"}
    lines = [
        {
            "nodeid": f"jobs/part{n % 37}/job_{n:05d}_script.py::job_{n:05d}_script",
            "status": "passed",
            "outcome": "passed",
            "exit_code": 0,
            "duration": 0.123456,
            "attempts": 1,
            "stdout_tail": f"job {n}: 1234567 rows\n",
            "stderr_tail": "",
            "worker": None,
            "host": None,
            "start": 0.25 + (n // 16) * 0.130001,
            "end": 0.25 + (n // 16) * 0.130001 + 0.125,
        }
        for n in range(10_000)
    ]
    page = render(header, lines)
    data = _data(page)
    assert len(data["name"]) == 10_000
    assert len(data["lanes"]) == 16
    # 1.5 MB when this test was written; a JSON object per bar, its keys repeated, makes 2.6.
    assert len(page.encode()) < 2_000_000


def test_timeline_to_an_unwritable_path_is_a_usage_error(px: ExecPytester) -> None:
    px.script("quick_script.py", "")
    result = px.run_inprocess("--exec-timeline", str(px.path / "missing" / "t.html"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--exec-timeline: cannot write *t.html: no folder *missing"])
    px.ini(exec_timeline=str(px.path))
    result = px.run_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option 'exec_timeline': * is a folder, not a file"])


# -- in a real browser ------------------------------------------------------------------------


def _chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium once; its stdout. In a session of its own, so that a run past
    the deadline is killed with every process it made (and only those)."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,600",
        *args,
    ]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as browser:
        try:
            out, _ = browser.communicate(timeout=CHROMIUM_DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.communicate()
            pytest.fail(f"chromium did not finish within {CHROMIUM_DEADLINE:g} s: {command}")
    assert browser.returncode == 0, f"chromium exited {browser.returncode}: {command}"
    return out


def _png_colours(path: Path) -> Counter[bytes]:
    """How many pixels of each colour (RGB bytes) an 8-bit RGB or RGBA PNG has."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    chunks: dict[bytes, bytes] = {}
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        chunks[kind] = chunks.get(kind, b"") + data[position + 8 : position + 8 + length]
        position += 12 + length
    ihdr = chunks[b"IHDR"]
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    assert ihdr[8] == 8, "8 bits per sample"
    assert ihdr[9] in (2, 6), "RGB or RGBA"
    step = 3 if ihdr[9] == 2 else 4
    stride = width * step
    raw = zlib.decompress(chunks[b"IDAT"])
    colours: Counter[bytes] = Counter()
    previous = bytearray(stride)
    for row in range(height):
        offset = row * (stride + 1)
        kind, line = raw[offset], bytearray(raw[offset + 1 : offset + 1 + stride])
        # Undo the row's PNG filter (None, Sub, Up, Average, Paeth).
        if kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = line[i - step] if i >= step else 0
                up = previous[i]
                corner = previous[i - step] if i >= step else 0
                if kind == 1:
                    add = left
                elif kind == 3:
                    add = (left + up) >> 1
                else:
                    guess = left + up - corner
                    # The nearest of the three; on a tie, left before up before corner.
                    _, add = min(
                        (abs(guess - left), 0, left),
                        (abs(guess - up), 1, up),
                        (abs(guess - corner), 2, corner),
                    )[::2]
                line[i] = (line[i] + add) & 0xFF
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, step))
        previous = line
    return colours


# Drives the page as a user would (dispatched pointer events, the buttons), then leaves what
# it saw in a <pre id="probe"> for --dump-dom: hover finds the bar of TARGET, a click opens
# its output, the wheel zooms and a drag pans (the canvas changes), "whole run" undoes both.
_PROBE = """<script>
(function () {
  var canvas = document.getElementById("chart"), tip = document.getElementById("tip");
  var box = canvas.getBoundingClientRect(), out = {}, found = null;
  function fire(type, x, y, extra) {
    var init = Object.assign({ clientX: box.left + x, clientY: box.top + y, bubbles: true,
                               cancelable: true }, extra || {});
    var Kind = type === "wheel" ? WheelEvent : MouseEvent;
    canvas.dispatchEvent(new Kind(type, init));
  }
  out.initial = document.getElementById("details").textContent;
  for (var y = 0; y < box.height && !found; y += 3) {
    for (var x = 0; x < box.width; x += 3) {
      fire("mousemove", x, y);
      if (tip.style.display === "block" && tip.textContent.split("\\n")[0] === TARGET) {
        found = [x, y];
        break;
      }
    }
  }
  out.tip = found ? tip.textContent : null;
  if (found) { fire("mousedown", found[0], found[1]); fire("mouseup", found[0], found[1]); }
  out.details = document.getElementById("details").textContent;
  var whole = canvas.toDataURL();
  fire("wheel", box.width / 2, 60, { deltaY: -400 });
  out.zoomed = canvas.toDataURL() !== whole;
  document.getElementById("reset").click();
  out.reset = canvas.toDataURL() === whole;
  fire("mousedown", 500, 60); fire("mousemove", 700, 60); fire("mouseup", 700, 60);
  out.panned = canvas.toDataURL() !== whole;
  out.stillChosen = document.getElementById("details").textContent === out.details;
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify(out);
  document.body.appendChild(probe);
})();
</script>
"""


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (Debian: apt-get install chromium): the page is not checked "
    "in a real browser",
)
@pytest.mark.modes("process")
def test_timeline_renders_in_chromium(px: ExecPytester, mode: Mode) -> None:
    _write_project(px)
    page_path = px.path / "timeline.html"
    px.run(*mode, "--exec-workers", "2", "--exec-timeline", str(page_path)).assert_outcomes(
        passed=3, failed=2
    )
    page = page_path.read_text(encoding="utf-8")

    shot = px.path / "timeline.png"
    _chromium(px.path / "profile", f"--screenshot={shot}", page_path.as_uri())
    colours = _png_colours(shot)
    assert len(colours) > 20, "a blank page"
    drawn = dict(re.findall(r'(passed|failed|timeout): "#([0-9a-f]{6})"', page))
    assert sorted(drawn) == ["failed", "passed", "timeout"]
    for outcome, colour in drawn.items():
        # A legend swatch has 140 pixels; a bar of 0.2 s in a run of ~1.5 s, thousands.
        assert colours[bytes.fromhex(colour)] > 600, f"no {outcome} bar on the canvas"

    target = "markup_script.py::markup_script"
    probed = px.path / "probed.html"
    probe = _PROBE.replace("TARGET", json.dumps(target))
    probed.write_text(page.replace("</body>", probe + "</body>"))
    opened_at = urllib.parse.quote("stuck_script.py::stuck_script")
    dom = _chromium(px.path / "profile", "--dump-dom", f"{probed.as_uri()}#{opened_at}")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: the page's script failed"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["initial"].startswith("stuck_script.py::stuck_script"), "#nodeid opens it"
    assert seen["tip"] is not None, "no bar answered the pointer"
    assert seen["tip"].startswith(f"{target}\nfailed\nduration ")
    assert ", exit code 3\nworker pytest · slot " in seen["tip"]
    assert seen["details"].startswith(target)
    assert SCRIPT_TAG_OUTPUT in seen["details"]
    assert seen["zoomed"], "the wheel zooms"
    assert seen["reset"], "'whole run' shows the whole run again"
    assert seen["panned"], "a drag pans"
    assert seen["stillChosen"], "a drag is not a click"
    # The output is text in the document, not markup the browser ran.
    assert "<script>alert(1)" not in dom
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in dom
