"""The parallel session: start every selected script at once, report each as it finishes."""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence

import pytest

from .backends import JobEvent, ScriptBackend, ScriptJob, make_backend
from .collect import (
    HOOK_ERROR_KEY,
    OPTIONS_KEY,
    RESULT_KEY,
    RUNS_KEY,
    SESSION_TAG_KEY,
    ScriptItem,
)
from .durations import load_durations
from .marks import MarkError
from .settings import child_environment

_WAKE = 0.5


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while the backend kills the scripts; raise it afterwards.

    Users press Ctrl-C twice. The backend's threads are daemons: a second KeyboardInterrupt
    leaving ``close()`` early would let the interpreter exit while they still had scripts to
    kill, and those would run on. ``close()`` is bounded (the kill grace, at most its timeout).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if received:
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
    """Can the script run before its turn? Not if a mark may skip it or its settings are bad.

    skip/skipif/xfail(run=False) are decided by pytest's skipping plugin at setup; rather than
    re-implement its condition evaluation, such scripts wait for their turn and run inline.
    """
    for mark in item.iter_markers():
        if mark.name in ("skip", "skipif"):
            return False
        if mark.name == "xfail" and mark.kwargs.get("run", True) is False:
            return False
    try:
        item.settings()
    except MarkError:
        return False
    return True


def _keeps_fixtures(previous: pytest.Item, following: pytest.Item, script: pytest.Item) -> bool:
    """Would reporting ``script`` between two ordinary tests tear down fixtures they share?

    Reporting tears the setup stack down to what the script's own chain needs; if the two
    tests share a module or class the script is not in, their fixtures would be rebuilt.
    """
    shared = set(previous.listchain()) & set(following.listchain())
    return shared <= set(script.listchain())


class ExecSession:
    """Owns the run loop when ``--exec-parallel`` is on (registered in ``pytest_configure``).

    Ordinary test functions still run one by one in this process; script reports are
    interleaved in the order the scripts finish. The loop always knows the item it runs
    next before it runs the current one, so every report carries a correct ``nextitem``.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._events: queue.SimpleQueue[JobEvent] = queue.SimpleQueue()
        self._background: list[ScriptItem] = []
        self._ordinary: deque[pytest.Item] = deque()
        self._ready: deque[pytest.Item] = deque()
        self._outstanding = 0
        self._backend: ScriptBackend | None = None

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
        self._backend = make_backend(self.config.stash[OPTIONS_KEY], self._events)
        try:
            self._backend.start(self._jobs(), child_environment(self.config.stash[SESSION_TAG_KEY]))
            self._run(session)
        finally:
            with _ctrl_c_deferred():
                self._backend.close()
        return True

    def _plan(self, items: Sequence[pytest.Item]) -> None:
        for item in items:
            if isinstance(item, ScriptItem) and _starts_early(item):
                self._background.append(item)
            else:
                self._ordinary.append(item)
        self._outstanding = len(self._background)

    def _jobs(self) -> list[ScriptJob]:
        """Jobs in start order: priority, then (optionally) longest remembered duration first."""
        by_duration = self.config.stash[OPTIONS_KEY].order == "duration"
        remembered = load_durations(self.config) if by_duration else {}
        jobs = [
            ScriptJob(key=index, path=item.path, settings=item.settings())
            for index, item in enumerate(self._background)
        ]

        def start_order(job: ScriptJob) -> tuple[int, float, int]:
            hint = remembered.get(self._background[job.key].nodeid, 0.0)
            return (job.settings.priority, -hint, job.key)

        return sorted(jobs, key=start_order)

    def _run(self, session: pytest.Session) -> None:
        current = self._next(None, block=True)
        while current is not None:
            following = self._next(current, block=False)
            self.config.hook.pytest_runtest_protocol(item=current, nextitem=following)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
            current = following if following is not None else self._next(current, block=True)

    def _next(self, previous: pytest.Item | None, *, block: bool) -> pytest.Item | None:
        """Commit to the item that runs after ``previous``; wait for a script only if ``block``."""
        while True:
            self._absorb_events(block=False)
            if (
                self._ready
                and self._ordinary
                and previous is not None
                and not isinstance(previous, ScriptItem)
                and not _keeps_fixtures(previous, self._ordinary[0], self._ready[0])
            ):
                return self._ordinary.popleft()
            if self._ready:
                return self._ready.popleft()
            if self._ordinary:
                return self._ordinary.popleft()
            if not (block and self._outstanding):
                return None
            self._absorb_events(block=True)

    def _absorb_events(self, *, block: bool) -> None:
        """Take the backend's news: start hooks, results into the items, finished scripts ready."""
        while True:
            try:
                # A timeout keeps the wait interruptible by Ctrl-C on every platform.
                event = self._events.get(timeout=_WAKE) if block else self._events.get_nowait()
            except queue.Empty:
                if block:
                    continue
                return
            block = False
            item = self._background[event.key]
            if event.result is None:
                with _failing_the_item(item):
                    item.ihook.pytest_exec_script_started(item=item, settings=item.settings())
                continue
            item.stash[RESULT_KEY] = event.result
            item.stash[RUNS_KEY] = event.runs
            with _failing_the_item(item):
                item.ihook.pytest_exec_script_finished(item=item, result=event.result)
            self._ready.append(item)
            self._outstanding -= 1
