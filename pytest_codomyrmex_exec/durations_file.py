"""The durations file: how long each test item took, and when that was measured.

A JSON file meant to be committed or passed between CI jobs: keys sorted, one item per line,
so a diff shows what changed. Each entry keeps the time of its measurement, so that files
from several shards merge by taking the newest measurement of each item.

This module imports neither pytest nor the plugin: ``python -m pytest_codomyrmex_exec
merge-durations`` uses it on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import final

from .whole_file import write_whole

FORMAT_VERSION = 1


@final
@dataclass(frozen=True, slots=True)
class Measurement:
    """One item's duration, and when it was measured (UTC)."""

    seconds: float
    measured: datetime

    @classmethod
    def now(cls, seconds: float) -> Measurement:
        return cls(round(seconds, 4), datetime.now(UTC))


class DurationsFileError(ValueError):
    """A durations file that cannot be read as one; the message names the file."""


def read_durations(path: Path) -> dict[str, Measurement]:
    """The measurements in ``path`` by node id; a file that does not exist holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise DurationsFileError(f"{path}: cannot read it: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DurationsFileError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise DurationsFileError(
            f"{path}: not a durations file of version {FORMAT_VERSION} "
            '(expected {"version": 1, "durations": {...}})'
        )
    entries = data.get("durations")
    if not isinstance(entries, dict):
        raise DurationsFileError(f"{path}: 'durations' must be an object of node ids")
    return {nodeid: _measurement(path, nodeid, entry) for nodeid, entry in entries.items()}


def _measurement(path: Path, nodeid: str, entry: object) -> Measurement:
    seconds = entry.get("seconds") if isinstance(entry, dict) else None
    measured = entry.get("measured") if isinstance(entry, dict) else None
    valid_seconds = (
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and math.isfinite(seconds)
        and seconds >= 0
    )
    if not valid_seconds or not isinstance(measured, str):
        raise DurationsFileError(
            f"{path}: entry {nodeid!r} must be "
            '{"seconds": a number >= 0, "measured": an ISO 8601 time}'
        )
    try:
        when = datetime.fromisoformat(measured)
    except ValueError:
        raise DurationsFileError(
            f"{path}: entry {nodeid!r}: 'measured' is not an ISO 8601 time: {measured!r}"
        ) from None
    if when.tzinfo is None:  # naive times could not be compared with the others
        when = when.replace(tzinfo=UTC)
    return Measurement(float(seconds), when)  # type: ignore[arg-type]  # checked above


def write_durations(path: Path, durations: Mapping[str, Measurement]) -> None:
    """Write ``durations`` to ``path`` whole, or leave the old file if that fails midway."""
    lines = [
        f"    {json.dumps(nodeid)}: "
        + json.dumps(
            {"measured": entry.measured.isoformat(), "seconds": entry.seconds}, sort_keys=True
        )
        for nodeid, entry in sorted(durations.items())
    ]
    body = ",\n".join(lines)
    text = (
        f'{{\n  "version": {FORMAT_VERSION},\n  "durations": {{\n{body}\n  }}\n}}\n'
        if lines
        else f'{{\n  "version": {FORMAT_VERSION},\n  "durations": {{}}\n}}\n'
    )
    write_whole(path, text)


def merge_durations(tables: Iterable[Mapping[str, Measurement]]) -> dict[str, Measurement]:
    """One table from several: the newest measurement of each item wins (on a tie, the
    later table's)."""
    merged: dict[str, Measurement] = {}
    for table in tables:
        for nodeid, entry in table.items():
            kept = merged.get(nodeid)
            if kept is None or entry.measured >= kept.measured:
                merged[nodeid] = entry
    return merged
