"""The pytest entry point: hook implementations only; the work lives in the other modules."""

from __future__ import annotations

import fnmatch
import logging
import os
import shlex
import uuid
from collections.abc import Generator
from pathlib import Path

import pytest

from ..engine.cpu_meter import AUTO
from ..engine.launch import COLD, kill_tagged, running_scripts
from ..engine.resources import describe_assigned
from . import hookspecs
from .dirty import dirty_facts
from .durations import configure_durations
from .environment import SESSION_TAG_VAR
from .expected import add_output_options
from .flaky import tries_allowed
from .guardian import protect, scripts_will_run, unprotect
from .items import ScriptFile, ScriptItem
from .keys import LAUNCHER_KEY, OPTIONS_KEY, RESULT_KEY, SESSION_TAG_KEY
from .marks import EXEC_MARKER_HELP
from .options import DEFAULT_PATTERNS, add_options, refuse_separate_path_values, resolve_options
from .patterns import NEVER_SCRIPTS, PATTERNS_KEY, ScriptPatterns
from .report import (
    FACTS_ATTR,
    RECORDS_KEY,
    RunRecords,
    junit_properties,
    script_facts,
)
from .shards import configure_shard
from .update import configure_output_checks

__all__ = ["ScriptFile", "ScriptItem"]
"""Public names for conftests: ``isinstance(item, ScriptItem)`` tells script items apart."""

_SESSION_PLUGIN = "codomyrmex-exec-session"
_RECORDS_PLUGIN = "codomyrmex-exec-records"
_DASK_PLUGIN = "codomyrmex-exec-dask"
_LEFTOVERS_KEY = pytest.StashKey[int]()
_PYTHON_MODULE_KEY = pytest.StashKey[bool]()
"""Set on the test module pytest's python plugin made for a file (not on a DoctestModule)."""
_SCRIPTS_KEY = pytest.StashKey[bool]()
"""Set once collection found scripts that will run: only then is there anything to sweep."""
_SWEPT_KEY = pytest.StashKey[bool]()
_BOTH_KEY = pytest.StashKey[bool]()
"""Set on a test module whose file also matches the script patterns."""
_EMPTY_TEST_MODULES_KEY = pytest.StashKey[list[str]]()
"""Such test modules that collected no test: files meant as scripts, lost to python_files."""
_RUNNING_SCRIPTS_KEY = pytest.StashKey[frozenset[str]]()
"""The scripts this session runs inside (read once: collection asks for every file)."""

logger = logging.getLogger("pytest_codomyrmex_exec.plugin")


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    add_output_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # The earliest hook a pytest11 plugin gets, before any conftest is imported from a
    # rootdir that a separated "--exec-python PATH" may have moved.
    given = shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    params = early_config.invocation_params
    refuse_separate_path_values([*given, *params.args], str(params.dir))


def _xdist_active(config: pytest.Config) -> bool:
    """True on an xdist worker or controller: xdist already spreads items over processes.

    xdist distributes only with a ``--dist`` mode *and* workers (``-n``/``--tx``, which its
    ``pytest_cmdline_main`` has turned into ``tx`` by now): ``--dist loadscope`` alone, e.g.
    in ``addopts``, runs every item in this process, so --exec-parallel must stay on."""
    if hasattr(config, "workerinput"):
        return True
    if not config.pluginmanager.hasplugin("xdist"):
        return False
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


