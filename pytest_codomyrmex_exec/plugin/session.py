"""The parallel session: start every selected script at once, report each as it finishes."""

from __future__ import annotations

import contextlib
import gc
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import pytest

from ..engine.events import RunEvent, RunEventKind
from .backends import ScriptBackend, ScriptJob, engine_broke
from .durations import load_durations
from .environment import child_environment
from .guardian import sigterm_is_interrupt
from .items import ScriptItem
from .keys import HOOK_ERROR_KEY, OPTIONS_KEY, SESSION_TAG_KEY
from .live import Backlog, Dropped, LiveOutput, RunningScripts, write_notice
from .marks import MarkError
from .report import RECORDS_KEY
from .settings import pytest_pythonpath
from .workdir import real_terms, restore_paths, spec_for_run

_WAKE = 0.5


_FROZEN_AT_START_UP = gc.get_freeze_count()
"""Objects the interpreter itself froze as it started (none on 3.11, some hundreds from
3.12): a count above it means someone froze since, and that freeze is theirs to undo. The
session's unfreeze at the end gives these back to the collector too, which costs nothing
but a few more objects in its scans."""


class _HeldSignals:
    """Ctrl-C (and SIGTERM) held back while the backend kills the scripts, raised afterwards.

    Users press Ctrl-C twice, and CI runners send SIGTERM while a Ctrl-C is being handled.
    The backend's threads are daemons: a second KeyboardInterrupt leaving ``close()`` early
    would let the interpreter exit while they still had scripts to kill, and those would run
    on. ``close()`` is bounded (the kill grace, at most its timeout). SIGTERM is held back
    when it would interrupt (ours) or kill pytest (the default); a handler of the user's is
    left alone.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def hold(self) -> None:
        """Record the signals from now on; safe to call again if a signal cut it short."""
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._previous:
            held = [signal.SIGINT, *([signal.SIGTERM] if sigterm_is_interrupt() else [])]
            self._previous = {signum: signal.getsignal(signum) for signum in held}
        for signum in self._previous:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1

    def release(self) -> None:
        """Give the handlers back, and raise the interrupt that was held, if any."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if self.received:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _failing_the_item(item: ScriptItem) -> Iterator[None]:
    """Keep what a pytest_exec_* hook raises for the item's own call phase.

    Here the hooks run between items, outside any test protocol: an exception would end the
    session with an internal error. Inline, the same exception fails the script's item; so
    it does here, when the item's turn comes.
    """
    try:
        yield
    except Exception as exc:
        item.stash.setdefault(HOOK_ERROR_KEY, exc)


def _starts_early(item: ScriptItem) -> bool:
    """Can the script run before its turn? Not if a mark is decided at setup or settings are bad.

    skip/skipif/xfail are evaluated by pytest's skipping plugin in the item's setup phase;
    rather than re-implement that, such scripts wait for their turn and run inline. Every
    other script runs in the background and is reported when it has finished.
    """
    for mark in item.iter_markers():
        if mark.name in ("skip", "skipif", "xfail"):
            return False
    try:
        item.settings()
    except MarkError:
        return False
    return True


