"""Live output (``--exec-live``): the scripts' output lines in the terminal as they are written;
and, with ``--exec-parallel``, which scripts are running when a wait grows long.

Chunks of output become whole lines per script and stream, so the lines of scripts running
at once interleave but never mix; each line gets the script's label as a prefix, coloured
per script where the terminal has colour. Lines are cut at :data:`LINE_LIMIT` characters,
control characters are made visible, bytes that are not UTF-8 are replaced. Output that
the display cannot keep up with is dropped, with a count (:class:`Backlog`). With
``--exec-parallel`` the lines are written on pytest's main thread (the session hands the
events over through its queue); inline, by a thread of the run's own, while the main
thread runs the script.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias, final

import pytest

from ..engine.events import RunEvent, RunEventKind, Stream, Subscription
from .outcome import visible
from .workdir import real_terms

LINE_LIMIT = 1000
"""Characters of a line that are shown; the rest is cut, with a count."""

_PARTIAL_LIMIT = 4 * LINE_LIMIT
"""Bytes of an unfinished line kept (UTF-8 takes up to 4 per character); the rest is only
counted, so a script that never writes a newline cannot fill pytest's memory."""

LIVE_BACKLOG = 4 * 1024 * 1024
"""Bytes of output read but not yet shown, at most. A script writes faster than a terminal
shows prefixed lines: beyond this the display drops chunks and says how many lines it
dropped, so that neither pytest's memory grows nor the script waits for the display."""

Dropped: TypeAlias = dict[Stream, int]
"""Newlines of output dropped per stream (a stream with 0: part of a line)."""

_DRAIN_WAIT = 30.0
"""Seconds an inline script's end waits for its last lines to be shown (a terminal that
does not take them); the backlog bounds what is left, so this is only a deadline."""

_COLOURS = ("cyan", "green", "yellow", "blue", "purple", "red")


@final
class _Line:
    """The unfinished line of one stream of one script."""

    __slots__ = ("cut", "data", "dropped")

    def __init__(self, *, cut: bool = False) -> None:
        self.data = bytearray()
        self.dropped = 0
        self.cut = cut
        """Its start was dropped by the :class:`Backlog`: shown with a leading ``…``."""

    def add(self, part: bytes) -> None:
        room = _PARTIAL_LIMIT - len(self.data)
        self.data += part[:room]
        self.dropped += max(len(part) - room, 0)

    def take(self) -> str:
        text = self.data.decode("utf-8", errors="replace").rstrip("\r")
        dropped = self.dropped
        self.data, self.dropped = bytearray(), 0
        if len(text) > LINE_LIMIT:
            dropped += len(text) - LINE_LIMIT  # characters now, bytes before: near enough
            text = text[:LINE_LIMIT]
        text = ("…" if self.cut else "") + visible(text)
        self.cut = False
        return f"{text}… [{dropped} more characters]" if dropped else text


@final
class Backlog:
    """Output on its way to the display, bounded by :data:`LIVE_BACKLOG` bytes.

    ``admit`` is called where output is read (a backend's thread, an inline run's read
    loop), ``shown`` where it has been displayed; a lock keeps the count between them.
    """

    def __init__(self, limit: int = LIVE_BACKLOG) -> None:
        self._limit = limit
        self._pending = 0
        self._dropped: dict[tuple[object, Stream], int] = {}
        self._lock = threading.Lock()

    def admit(self, event: RunEvent) -> Dropped | None:
        """``None`` if the event is dropped (output that does not fit); otherwise what was
        dropped of its script's streams since, to be reported before the event is shown:
        the newlines lost per stream (0: part of a line)."""
        with self._lock:
            if event.kind == RunEventKind.OUTPUT and event.stream is not None:
                where = (event.key, event.stream)
                if self._pending + len(event.chunk) > self._limit:
                    self._dropped[where] = self._dropped.get(where, 0) + event.chunk.count(b"\n")
                    return None
                self._pending += len(event.chunk)
                streams: tuple[Stream, ...] = (event.stream,)
            elif event.kind == RunEventKind.STARTED:
                return {}  # not shown: the count waits for an event that is
            else:
                streams = ("stdout", "stderr")
            return {
                stream: self._dropped.pop((event.key, stream))
                for stream in streams
                if (event.key, stream) in self._dropped
            }

    def shown(self, event: RunEvent) -> None:
        with self._lock:
            self._pending -= len(event.chunk)


