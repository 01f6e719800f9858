"""Live output (``--exec-live``): the scripts' output lines in the terminal as they are written;
and, with ``--exec-parallel``, which scripts are running when a wait grows long.

Chunks of output become whole lines per script and stream, so the lines of scripts running
at once interleave but never mix; each line gets the script's label as a prefix, coloured
per script where the terminal has colour. Lines are cut at :data:`LINE_LIMIT` characters,
control characters are made visible, bytes that are not UTF-8 are replaced. Everything here
runs on pytest's main thread (the parallel session hands the events over through its queue).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, final

import pytest

from ..engine.events import RunEvent, RunEventKind, Subscription
from .outcome import visible

LINE_LIMIT = 1000
"""Characters of a line that are shown; the rest is cut, with a count."""

_PARTIAL_LIMIT = 4 * LINE_LIMIT
"""Bytes of an unfinished line kept (UTF-8 takes up to 4 per character); the rest is only
counted, so a script that never writes a newline cannot fill pytest's memory."""

_COLOURS = ("cyan", "green", "yellow", "blue", "purple", "red")


@final
class _Line:
    """The unfinished line of one stream of one script."""

    __slots__ = ("data", "dropped")

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

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
        text = visible(text)
        return f"{text}… [{dropped} more characters]" if dropped else text


@final
class LiveOutput:
    """Turns ``output`` events into prefixed terminal lines; ``finished`` flushes a script."""

    def __init__(self, config: pytest.Config) -> None:
        self._plugins = config.pluginmanager  # looked up when writing: made after configure
        self._lines: dict[tuple[object, str], _Line] = {}
        self._colours: dict[object, str] = {}

    def take(self, event: RunEvent, label: str) -> None:
        """Take one event of the script called ``label``: output is shown line by line; an
        attempt's end (retry, finished) shows what is left of its last line."""
        done: list[str] = []
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
            reporter.ensure_newline()
            # With -q the progress dots leave the cursor mid-line without pytest knowing;
            # pytest has no public way to ask, its writer's width_of_current_line tells.
            if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
                reporter.write("\n")
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


def inline_subscription(config: pytest.Config, label: str) -> Subscription:
    """Events of an inline run (sent on this thread) straight to a :class:`LiveOutput`."""
    live = LiveOutput(config)
    return Subscription(lambda event: live.take(event, label), key=label, output=True)


RUNNING_FIRST_NOTICE = 5.0
"""Seconds without a script finishing before the parallel session says what is running."""

RUNNING_LONGEST_GAP = 60.0
"""The notices come after 5, 10, 20, 40, then every 60 s of quiet; a finish starts over."""

_RUNNING_SHOWN = 5


@final
class RunningScripts:
    """Which scripts run, since when; a notice when a wait has been long (``--exec-parallel``).

    A stuck script shows up as the one whose time keeps growing in the notices. Quiet runs
    print nothing: the first notice comes only after :data:`RUNNING_FIRST_NOTICE` seconds
    without any script finishing.
    """

    def __init__(self) -> None:
        self._since: dict[object, tuple[str, float]] = {}
        self._quiet_since = time.monotonic()
        self._gap = RUNNING_FIRST_NOTICE

    def started(self, key: object, label: str, wall_time: float) -> None:
        self._since.setdefault(key, (label, wall_time))

    def finished(self, key: object) -> None:
        self._since.pop(key, None)
        self._quiet_since = time.monotonic()
        self._gap = RUNNING_FIRST_NOTICE

    def notice(self) -> str | None:
        """The line to show now, if the wait has been long enough; else ``None``."""
        now = time.monotonic()
        if not self._since or now - self._quiet_since < self._gap:
            return None
        self._quiet_since = now
        self._gap = min(self._gap * 2, RUNNING_LONGEST_GAP)
        wall = time.time()
        longest = sorted(self._since.values(), key=lambda entry: entry[1])
        shown = [f"{label} {wall - since:.0f} s" for label, since in longest[:_RUNNING_SHOWN]]
        more = len(longest) - len(shown)
        tail = f", and {more} more" if more else ""
        return f"codomyrmex-exec: {len(longest)} running: {', '.join(shown)}{tail}"
