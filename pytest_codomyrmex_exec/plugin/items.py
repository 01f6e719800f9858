"""The collector and the item: a ``*_script.py`` file becomes one test item, never imported."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pluggy
import pytest

from ..engine.resources import (
    ResourcePool,
    with_resource_env,
    with_resource_ids,
)
from ..engine.results import FailureCause, ScriptResult, ScriptStatus
from ..engine.run import run_spec
from ..engine.spec import ScriptSpec
from .dirty import dirty_to_fail
from .environment import child_environment
from .expected import CASE_KEY, check_output, script_cases
from .flaky import after_earlier_tries, fails_as_flaky, flaky_verdict, tries_allowed
from .keys import HOOK_ERROR_KEY, LAUNCHER_KEY, OPTIONS_KEY, RESULT_KEY, SESSION_TAG_KEY
from .marks import MarkError, read_script_marks
from .outcome import ScriptFailed, ScriptNotStarted, raise_for_result, script_line
from .settings import pytest_pythonpath, resolve_settings
from .workdir import release_work_folder, restore_paths, spec_for_run

_SETTINGS_KEY = pytest.StashKey["ScriptSpec | MarkError"]()
_REPORTED_KEY = pytest.StashKey[bool]()
"""Set at teardown: the result in RESULT_KEY was reported, and is no later attempt's."""
_FINISHED_AT_KEY = pytest.StashKey[float]()
"""When (wall clock) the script whose result is in RESULT_KEY ended."""


# pytest's, pluggy's and this plugin's code: frames left out when a user's hook raised.
_PLUMBING = (
    Path(pytest.__file__).parent.parent / "_pytest",
    Path(pluggy.__file__).parent,
    Path(__file__).parent,
)


def _is_plumbing(path: Path) -> bool:
    return any(path.is_relative_to(folder) for folder in _PLUMBING)


def _setup_only(config: pytest.Config) -> bool:
    """--setup-only / --setup-plan: pytest runs setups but no test; no script runs either."""
    return bool(config.getoption("setuponly", False) or config.getoption("setupplan", False))


def item_name(path: Path) -> str:
    """The item's name: the script's stem, with ``[ ]`` written ``( )``.

    In a node id ``[`` starts parameters: pytest (9.2+) reads ``x.py::fail[1]_script`` back
    as the item ``fail`` with parameters ``1]_script``, so ``--lf`` would never find the
    item again, and the summary would show ``fail[1]_script]``.
    """
    return path.stem.replace("[", "(").replace("]", ")")


class ScriptFile(pytest.File):
    """A script file; reading its ``# pytest.mark`` lines is all collection does with it."""

    def collect(self) -> list[pytest.Item]:
        try:
            marks = read_script_marks(self.path)
        except MarkError as exc:
            raise self.CollectError(str(exc)) from None
        except OSError as exc:
            raise self.CollectError(f"{self.path}: cannot read: {exc}") from None
        for mark in marks:
            try:
                decorator = getattr(pytest.mark, mark.name)
            except pytest.fail.Exception as exc:  # --strict-markers: an unregistered mark
                raise self.CollectError(f"{self.path}:{mark.lineno}: {exc.msg}") from None
            # On the file, not the item: marks a conftest adds to the item are closer and win
            # per keyword, as marks on a test function beat marks on its module.
            self.add_marker(decorator(*mark.args, **mark.kwargs))
        try:
            cases = script_cases(self)
        except MarkError as exc:
            raise self.CollectError(str(exc)) from None
        if not cases:
            return [ScriptItem.from_parent(self, name=item_name(self.path))]
        items: list[pytest.Item] = []
        for case, keywords in cases:  # exec(cases=...): an item per case, its keywords closest
            name = f"{item_name(self.path)}[{case}]"
            # The node id given as a string, which pytest parses into name and parameters
            # as it does for a parametrized test's: else --lf could not find the item again.
            item = ScriptItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}")
            item.stash[CASE_KEY] = case
            item.add_marker(pytest.mark.exec(**keywords))
            items.append(item)
        return items