@final
class LiveOutput:
    """Turns ``output`` events into prefixed terminal lines; ``finished`` flushes a script."""

    def __init__(self, config: pytest.Config, *, between_items: bool) -> None:
        self._plugins = config.pluginmanager  # looked up when writing: made after configure
        self._between_items = between_items
        """Written between items (the parallel session), not within one (an inline run)."""
        self._lines: dict[tuple[object, str], _Line] = {}
        self._colours: dict[object, str] = {}

    def take(
        self,
        event: RunEvent,
        label: str,
        dropped: Dropped | None = None,
        real_terms: Callable[[str], str] | None = None,
    ) -> None:
        """Take one event of the script called ``label``: output is shown line by line; an
        attempt's end (retry, finished) shows what is left of its last line. ``dropped``:
        what the :class:`Backlog` dropped of the script just before this event;
        ``real_terms``: what names a copy's folder (``--exec-cwd copy``) as the real one, as
        the report will."""
        done: list[str] = []
        for stream, lines in (dropped or {}).items():
            # The line in progress lost its end (or its middle): what follows is a fragment.
            self._lines[(event.key, stream)] = _Line(cut=True)
            lost = f"{lines} line{'s' if lines != 1 else ''}" if lines else "part of a line"
            done.append(f"… {lost} of {stream} dropped: the display fell behind the script")
        if event.kind == RunEventKind.OUTPUT and event.stream is not None:
            line = self._lines.setdefault((event.key, event.stream), _Line())
            *complete, rest = event.chunk.split(b"\n")
            for part in complete:
                line.add(part)
                done.append(line.take())
            line.add(rest)
        elif event.kind in (RunEventKind.RETRY, RunEventKind.FINISHED):
            for stream in ("stdout", "stderr"):
                unfinished = self._lines.pop((event.key, stream), _Line())
                if unfinished.data or unfinished.dropped:
                    done.append(unfinished.take())
        if done and real_terms is not None:
            done = [real_terms(text) for text in done]
        if done:
            self._write(event.key, label, done)

    def _write(self, key: object, label: str, lines: list[str]) -> None:
        """Write whole lines, one flush for all of a chunk's lines."""
        reporter: Any = self._plugins.get_plugin("terminalreporter")
        if reporter is None:
            return
        colour = self._colours.setdefault(key, _COLOURS[len(self._colours) % len(_COLOURS)])
        prefix = f"[{label}]"
        with self._uncaptured():
            start_own_line(reporter, between_items=self._between_items)
            for text in lines:
                reporter.write(prefix, **{colour: True})
                reporter.write(f" {text}\n")
            reporter.flush()

    @contextlib.contextmanager
    def _uncaptured(self) -> Iterator[None]:
        """Inline, a script runs in its item's setup, while pytest captures fds 1 and 2."""
        capture: Any = self._plugins.get_plugin("capturemanager")
        if capture is None:
            yield
            return
        with capture.global_and_fixture_disabled():
            yield


def start_own_line(reporter: Any, *, between_items: bool) -> None:
    """Start a line of ours. ``between_items`` (no test's report is under way): finish
    pytest's progress line the way pytest would, so that our lines come between progress
    lines and never split one.

    A file's line (``a_script.py .``) gets its percentage only when the next file starts,
    and ``-q``'s dots only at the edge: cut there, the percentage would be lost and the dots
    would go on under our line. Within an item (a script run inline) its result is still to
    come, so the line is only ended, as pytest's own output of a test (``-s``) would end it.
    pytest has no public way to ask where the cursor is or to finish its line; its writer's
    ``width_of_current_line`` and the reporter's own filler are used, and without them the
    line is only ended.
    """
    width = getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0)
    finish = getattr(reporter, "_write_progress_information_filling_space", None)
    # -v ends each test's line with its percentage and marks that with a currentfspath that
    # is no path; a default run's file line, or -q's dots (no fspath), still lack it.
    unfinished = reporter.currentfspath is None or isinstance(reporter.currentfspath, Path)
    shows_progress = getattr(reporter, "_show_progress_info", False)
    if between_items and width and unfinished and shows_progress and finish:
        finish()
    reporter.ensure_newline()
    if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
        reporter.write("\n")


