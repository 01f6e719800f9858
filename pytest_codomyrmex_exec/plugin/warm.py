"""--exec-warm: one warm-start server per run, shared by inline runs and both backends.

:func:`configure_warm` builds the :class:`WarmLauncher` (its server starts at the first
script) and stores it in ``config.stash`` as the session's launcher, where items and backends
fetch it. :class:`WarmReport` closes the server when the session ends (before the session's
sweep for tagged leftovers) and says which scripts started cold, and why: a ``warm``
junit property on every script item, and a summary line (one per script with ``-v``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from .environment import child_environment
from .items import ScriptItem
from .keys import LAUNCHER_KEY, OPTIONS_KEY, SESSION_TAG_KEY
from .marks import MarkError
from .settings import pytest_pythonpath

if TYPE_CHECKING:
    from ..engine.forkserver import WarmLauncher

_PLUGIN = "codomyrmex-exec-warm"
_AUTO_PLUGIN = "codomyrmex-exec-preload-auto"


def configure_warm(config: pytest.Config) -> None:
    """With --exec-warm: make the run's launcher and register its reporter."""
    options = config.stash[OPTIONS_KEY]
    if not options.warm:
        return
    from ..engine.forkserver import WarmLauncher  # imported only when the feature is on

    choice = None
    pythonpath = pytest_pythonpath(config)
    if options.preload_auto:
        from .preload_auto import choose  # imported only when the feature is on

        choice = choose(config)
        if choice.shared_folder is not None:  # first on each script's path, so on the server's
            pythonpath.insert(0, choice.shared_folder)
    launcher = WarmLauncher(
        python=options.python or sys.executable,
        preload=options.preload,
        # The scripts' base environment; it carries the session tag, so the server and all
        # it forks are found by the session's sweep for leftovers, whatever happens. Its
        # PYTHONPATH (pytest's ``pythonpath`` entries first) is where the preload is found.
        env=child_environment(config.stash[SESSION_TAG_KEY], pythonpath),
        optional_preload=choice.modules if choice is not None else (),
    )
    config.stash[LAUNCHER_KEY] = launcher
    config.pluginmanager.register(WarmReport(config, launcher), _PLUGIN)
    if choice is not None:
        from .preload_auto import AutoPreload

        config.pluginmanager.register(AutoPreload(config, choice, launcher), _AUTO_PLUGIN)


class WarmReport:
    """Hooks active with --exec-warm: the junit property, the summary, closing the server."""

    def __init__(self, config: pytest.Config, launcher: WarmLauncher) -> None:
        self.config = config
        self.launcher = launcher
        self.cold: dict[str, str] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        if call.when != "setup" or not isinstance(item, ScriptItem):
            return
        try:
            spec = item.settings()
        except MarkError:
            return
        if spec.script in self.launcher.last_start:  # it started in this process: how it did
            reason = self.launcher.last_start[spec.script]
        else:  # it has not started here (a process pool's worker, or never): how it would
            reason = self.launcher.reason_for(spec, self.launcher.env)
        if reason is not None:
            self.cold[item.nodeid] = reason
        item.user_properties.append(("warm", "warm" if reason is None else f"cold: {reason}"))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.launcher.close()  # before the sweep: the server is ours, not a leftover

    def pytest_unconfigure(self) -> None:
        self.launcher.close()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.cold:
            return
        terminalreporter.write_sep(
            "-",
            f"codomyrmex-exec: {len(self.cold)} script(s) started cold despite --exec-warm"
            + ("" if self.config.option.verbose > 0 else " (-v says why)"),
            yellow=True,
        )
        if self.config.option.verbose > 0:
            for nodeid, reason in self.cold.items():
                terminalreporter.write_line(f"{nodeid}: cold: {reason}")
