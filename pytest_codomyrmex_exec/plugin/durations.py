"""Script durations remembered across runs in pytest's cache, for longest-first starts."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from ..engine.results import ScriptResult, ScriptStatus

CACHE_KEY = "codomyrmex_exec/durations"

# Only runs that went to the end say how long a script takes.
_MEASURED = (ScriptStatus.PASSED, ScriptStatus.FAILED, ScriptStatus.TIMEOUT)


def load_durations(config: pytest.Config) -> dict[str, float]:
    """Seconds each script took last time, by node id; empty without the cache plugin."""
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None:
        return {}
    stored = cache.get(CACHE_KEY, {})
    if not isinstance(stored, dict):
        return {}
    return {k: float(v) for k, v in stored.items() if isinstance(v, int | float)}


def save_durations(config: pytest.Config, measured: Iterable[tuple[str, ScriptResult]]) -> None:
    """Merge this run's durations into the cache (scripts not run keep their old value)."""
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None:
        return
    fresh = {
        nodeid: round(result["execution_time"], 4)
        for nodeid, result in measured
        if result["status"] in _MEASURED
    }
    if fresh:
        cache.set(CACHE_KEY, {**load_durations(config), **fresh})
