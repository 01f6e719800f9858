"""Bounded capture of a child's output stream: keep the head and the tail, drop the middle."""

from __future__ import annotations

from typing import final

from .spec import DEFAULT_OUTPUT_LIMIT

__all__ = ["DEFAULT_OUTPUT_LIMIT", "TRUNCATION_MARKER", "BoundedOutput"]

TRUNCATION_MARKER = "[... {dropped} bytes of output truncated ...]"
"""The line that stands for the dropped middle of an output over its limit (``format`` it
with ``dropped``); output checks recognise it, so it is defined once, here."""


@final
class BoundedOutput:
    """Accumulates bytes, keeping at most ``limit`` of them.

    A script that writes gigabytes must leave the parent's memory flat, yet the start of the
    output (what the script was doing) and the end (the traceback) are what a reader needs.
    """

    __slots__ = ("_head", "_head_limit", "_tail", "_tail_limit", "dropped")

    def __init__(self, limit: int = DEFAULT_OUTPUT_LIMIT) -> None:
        if limit < 2:
            raise ValueError(f"output limit must be at least 2 bytes, got {limit}")
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.dropped = 0

    def append(self, chunk: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
            if not chunk:
                return
        self._tail += chunk
        # Trim in amortised steps: cutting the front of a bytearray on every chunk is O(n).
        excess = len(self._tail) - self._tail_limit
        if excess > self._tail_limit:
            del self._tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        """The kept output as text; invalid UTF-8 becomes U+FFFD instead of an error."""
        excess = len(self._tail) - self._tail_limit
        dropped = self.dropped + max(excess, 0)
        tail = self._tail[excess:] if excess > 0 else self._tail
        if not dropped:
            return (self._head + tail).decode("utf-8", errors="replace")
        marker = "\n" + TRUNCATION_MARKER.format(dropped=dropped) + "\n"
        return (
            self._head.decode("utf-8", errors="replace")
            + marker
            + tail.decode("utf-8", errors="replace")
        )
