"""run_script: run one Python script in its own process group, bounded in time and output."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from ._capture import DEFAULT_OUTPUT_LIMIT, BoundedOutput
from ._launch import (
    RUN_TAG_VAR,
    LaunchPlan,
    finished_result,
    kill_group,
    kill_tagged,
    log_finished,
    plan_launch,
    start_failed,
)
from .results import ScriptResult, ScriptStatus, make_result

logger = logging.getLogger(__name__)

TERMINATE_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL when a script's tree is stopped."""

DRAIN_LIMIT = 1.0
"""Seconds to keep reading pipes after the script has exited (or been killed)."""

ESCAPE_CHECK = 0.1
"""Pipes still open this long after the group was killed: something left the group holding
them (``setsid``, a daemon). It is found by the run's tag and killed."""

_CANCEL_POLL = 0.05
_READ_SIZE = 65536


class CancelSignal(Protocol):
    """Anything with ``is_set()``: a ``threading.Event``, or a token a process pool can pickle."""

    def is_set(self) -> bool: ...


class CancelEvent:
    """A cancel flag that wakes every ``run_script`` waiting on it at once, in this process.

    Other :class:`CancelSignal` objects are polled every few milliseconds; this one puts the
    read end of a pipe into each script's selector, so many waiting scripts cost nothing until
    it is set. Close it once no ``run_script`` uses it any more.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._lock = threading.Lock()
        self._set = False
        self._closed = False

    def set(self) -> None:
        with self._lock:
            # After close() the descriptor may already belong to another file: never write.
            if not self._set and not self._closed:
                os.write(self._write, b"!")  # never read: it stays readable for everyone
            self._set = True

    def is_set(self) -> bool:
        return self._set

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.close(self._read)
        os.close(self._write)


def run_script(
    script_path: str | os.PathLike[str],
    timeout: float | None = 60,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    memory_limit_mb: float | None = None,
    *,
    args: Sequence[str] = (),
    allowed_exit_codes: Collection[int] = (0,),
    python: str | os.PathLike[str] | None = None,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    base_env: Mapping[str, str] | None = None,
    cancel_event: CancelSignal | None = None,
) -> ScriptResult:
    """Run ``script_path`` with ``python`` (default: this interpreter) and return its result.

    The script runs in a new session with empty stdin. On timeout or cancellation its whole
    process group gets SIGTERM, then SIGKILL after :data:`TERMINATE_GRACE` seconds; when the
    script exits, whatever it left running in its group is killed. Nothing the script does
    raises here: it ends up in the result's ``status`` and ``error``. Invalid arguments (a NaN
    timeout, a non-positive memory limit) raise :class:`ValueError`.

    ``env`` entries are added to ``base_env`` (default ``os.environ``); a ``None`` value
    removes a variable. ``cancel_event`` is polled; once set the script is stopped and the
    result is ``cancelled``.
    """
    plan = plan_launch(
        script_path,
        timeout=timeout,
        env=env,
        cwd=cwd,
        memory_limit_mb=memory_limit_mb,
        args=args,
        allowed_exit_codes=allowed_exit_codes,
        python=python,
        base_env=base_env,
    )
    # Built before the child starts: a bad limit must raise without leaving a process behind.
    stdout, stderr = BoundedOutput(output_limit), BoundedOutput(output_limit)
    if not isinstance(plan, LaunchPlan):
        logger.warning("cannot run %s: %s", plan["script"], plan["error"])
        return plan
    if cancel_event is not None and cancel_event.is_set():
        logger.debug("not starting %s: cancelled", plan.script)
        return make_result(str(plan.script), ScriptStatus.CANCELLED, error="cancelled")

    logger.debug("starting %s (timeout=%s)", plan.script, plan.timeout)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=plan.cwd,
            env=plan.env,
            start_new_session=True,
        )
    except OSError as exc:
        return start_failed(logger, plan, exc)

    result = _supervise(proc, plan, started, stdout, stderr, cancel_event)
    log_finished(logger, plan, result)
    return result


def _supervise(
    proc: subprocess.Popen[bytes],
    plan: LaunchPlan,
    started: float,
    stdout: BoundedOutput,
    stderr: BoundedOutput,
    cancel_event: CancelSignal | None,
) -> ScriptResult:
    """Pump output until the child exits, the deadline passes or cancellation; then clean up."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    outputs = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}
    exit_watch = _ExitWatch(proc.pid)
    deadline = None if plan.timeout is None else started + plan.timeout
    selector = selectors.DefaultSelector()
    timed_out = cancelled = False
    try:
        for fd in outputs:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        if exit_watch.fd is not None:
            selector.register(exit_watch.fd, selectors.EVENT_READ)
        woken_on_cancel = isinstance(cancel_event, CancelEvent)
        if isinstance(cancel_event, CancelEvent):
            selector.register(cancel_event.fileno(), selectors.EVENT_READ)

        while not exit_watch.exited():
            if cancel_event is not None and cancel_event.is_set():
                cancelled = True
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                timed_out = True
                break
            wait = None if deadline is None else deadline - now
            if (cancel_event is not None and not woken_on_cancel) or exit_watch.fd is None:
                wait = _CANCEL_POLL if wait is None else min(wait, _CANCEL_POLL)
            _pump(selector, outputs, wait)
        elapsed = time.monotonic() - started
        if isinstance(cancel_event, CancelEvent):
            # Once set it stays readable: left in, it would make the waits below spin.
            selector.unregister(cancel_event.fileno())

        if timed_out or cancelled:
            _terminate(proc.pid, exit_watch, selector, outputs)
            if timed_out:
                elapsed = plan.timeout or elapsed
        # The leader is a zombie (or gone) now: its pid cannot be reused yet, so the group id
        # is still ours. Kill what the script left behind before it can hold the pipes open.
        kill_group(proc.pid)
        if exit_watch.fd is not None:
            # An exited child's pidfd stays readable: left in, it would make the drain spin.
            selector.unregister(exit_watch.fd)
        drain_started = time.monotonic()
        swept = False
        while selector.get_map():
            waited = time.monotonic() - drain_started
            if waited >= DRAIN_LIMIT:
                break
            if not swept and waited >= ESCAPE_CHECK:
                kill_tagged(RUN_TAG_VAR, plan.tag)
                swept = True
            _pump(selector, outputs, (DRAIN_LIMIT if swept else ESCAPE_CHECK) - waited)
        returncode = proc.wait()
    finally:
        selector.close()
        exit_watch.close()
        proc.stdout.close()
        proc.stderr.close()
        if proc.returncode is None:
            # Only reached when something above raised (KeyboardInterrupt, say): leave nothing.
            kill_group(proc.pid)
            proc.wait()

    return finished_result(
        plan,
        returncode=returncode,
        stdout=stdout.text(),
        stderr=stderr.text(),
        elapsed=elapsed,
        timed_out=timed_out,
        cancelled=cancelled,
    )