@pytest.hookimpl(trylast=True)
def pytest_exec_make_backend(config: pytest.Config) -> object:
    """The built-in backends, chosen by ``--exec-backend``; other plugins may come first."""
    from .backends import make_builtin_backend

    options = config.stash[OPTIONS_KEY]
    if options.backend == "dask":
        return None  # made by the dask_backend plugin, registered in pytest_configure
    return make_builtin_backend(
        options.backend,
        AUTO if options.auto_workers else options.workers,
        config.stash[LAUNCHER_KEY],
        options.resources,
        options.resource_env,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", EXEC_MARKER_HELP)
    options = resolve_options(config)
    config.stash[OPTIONS_KEY] = options
    config.stash[SESSION_TAG_KEY] = uuid.uuid4().hex
    config.stash[LAUNCHER_KEY] = COLD
    if options.warm:
        from .warm import configure_warm

        configure_warm(config)
    config.stash[PATTERNS_KEY] = ScriptPatterns(options.patterns, config.rootpath)
    config.stash[_RUNNING_SCRIPTS_KEY] = running_scripts(os.environ)
    configure_output_checks(config)
    configure_durations(config)
    configure_shard(config)
    if options.changed:
        from .changed import configure_changed  # imported only when the feature is on

        configure_changed(config)
    records = config.stash[RECORDS_KEY] = RunRecords(options)
    config.pluginmanager.register(records, _RECORDS_PLUGIN)
    if options.report_path and not hasattr(config, "workerinput"):
        # Under xdist the controller writes it, from the facts that come with each report.
        records.open_stream(options.report_path)
    if options.parallel and not _xdist_active(config):
        from .session import ExecSession  # imported only when the feature is on

        config.pluginmanager.register(ExecSession(config), _SESSION_PLUGIN)
        if options.backend == "dask":
            from . import dask_backend  # its pytest_exec_make_backend makes the Dask backend

            config.pluginmanager.register(dask_backend, _DASK_PLUGIN)


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> Generator[None, object, object]:
    """Tag the python plugin's own test module, the one collector a script file must lose."""
    module = yield
    if isinstance(module, pytest.Module):
        module.stash[_PYTHON_MODULE_KEY] = True
    return module


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(
    file_path: Path, parent: pytest.Collector
) -> Generator[None, list[pytest.Collector], list[pytest.Collector]]:
    collectors = yield
    options = parent.config.stash[OPTIONS_KEY]
    if not options.patterns or file_path.name in NEVER_SCRIPTS:
        return collectors
    if not parent.config.stash[PATTERNS_KEY].matches(file_path):
        return collectors
    # A script that runs pytest on itself (pytest.main([__file__]) under __main__) means its
    # own tests: made a script item again, it would run itself again, without end.
    running = parent.config.stash[_RUNNING_SCRIPTS_KEY]
    if running and os.path.realpath(file_path) in running:  # most often none: no realpath
        return collectors
    # A test module (python_files, e.g. test_*.py) stays a test module even if its name
    # also fits a script pattern: collecting it twice would run it twice. If it turns out to
    # hold no test, it was meant as a script: the end of the run says so.
    python_files = [str(pattern) for pattern in parent.config.getini("python_files")]
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in python_files):
        for collector in collectors:
            if collector.stash.get(_PYTHON_MODULE_KEY, False):
                collector.stash[_BOTH_KEY] = True
        return collectors
    # pytest's python plugin makes a test module of any .py named on the command line, and
    # collecting that module would import (run) the script: the script item replaces it.
    # Every other collector stays: --doctest-modules' DoctestModule (a pytest.Module too)
    # runs the file's doctests beside the script item.
    kept = [c for c in collectors if not c.stash.get(_PYTHON_MODULE_KEY, False)]
    return [*kept, ScriptFile.from_parent(parent, path=file_path)]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if collector.stash.get(_BOTH_KEY, False) and report.passed and not report.result:
        collector.config.stash.setdefault(_EMPTY_TEST_MODULES_KEY, []).append(collector.nodeid)
    return report


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # Before any script can start (inline or in the background), and only when one will.
    if scripts_will_run(session):
        session.config.stash[_SCRIPTS_KEY] = True
        protect(session.config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    if isinstance(item, ScriptItem) and call.when == "call":
        result = item.stash.get(RESULT_KEY, None)
        if result is not None:
            # On the item before the reports are made: junit reads them from the teardown's.
            item.user_properties.extend(junit_properties(item.config, result))
    report = yield
    if isinstance(item, ScriptItem):
        item.shape_report(report, call)
        result = item.stash.get(RESULT_KEY, None)
        final = call.when == "call" or (call.when == "setup" and not report.passed)
        if result is not None and final:
            # The script's final report: the facts for the summary and the results file.
            skip_codes = item.config.stash[OPTIONS_KEY].skip_exit_codes
            facts = script_facts(
                result,
                skip_codes,
                tries_allowed(item, item.settings()),
                dirty_facts(item, result),
            )
            if report.skipped and facts["status"] == "error":
                facts["status"] = "skipped"  # exec_missing_resources = skip: counted as pytest does
            setattr(report, FACTS_ATTR, facts)
    return report


_VERBOSE_WORDS = {
    "passed": (".", "PASSED", {"green": True}),
    "failed": ("F", "FAILED", {"red": True}),
    "skipped": ("s", "SKIPPED", {"yellow": True}),
}


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """With -v, a script that held device ids says which: ``PASSED (GPU=0,1)``."""
    facts = getattr(report, FACTS_ATTR, None)
    words = _VERBOSE_WORDS.get(report.outcome)  # another plugin's outcome ("rerun") keeps its own
    if (
        config.get_verbosity() <= 0
        or report.when != "call"
        or words is None
        or not isinstance(facts, dict)
        or not facts.get("resource_ids")
        or hasattr(report, "wasxfail")  # xfail's own words stay
    ):
        return None
    letter, word, markup = words
    return report.outcome, letter, (f"{word} ({describe_assigned(facts['resource_ids'])})", markup)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item) -> bool | None:
    """pytest-timeout: script items time themselves (it would count queue time, or kill us)."""
    return True if isinstance(item, ScriptItem) else None


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    return True if isinstance(item, ScriptItem) else None


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not session.config.stash.get(_SCRIPTS_KEY, False):
        return  # no script ran: nothing can carry the tag, and reading /proc costs time
    # Scripts are killed with their process group; this catches what left the group on
    # purpose (setsid, a daemon) and would otherwise outlive the run.
    found = kill_tagged(SESSION_TAG_VAR, session.config.stash[SESSION_TAG_KEY])
    logger.debug("end-of-session sweep: %d process(es) carried the session tag", found)
    session.config.stash[_LEFTOVERS_KEY] = found
    session.config.stash[_SWEPT_KEY] = True


