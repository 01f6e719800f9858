"""The pytest entry point: hook implementations only; the work lives in the other modules."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from pathlib import Path

import pytest

from ..engine import kill_tagged
from . import hookspecs
from .durations import save_durations
from .items import OPTIONS_KEY, RESULT_KEY, SESSION_TAG_KEY, ScriptFile, ScriptItem, is_script
from .marks import EXEC_MARKER_HELP
from .options import add_options, resolve_options
from .settings import SESSION_TAG_VAR

_SESSION_PLUGIN = "codomyrmex-exec-session"
_DASK_PLUGIN = "codomyrmex-exec-dask"
_LEFTOVERS_KEY = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _xdist_active(config: pytest.Config) -> bool:
    """True on an xdist worker or controller: xdist already spreads items over processes."""
    if hasattr(config, "workerinput"):
        return True
    return config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") != "no"


@pytest.hookimpl(trylast=True)
def pytest_exec_make_backend(config: pytest.Config) -> object:
    """The built-in backends, chosen by ``--exec-backend``; other plugins may come first."""
    from .backends import make_builtin_backend

    options = config.stash[OPTIONS_KEY]
    if options.backend == "dask":
        return None  # made by the dask_backend plugin, registered in pytest_configure
    return make_builtin_backend(options.backend, options.workers, options.resources)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", EXEC_MARKER_HELP)
    options = resolve_options(config)
    config.stash[OPTIONS_KEY] = options
    config.stash[SESSION_TAG_KEY] = uuid.uuid4().hex
    if options.parallel and not _xdist_active(config):
        from .session import ExecSession  # imported only when the feature is on

        config.pluginmanager.register(ExecSession(config), _SESSION_PLUGIN)
        if options.backend == "dask":
            from . import dask_backend  # its pytest_exec_make_backend makes the Dask backend

            config.pluginmanager.register(dask_backend, _DASK_PLUGIN)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(
    file_path: Path, parent: pytest.Collector
) -> Generator[None, list[pytest.Collector], list[pytest.Collector]]:
    collectors = yield
    options = parent.config.stash[OPTIONS_KEY]
    if not options.patterns or not is_script(file_path, options.patterns):
        return collectors
    # A test module (python_files, e.g. test_*.py) stays a test module even if its name
    # also fits a script pattern: collecting it twice would run it twice.
    if is_script(file_path, tuple(parent.config.getini("python_files"))):
        return collectors
    # pytest's python plugin makes a test module of any .py named on the command line, and
    # collecting that module would import (run) the script: the script item replaces it.
    kept = [c for c in collectors if not isinstance(c, pytest.Module)]
    return [*kept, ScriptFile.from_parent(parent, path=file_path)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if isinstance(item, ScriptItem):
        item.shape_report(report, call)
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item) -> bool | None:
    """pytest-timeout: script items time themselves (it would count queue time, or kill us)."""
    return True if isinstance(item, ScriptItem) else None


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    return True if isinstance(item, ScriptItem) else None


def pytest_sessionfinish(session: pytest.Session) -> None:
    measured = [
        (item.nodeid, result)
        for item in session.items
        if isinstance(item, ScriptItem) and (result := item.stash.get(RESULT_KEY, None))
    ]
    save_durations(session.config, measured)
    # Scripts are killed with their process group; this catches what left the group on
    # purpose (setsid, a daemon) and would otherwise outlive the run.
    session.config.stash[_LEFTOVERS_KEY] = kill_tagged(
        SESSION_TAG_VAR, session.config.stash[SESSION_TAG_KEY]
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    leftovers = terminalreporter.config.stash.get(_LEFTOVERS_KEY, 0)
    if leftovers:
        terminalreporter.write_sep(
            "-",
            f"codomyrmex-exec: killed {leftovers} process(es) that scripts left running "
            "outside their process group",
            yellow=True,
        )