class ScriptItem(pytest.Item):
    """One script run as one test: pass on an allowed exit code, fail with its traceback."""

    @property
    def label(self) -> str:
        """The script's path as pytest shows it (relative to the rootdir): its file's node
        id, not this id cut at "::", which a file name may itself contain (c::d_script.py);
        with ``[case]`` for one case of ``exec(cases=...)``."""
        assert self.parent is not None  # a ScriptFile, always
        case = self.stash.get(CASE_KEY, None)
        return self.parent.nodeid if case is None else f"{self.parent.nodeid}[{case}]"

    def settings(self) -> ScriptSpec:
        """Resolve (once) how this script runs; raises MarkError for a bad exec mark."""
        cached = self.stash.get(_SETTINGS_KEY, None)
        if cached is None:
            try:
                cached = resolve_settings(self, self.config.stash[OPTIONS_KEY])
            except MarkError as exc:
                cached = exc
            self.stash[_SETTINGS_KEY] = cached
        if isinstance(cached, MarkError):
            raise cached
        return cached

    def take_result(self, result: ScriptResult, finished_at: float) -> None:
        """Keep the script's result, and when (``time.time()``) it ended."""
        self.stash[RESULT_KEY] = result
        self.stash[_FINISHED_AT_KEY] = finished_at
        # pytest caches the location (logstart asked for it before the script ran): a failed
        # script's is the line it failed at.
        with contextlib.suppress(AttributeError):  # not cached yet
            del self.location

    def setup(self) -> None:
        try:
            self.settings()
        except MarkError as exc:
            raise ScriptNotStarted(str(exc)) from None
        earlier = None
        if self.stash.get(_REPORTED_KEY, False):
            # The item runs again (pytest-rerunfailures): a rerun reruns the script.
            del self.stash[_REPORTED_KEY]
            earlier = self.stash.get(RESULT_KEY, None)
            if RESULT_KEY in self.stash:
                del self.stash[RESULT_KEY]
            if HOOK_ERROR_KEY in self.stash:
                del self.stash[HOOK_ERROR_KEY]
        result = self.stash.get(RESULT_KEY, None)
        if result is None and not _setup_only(self.config):
            # Inline, the script runs here, in setup, so that one that cannot start (no
            # interpreter, no cwd, an exec that fails) is an error, as it is in parallel.
            result = self._run_inline()
            if earlier is not None:  # one result for every try: a pass after them is flaky
                result = self.stash[RESULT_KEY] = after_earlier_tries(earlier, result)
        if result is not None and result.get("worker"):
            # Where it ran (a Dask worker): a junit property, and a line in -v reports.
            self.user_properties.append(("worker", str(result["worker"])))
        if (
            result is not None
            and result["cause"] == FailureCause.RESOURCES
            and self.config.stash[OPTIONS_KEY].missing_resources == "skip"
        ):
            pytest.skip(result["error"] or "")  # exec_missing_resources = skip
        if result is not None and result["status"] == ScriptStatus.ERROR:
            raise ScriptNotStarted(f"{self.label} could not run: {result['error']}")

    def teardown(self) -> None:
        self.stash[_REPORTED_KEY] = True

    def runtest(self) -> None:
        hook_error = self.stash.get(HOOK_ERROR_KEY, None)
        if hook_error is not None:
            raise hook_error
        skip_codes = self.config.stash[OPTIONS_KEY].skip_exit_codes
        result = self.stash[RESULT_KEY]
        mismatches = check_output(self, result, self.settings())
        flaky = None
        if fails_as_flaky(result, self.config.stash[OPTIONS_KEY].flaky):
            flaky = flaky_verdict(result, tries_allowed(self, self.settings()))
        dirty = dirty_to_fail(self, result)
        raise_for_result(self, self.label, result, skip_codes, mismatches, flaky, dirty)

    def _run_inline(self) -> ScriptResult:
        spec = self.settings()
        try:
            self.ihook.pytest_exec_script_started(item=self, settings=spec)
        except Exception as exc:
            self.stash[HOOK_ERROR_KEY] = exc
        from .backends import unmet_resources  # one at a time: only unknown resources matter

        base_env = child_environment(
            self.config.stash[SESSION_TAG_KEY], pytest_pythonpath(self.config)
        )
        events = None
        if self.config.stash[OPTIONS_KEY].live:
            from .live import inline_subscription

            events = inline_subscription(self, self.label)
        options = self.config.stash[OPTIONS_KEY]
        refused = unmet_resources(spec, options.resources)
        if refused is not None:
            result = refused
        else:
            # One script at a time: every unit is free, and it gets the first that fit.
            assigned = ResourcePool(options.resources).take(spec.resources)
            run = with_resource_env(spec_for_run(self, spec), assigned, options.resource_env)
            result = with_resource_ids(
                run_spec(
                    run, base_env=base_env, events=events, launcher=self.config.stash[LAUNCHER_KEY]
                ),
                assigned,
            )
        result = restore_paths(self, result)
        self.take_result(result, time.time())
        try:
            self.ihook.pytest_exec_script_finished(item=self, result=result)
        except Exception as exc:
            self.stash.setdefault(HOOK_ERROR_KEY, exc)
        return result

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScriptFailed):
            return excinfo.value.render(str(self.config.getoption("tbstyle", "auto")))
        if isinstance(excinfo.value, ScriptNotStarted):
            return str(excinfo.value)
        if not self.config.getoption("fulltrace", False):
            # A pytest_exec_* hook raised: show its frames, not pytest's, pluggy's or ours.
            kept = excinfo.traceback.filter(lambda entry: not _is_plumbing(Path(entry.path)))
            if kept:
                excinfo.traceback = kept
        return super().repr_failure(excinfo, style=style)

    def shape_report(self, report: pytest.TestReport, call: pytest.CallInfo[None]) -> None:
        """Make the item's report say what happened to the script, in the script's terms."""
        if call.when == "setup" and RESULT_KEY in self.stash and report.passed:
            # Run inline during setup: its time is the call's, not counted twice.
            report.duration = max(report.duration - self.stash[RESULT_KEY]["execution_time"], 0)
        if call.when == "call":
            release_work_folder(self, report.passed)
            result = self.stash.get(RESULT_KEY, None)
            if result is not None:
                # The call phase only reads a finished result (the script ran in setup, or in
                # the background): report the script's own run, not the microseconds of
                # reading it or its time queued.
                report.duration = result["execution_time"]
                report.stop = self.stash.get(_FINISHED_AT_KEY, report.start + report.duration)
                report.start = report.stop - report.duration
                _time_the_allure_test(self, report)
            if report.skipped and isinstance(report.longrepr, tuple):
                # A cancelled script: pytest.skip() located the skip in outcome.py; the
                # script is where it belongs, as for a skip mark.
                reason = report.longrepr[2]
                report.longrepr = (str(self.path), 1, reason)
        elif report.skipped and isinstance(report.longrepr, tuple) and RESULT_KEY in self.stash:
            # exec_missing_resources = skip (skip marks act before a result exists): at the
            # script, not in this module.
            report.longrepr = (str(self.path), 1, report.longrepr[2])
        elif call.excinfo is not None and isinstance(call.excinfo.value, ScriptNotStarted):
            # pytest renders setup errors as a traceback through its own internals, without
            # asking repr_failure; the cause (missing cwd, bad exec mark) is the whole story.
            report.longrepr = str(call.excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        """The script, at the line it failed at once it has (0-based, as pytest counts; 0
        before it ran or when no traceback frame is in it): what a GitHub Actions annotation
        of the failure points at. A line number is required: pytest asserts one when it
        reports a skip location."""
        result = self.stash.get(RESULT_KEY, None)
        failed_at = 0
        if result is not None and result["status"] != ScriptStatus.PASSED:
            failed_at = script_line(result)
        return self.path, max(failed_at - 1, 0), f"script {self.label}"


def _time_the_allure_test(item: ScriptItem, report: pytest.TestReport) -> None:
    """allure-pytest times a test by its call hook, which for a script only reads the result:
    its test gets the script's own run, as the call report has it."""
    # allure has no public way to time a test: its listener's reporter, read defensively.
    listener = item.config.pluginmanager.get_plugin("allure_listener")
    reporter = getattr(listener, "allure_logger", None)
    test = reporter.get_test(None) if reporter is not None else None  # the one in its call
    if test is not None:
        test.start, test.stop = round(report.start * 1000), round(report.stop * 1000)