def pytest_unconfigure(config: pytest.Config) -> None:
    # Swept at the session's end: the guardian may go. Otherwise (the end was interrupted)
    # it sweeps once more as it goes.
    unprotect(config, swept=config.stash.get(_SWEPT_KEY, False))


def _warn_unmatched_patterns(terminalreporter: pytest.TerminalReporter) -> None:
    """A terminal line, not a PytestWarning: under ``filterwarnings = error`` a warning would
    fail every session that collects a subset of the tree (``pytest tests/``)."""
    config = terminalreporter.config
    patterns = config.stash.get(PATTERNS_KEY, None)
    if patterns is None or list(patterns.patterns) == DEFAULT_PATTERNS or _xdist_active(config):
        return  # the default selects nothing in most test trees; xdist's controller collects none
    for pattern in patterns.unmatched():
        where = f" (relative to the rootdir {config.rootpath})" if "/" in pattern else ""
        terminalreporter.write_sep(
            "-",
            f"codomyrmex-exec: exec_script_patterns {pattern!r} matched no collected file{where}",
            yellow=True,
        )


def _warn_lost_to_python_files(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming the files that match both the script patterns and ``python_files``
    and hold no test: they became empty test modules, and never ran as scripts."""
    lost = terminalreporter.config.stash.get(_EMPTY_TEST_MODULES_KEY, [])
    if lost:
        terminalreporter.write_sep(
            "-",
            "codomyrmex-exec: matching both exec_script_patterns and python_files, these "
            f"became test modules without tests and did not run as scripts: {', '.join(lost)} "
            "(narrow python_files or the patterns)",
            yellow=True,
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _warn_unmatched_patterns(terminalreporter)
    _warn_lost_to_python_files(terminalreporter)
    leftovers = terminalreporter.config.stash.get(_LEFTOVERS_KEY, 0)
    if leftovers:
        terminalreporter.write_sep(
            "-",
            f"codomyrmex-exec: killed {leftovers} process(es) that scripts left running "
            "outside their process group",
            yellow=True,
        )
