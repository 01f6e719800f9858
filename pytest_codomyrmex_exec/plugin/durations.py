"""Durations remembered across runs: in pytest's cache, or in a durations file.

The file (``--exec-durations-file``) is read once at configure time, for the shard split and
the longest-first start order, and written back at the end with what ran. Without it the
start order reads pytest's cache, which this module also keeps up to date.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..durations_file import (
    DurationsFileError,
    Measurement,
    merge_durations,
    read_durations,
    write_durations,
)

CACHE_KEY = "codomyrmex_exec/durations"

_FILE_KEY = pytest.StashKey[Path]()
_REMEMBERED_KEY = pytest.StashKey[dict[str, Measurement]]()
_RECORDER_PLUGIN = "codomyrmex-exec-durations"


def add_durations_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--exec-durations-file",
        metavar="PATH",
        default=None,
        help="JSON file of remembered durations: read for the shard split and the start "
        "order, written back with what ran (ini: exec_durations_file)",
    )
    parser.addini(
        "exec_durations_file",
        "JSON file of remembered durations, relative to the ini file",
        default="",
    )


def file_setting(config: pytest.Config, name: str) -> tuple[Path, str] | None:
    """The file an option and ini key ``name`` (``exec_durations_file``) name, and where it
    was named: the option (relative to the current folder), else the ini key (relative to
    the ini file's folder)."""
    given = config.getoption(name)
    if given:
        return config.invocation_params.dir / str(given), "--" + name.replace("_", "-")
    raw = config.getini(name)
    if isinstance(raw, str) and raw.strip():
        base = config.inipath.parent if config.inipath else config.rootpath
        return base / raw.strip(), f"ini option {name!r}"
    return None


def configure_durations(config: pytest.Config) -> None:
    """Read the durations file, if one is named, and register the recorder."""
    named = file_setting(config, "exec_durations_file")
    if named is not None:
        path, where = named
        try:
            config.stash[_REMEMBERED_KEY] = read_durations(path)
        except DurationsFileError as exc:
            raise pytest.UsageError(
                f"{where}: {exc}. Fix or delete it (python -m pytest_codomyrmex_exec "
                "merge-durations rewrites files it can read)"
            ) from None
        config.stash[_FILE_KEY] = path
    if not hasattr(config, "workerinput"):
        # Under xdist the controller sees every report and writes once; workers only read.
        config.pluginmanager.register(_DurationRecorder(config), _RECORDER_PLUGIN)


def file_durations(config: pytest.Config) -> dict[str, float]:
    """Seconds by node id from the durations file; empty without one.

    The shard split reads only this: every machine of a CI matrix must compute the same
    split, and each machine's cache holds something else."""
    return {nodeid: m.seconds for nodeid, m in config.stash.get(_REMEMBERED_KEY, {}).items()}


def load_durations(config: pytest.Config) -> dict[str, float]:
    """Seconds each item took last time, by node id: from the durations file when one is
    named, else from pytest's cache (empty with ``-p no:cacheprovider``)."""
    if _FILE_KEY in config.stash:
        return file_durations(config)
    return _cached_durations(config)


def _cached_durations(config: pytest.Config) -> dict[str, float]:
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None:
        return {}
    stored = cache.get(CACHE_KEY, {})
    if not isinstance(stored, dict):
        return {}
    return {k: float(v) for k, v in stored.items() if isinstance(v, int | float)}


def _measured(report: pytest.TestReport) -> bool:
    """A call that ran to its end: passed or failed (an xfail included), not skipped."""
    return report.when == "call" and (not report.skipped or hasattr(report, "wasxfail"))


class _DurationRecorder:
    """Takes the call-phase duration of every item as its report is logged (a script's
    report carries its run time), and saves them when the session ends."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.fresh: dict[str, Measurement] = {}
        self.problem: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if _measured(report):
            self.fresh[report.nodeid] = Measurement.now(report.duration)

    def pytest_sessionfinish(self) -> None:
        if not self.fresh:
            return
        self._save_to_cache()
        path = self.config.stash.get(_FILE_KEY, None)
        if path is None:
            return
        remembered = self.config.stash.get(_REMEMBERED_KEY, {})
        try:
            write_durations(path, merge_durations([remembered, self.fresh]))
        except OSError as exc:
            # The run's verdicts stand; only the memory of its durations is lost.
            self.problem = f"codomyrmex-exec: could not write the durations file {path}: {exc}"

    def _save_to_cache(self) -> None:
        cache = getattr(self.config, "cache", None)  # absent with -p no:cacheprovider
        if cache is None:
            return
        fresh = {nodeid: m.seconds for nodeid, m in self.fresh.items()}
        cache.set(CACHE_KEY, {**_cached_durations(self.config), **fresh})

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.problem:
            terminalreporter.write_sep("-", self.problem, yellow=True)