def write_notice(
    reporter: Any, line: str, *, red: bool = False, between_items: bool = True
) -> None:
    """One line of ours (yellow, or red for an error), by :func:`start_own_line`."""
    start_own_line(reporter, between_items=between_items)
    reporter.write_line(line, **({"red": True} if red else {"yellow": True}))
    reporter.flush()  # a notice is news now, also where stdout is a file (a CI log)


@final
class _InlineDisplay:
    """An inline run's output, shown by a thread of its own through a :class:`Backlog`.

    The events come from the run's read loop: showing the lines there would make the
    script wait for the terminal (a script writing fast would take as long as its lines
    take to show, and time out). The run's ``finished`` waits until its lines are shown.
    """

    def __init__(self, item: pytest.Item, label: str) -> None:
        self._live = LiveOutput(item.config, between_items=False)
        self._item = item
        self._label = label
        self._backlog = Backlog()
        self._events: queue.SimpleQueue[tuple[RunEvent, Dropped]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._show, name="codomyrmex-exec-live")
        self._thread.daemon = True  # a hung terminal must not keep pytest from exiting
        self._thread.start()

    def take(self, event: RunEvent) -> None:
        dropped = self._backlog.admit(event)
        if dropped is not None:
            self._events.put((event, dropped))
        if event.kind == RunEventKind.FINISHED:
            self._thread.join(_DRAIN_WAIT)

    def _show(self) -> None:
        while True:
            event, dropped = self._events.get()
            self._live.take(event, self._label, dropped, real_terms(self._item))
            self._backlog.shown(event)
            if event.kind == RunEventKind.FINISHED:
                return


def inline_subscription(item: pytest.Item, label: str) -> Subscription:
    """Events of an inline run to a :class:`LiveOutput`, without ever holding the run up."""
    display = _InlineDisplay(item, label)
    return Subscription(display.take, key=label, output=True)


RUNNING_LONGEST_GAP = 60.0
"""The notices come after the first wait (ini ``exec_running_notice_after``, 5 s), then after
twice as long each time, at most every 60 s of quiet; a finish starts over."""

_RUNNING_SHOWN = 5


@final
class RunningScripts:
    """Which scripts run, since when; a notice when a wait has been long (``--exec-parallel``).

    A stuck script shows up as the one whose time keeps growing in the notices. Quiet runs
    print nothing: the first notice comes only after ``first_notice`` seconds without any
    script finishing.
    """

    def __init__(self, first_notice: float) -> None:
        self._first_notice = first_notice
        self._since: dict[object, tuple[str, float]] = {}
        self._quiet_since = time.monotonic()
        self._gap = first_notice

    def started(self, key: object, label: str, wall_time: float) -> None:
        self._since.setdefault(key, (label, wall_time))

    def __len__(self) -> int:
        return len(self._since)

    def finished(self, key: object) -> None:
        self._since.pop(key, None)
        self._quiet_since = time.monotonic()
        self._gap = self._first_notice

    def notice(self) -> str | None:
        """The line to show now, if the wait has been long enough; else ``None``."""
        now = time.monotonic()
        if not self._since or now - self._quiet_since < self._gap:
            return None
        self._quiet_since = now
        self._gap = min(self._gap * 2, max(RUNNING_LONGEST_GAP, self._first_notice))
        wall = time.time()
        longest = sorted(self._since.values(), key=lambda entry: entry[1])
        shown = [f"{label} {wall - since:.0f} s" for label, since in longest[:_RUNNING_SHOWN]]
        more = len(longest) - len(shown)
        tail = f", and {more} more" if more else ""
        return f"codomyrmex-exec: {len(longest)} running: {', '.join(shown)}{tail}"