def _pump(
    selector: selectors.BaseSelector, outputs: dict[int, BoundedOutput], wait: float | None
) -> None:
    """Wait up to ``wait`` seconds for output or exit; read what is there."""
    for key, _ in selector.select(wait):
        fd = key.fd
        sink = outputs.get(fd)
        if sink is None:  # the exit watch fired; the caller checks for exit
            continue
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            continue
        if chunk:
            sink.append(chunk)
        else:
            selector.unregister(fd)


def _terminate(
    pid: int,
    exit_watch: _ExitWatch,
    selector: selectors.BaseSelector,
    outputs: dict[int, BoundedOutput],
) -> None:
    """SIGTERM the group, keep reading while the leader winds down, SIGKILL after the grace."""
    kill_group(pid, signal.SIGTERM)
    give_up = time.monotonic() + TERMINATE_GRACE
    while not exit_watch.exited():
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            break
        _pump(selector, outputs, min(remaining, _CANCEL_POLL))
    kill_group(pid, signal.SIGKILL)
    exit_watch.wait()


class _ExitWatch:
    """Notices the child's exit without reaping it, so its group id stays valid for killpg.

    On Linux a pidfd joins the selector and wakes it at exit; elsewhere the loop polls.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self.fd = os.pidfd_open(pid)
            except OSError:
                self.fd = None
        self._exited = False

    def exited(self) -> bool:
        if not self._exited:
            self._exited = self._check(os.WNOHANG)
        return self._exited

    def wait(self) -> None:
        if not self._exited:
            self._exited = self._check(0)

    def _check(self, extra: int) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | extra)
        except ChildProcessError:
            return True
        return info is not None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