class ExecSession:
    """Owns the run loop when ``--exec-parallel`` is on (registered in ``pytest_configure``).

    Ordinary test functions (and scripts that must run inline) still go through pytest's test
    protocol one by one, in collection order, each with the next of them as ``nextitem``.
    Scripts that ran in the background are reported between them, in the order they finish,
    each through the test protocol too: its setup reads the result instead of running it.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._events: queue.SimpleQueue[tuple[RunEvent, Dropped]] = queue.SimpleQueue()
        self._background: list[ScriptItem] = []
        self._ordinary: deque[pytest.Item] = deque()
        self._ready: deque[ScriptItem] = deque()
        self._unfinished: set[int] = set()
        self._backend: ScriptBackend | None = None
        live = config.stash[OPTIONS_KEY].live
        self._live = LiveOutput(config, between_items=True) if live else None
        self._backlog = Backlog()
        self._running = self._new_running()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> object:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            count = session.testsfailed
            raise session.Interrupted(f"{count} error{'s' if count != 1 else ''} during collection")
        if session.config.option.collectonly:
            return True
        if session.config.getoption("setuponly", False):
            return None  # --setup-only/--setup-plan: pytest's loop runs no call phase, no script
        if not any(isinstance(item, ScriptItem) for item in session.items):
            return None  # nothing for us: pytest's own loop runs the tests

        self._plan(session.items)
        self._running = self._new_running()  # the quiet that counts starts now, not at configure
        backend: ScriptBackend = self.config.hook.pytest_exec_make_backend(config=self.config)
        self._backend = backend
        held = _HeldSignals()
        # What collection built (nodes, marks, specs) lives as long as the run: kept out of
        # the garbage collector's scans while every item's report adds to the heap. Unless
        # someone froze since start-up (then their unfreeze is theirs).
        frozen = gc.get_freeze_count() == _FROZEN_AT_START_UP
        if frozen:
            gc.freeze()
        try:
            base_env = child_environment(
                self.config.stash[SESSION_TAG_KEY], pytest_pythonpath(self.config)
            )
            backend.start(self._jobs(), base_env, self._post)
            self._run(session)
        finally:
            # Two signals can be pending together (both came while pytest was stopped, or
            # the machine stalled): the first ended the run, the second is raised at the
            # first call here, before any handler of ours is in place. So the holding is
            # retried right here, in this frame: a call before the loop (even the one that
            # makes ``held``) would be too late, for Python runs pending handlers on a call.
            while True:
                try:
                    held.hold()
                    break
                except KeyboardInterrupt:
                    held.received += 1
            try:
                self._stop(backend)
            finally:
                if frozen:
                    gc.unfreeze()
                held.release()
        return True

    def _new_running(self) -> RunningScripts:
        return RunningScripts(self.config.stash[OPTIONS_KEY].running_notice_after)

    def _stop(self, backend: ScriptBackend) -> None:
        """Cancel for good, wait for the background, and say so if it will not stop."""
        backend.cancel()
        report_after = self.config.stash[OPTIONS_KEY].stop_report_after
        if not backend.join(report_after):
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            message = (
                f"codomyrmex-exec: the backend did not stop within {report_after:g} s; "
                "waiting for it so that no script outlives the run"
            )
            if reporter is not None:
                write_notice(reporter, message)
            backend.join(24 * 3600.0)

    def _plan(self, items: Sequence[pytest.Item]) -> None:
        for item in items:
            if isinstance(item, ScriptItem) and _starts_early(item):
                self._background.append(item)
            else:
                self._ordinary.append(item)
        self._unfinished = set(range(len(self._background)))

    def _jobs(self) -> list[ScriptJob]:
        """Jobs in start order: priority, then (optionally) longest remembered duration first."""
        by_duration = self.config.stash[OPTIONS_KEY].order == "duration"
        remembered = load_durations(self.config) if by_duration else {}
        live = self._live is not None
        jobs = [
            ScriptJob(key=index, spec=spec_for_run(item, item.settings()), output=live)
            for index, item in enumerate(self._background)
        ]

        def start_order(job: ScriptJob) -> tuple[float, float, int]:
            hint = remembered.get(self._background[job.key].nodeid, 0.0)
            return (job.spec.priority, -hint, job.key)

        return sorted(jobs, key=start_order)

    def _run(self, session: pytest.Session) -> None:
        while True:
            self._absorb_events(block=False)
            if self._ready:
                self._report(session, self._ready.popleft())
            elif self._ordinary:
                item = self._ordinary.popleft()
                following = self._ordinary[0] if self._ordinary else None
                self.config.hook.pytest_runtest_protocol(item=item, nextitem=following)
            elif self._unfinished:
                self._absorb_events(block=True)
                continue
            else:
                return
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)

    def _report(self, session: pytest.Session, item: ScriptItem) -> None:
        """Report a script that ran in the background through the whole test protocol.

        The protocol's hooks (logstart, setup/call/teardown with their makereport and
        logreport, logfinish) are where other plugins keep their state for a test:
        pytest-json-report and allure-pytest read in their makereport wrappers what their
        protocol and setup wrappers made, and pytest-rerunfailures drives the protocol itself
        to rerun a failed script inline. The item's setup finds the result already there,
        so nothing runs twice. The protocol sets up and tears down the item's collectors,
        while the setup state holds those of the ordinary test that comes next: the script
        gets a setup state of its own for the while. pytest has no public way to run one
        item's protocol beside another's setup state.
        """
        kept = session._setupstate
        session._setupstate = type(kept)()
        try:
            item.ihook.pytest_runtest_protocol(item=item, nextitem=None)
        finally:
            session._setupstate = kept

    def _post(self, event: RunEvent) -> None:
        """The backend's sink (any thread): output beyond the backlog is dropped, counted."""
        dropped = self._backlog.admit(event)
        if dropped is not None:
            self._events.put((event, dropped))

    def _absorb_events(self, *, block: bool) -> None:
        """Take the backend's news: start hooks, results into the items, finished scripts ready."""
        while True:
            try:
                # A timeout keeps the wait interruptible by Ctrl-C on every platform.
                event = self._events.get(timeout=_WAKE) if block else self._events.get_nowait()
            except queue.Empty:
                if not block:
                    return
                self._check_backend()
                if not self._unfinished:
                    return  # the backend died and its scripts were reported for it
                self._say_what_runs()
                continue
            block = False
            self._take(*event)

    def _take(self, event: RunEvent, dropped: Dropped | None = None) -> None:
        item = self._background[event.key]
        if self._live is not None and event.kind != RunEventKind.STARTED:
            # Output lines, written from this (main) thread.
            self._live.take(event, item.label, dropped, real_terms(item))
        if event.kind == RunEventKind.OUTPUT:
            self._backlog.shown(event)
            return
        if event.kind == RunEventKind.STARTED:
            self._running.started(event.key, item.label, event.time)
            records = self.config.stash[RECORDS_KEY]
            records.most_at_once = max(records.most_at_once, len(self._running))
        if event.kind == RunEventKind.STARTED and event.attempt == 1:
            with _failing_the_item(item):
                item.ihook.pytest_exec_script_started(item=item, settings=item.settings())
        elif event.kind == RunEventKind.FINISHED and event.key in self._unfinished:
            assert event.result is not None
            self._unfinished.discard(event.key)
            self._running.finished(event.key)
            result = restore_paths(item, event.result)
            item.take_result(result, event.time)
            with _failing_the_item(item):
                item.ihook.pytest_exec_script_finished(item=item, result=result)
            self._ready.append(item)

    def _say_what_runs(self) -> None:
        """After a long wait with no script finishing, say which scripts run and how long."""
        line = self._running.notice()
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if line is not None and reporter is not None:
            write_notice(reporter, line)

    def _check_backend(self) -> None:
        """A backend that died with scripts unreported would leave us waiting forever."""
        backend = self._backend
        if backend is None or backend.alive() or not self._unfinished:
            return
        while True:  # what it posted before it ended comes first
            try:
                self._take(*self._events.get_nowait())
            except queue.Empty:
                break
        for key in sorted(self._unfinished):
            spec = self._background[key].settings()
            result = engine_broke(spec, "the backend stopped before the script was reported")
            self._take(RunEvent(RunEventKind.FINISHED, key, spec.script, time.time(), result))
