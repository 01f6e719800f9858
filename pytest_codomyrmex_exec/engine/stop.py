"""The one stop sequence of a script run, from start to result, written once for both pumps.

:func:`supervise` is a generator that holds every decision: wait for the exit, the deadline
or a cancel; then SIGTERM the group, a grace period, SIGKILL; kill what the script left in
its group and what left the group carrying the run's tag (named in the result's ``leaked``
when the script had exited by itself); give the pipes a moment, sweep again if something
still holds them; drain; reap; classify. It never does I/O itself: it yields a
:class:`Wait` and the pump that drives it (selectors for ``run_script``, the event loop for
``run_script_async``) reads output into the :class:`Output` until that wait is over.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import final

from .capture import BoundedOutput
from .events import RunEventKind, Stream, Subscription
from .launch import RUN_TAG_VAR, Child, LaunchPlan, kill_group, signal_name
from .leaks import LEAKS_LISTED, Leftover, sweep
from .results import FailureCause, ScriptResult, ScriptStatus, make_result

logger = logging.getLogger("pytest_codomyrmex_exec.engine")

DRAIN_LIMIT = 1.0
"""Seconds to keep reading pipes after the script has exited (or been killed)."""

ESCAPE_CHECK = 0.1
"""Pipes still open this long after the leftovers were killed: one was made while they were
(a fork of a dying daemon) and holds them. The tag finds it, and it is killed too."""

POLL = 0.05
"""How often a pump looks when it has nothing to wake it (no pidfd, a polled cancel flag)."""

# What an allocation refused by RLIMIT_AS leaves in stderr: Python's MemoryError, C's
# ENOMEM text, C++'s bad_alloc. A bare crash signal is not taken as proof on its own.
_MEMORY_ERROR_MARKERS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "std::bad_alloc",
)


@final
@dataclass(frozen=True, slots=True)
class Wait:
    """What the stop sequence waits for next, until ``until`` (monotonic; ``None``: no end).

    ``for_exit``: the script's exit; otherwise the end of its output (both pipes at EOF).
    ``cancellable``: a cancel request ends the wait too (only before the stop has begun).
    """

    until: float | None
    for_exit: bool
    cancellable: bool = False


@final
class Output:
    """The script's two streams: bounded buffers, which pipes are still open, output events."""

    def __init__(self, plan: LaunchPlan, child: Child, subscription: Subscription | None) -> None:
        limit = plan.spec.output_limit
        self.buffers: dict[int, tuple[Stream, BoundedOutput]] = {
            child.stdout_fd: ("stdout", BoundedOutput(limit)),
            child.stderr_fd: ("stderr", BoundedOutput(limit)),
        }
        self.open: set[int] = set(self.buffers)
        self._script = plan.script
        self._events = subscription if subscription is not None and subscription.output else None
        self.attempt = 1

    def received(self, fd: int, chunk: bytes) -> None:
        """Take a chunk read from ``fd``; an empty chunk is EOF."""
        if not chunk:
            self.open.discard(fd)
            return
        stream, buffer = self.buffers[fd]
        buffer.append(chunk)
        if self._events is not None:
            self._events.emit(
                RunEventKind.OUTPUT, self._script, stream=stream, chunk=chunk, attempt=self.attempt
            )

    def text(self, stream: Stream) -> str:
        for name, buffer in self.buffers.values():
            if name == stream:
                return buffer.text()
        raise KeyError(stream)


@final
@dataclass(slots=True)
class Control:
    """What the pump tells the sequence: a cancel was asked for."""

    cancelled: bool = False


def supervise(
    child: Child, plan: LaunchPlan, output: Output, control: Control, started: float
) -> Generator[Wait, None, ScriptResult]:
    """Drive one run from its start to its result; see the module docstring."""
    spec = plan.spec
    deadline = None if spec.timeout is None else started + spec.timeout
    run_for_end = None if spec.run_for is None else started + spec.run_for
    ends = [t for t in (deadline, run_for_end) if t is not None]
    first_end = min(ends) if ends else None

    timed_out = survived = False
    while not child.exited():
        if control.cancelled:
            break
        now = time.monotonic()
        if run_for_end is not None and now >= run_for_end:
            survived = True  # an endless demo still running: it passed its smoke test
            break
        if deadline is not None and now >= deadline:
            timed_out = True
            break
        yield Wait(first_end, for_exit=True, cancellable=True)
    cancelled = control.cancelled and not child.exited()
    elapsed = time.monotonic() - started

    if timed_out or cancelled or survived:
        kill_group(child.pgid, signal.SIGTERM)
        grace_end = time.monotonic() + spec.kill_grace
        while not child.exited() and time.monotonic() < grace_end:
            yield Wait(grace_end, for_exit=True)
        kill_group(child.pgid, signal.SIGKILL)
        while not child.exited():
            yield Wait(None, for_exit=True)
        if timed_out and spec.timeout is not None:
            elapsed = spec.timeout
        elif survived and spec.run_for is not None:
            elapsed = spec.run_for

    # The leader is a zombie now: its pid cannot be reused yet, so the group id is still
    # ours. Kill what the script left behind before it can hold the pipes open: found by
    # group and by tag, at once, not at the end of the run.
    left = sweep_leftovers(plan, child, started)
    kill_group(child.pgid)  # where nothing can be found (no /proc), the group still dies
    drain_start = time.monotonic()
    if output.open:
        yield Wait(drain_start + ESCAPE_CHECK, for_exit=False)
    if output.open:
        # Still open after the sweep: something the first look missed holds them (made while
        # the leftovers were being killed). Look again. A leftover killed by the first look
        # can still be dying (SIGKILL takes effect when it next runs): it is one leftover,
        # not two (CI once named the same `sleep` twice: "3 processes" for 2).
        known = {leftover.pid for leftover in left}
        left += [again for again in sweep_leftovers(plan, child, started) if again.pid not in known]
        yield Wait(drain_start + DRAIN_LIMIT, for_exit=False)
    # A leak is what a script left when it ended by itself; a stopped script's tree is the
    # stop's doing, and its timeout or cancel is the finding.
    leaked = left if not (timed_out or cancelled or survived) else []
    returncode = child.wait()
    if child.lost is not None:  # what ran it (a fork server) died and took its exit status
        return make_result(
            spec.script,
            ScriptStatus.ERROR,
            error=child.lost,
            cause=FailureCause.WORKER_LOST,
            stdout=output.text("stdout"),
            stderr=output.text("stderr"),
            execution_time=elapsed,
        )
    return classify(
        plan,
        returncode=returncode,
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        elapsed=elapsed,
        timed_out=timed_out,
        cancelled=cancelled,
        survived=survived,
        leaked=leaked,
    )


def sweep_leftovers(plan: LaunchPlan, child: Child, started: float) -> list[Leftover]:
    """Kill what the ended script left running, in its group or carrying its run's tag."""
    tag_entry = f"{RUN_TAG_VAR}={plan.tag}".encode()
    left = sweep(tag_entry, child.pgid, child.pid, time.monotonic() - started)
    if left:
        logger.debug("%s left %d process(es) running: killed", plan.script, len(left))
    return left


def classify(
    plan: LaunchPlan,
    *,
    returncode: int,
    stdout: str,
    stderr: str,
    elapsed: float,
    timed_out: bool,
    cancelled: bool,
    survived: bool = False,
    leaked: Sequence[Leftover] = (),
) -> ScriptResult:
    """How a child ended: the one place exit codes become statuses. ``leaked``: what it
    left running when it exited (already killed)."""
    spec = plan.spec
    sig = signal_name(-returncode) if returncode < 0 else None

    def result(
        status: ScriptStatus, error: str | None = None, cause: FailureCause | None = None
    ) -> ScriptResult:
        return make_result(
            spec.script,
            status,
            error=error,
            exit_code=returncode,
            stdout=stdout,
            stderr=stderr,
            execution_time=elapsed,
            signal=sig,
            memory_limit_exceeded=cause == FailureCause.MEMORY_LIMIT,
            cause=cause,
            leaked=[leftover.entry() for leftover in leaked[:LEAKS_LISTED]],
            leaked_count=len(leaked),
        )

    if cancelled:
        return result(ScriptStatus.CANCELLED, "cancelled", FailureCause.CANCELLED)
    if survived:
        return result(ScriptStatus.PASSED)
    if timed_out:
        return result(
            ScriptStatus.TIMEOUT, f"timed out after {spec.timeout:g} s", FailureCause.TIMEOUT
        )
    if returncode in spec.allowed_exit_codes:
        return result(ScriptStatus.PASSED)

    limit = spec.memory_limit_mb
    memory_hit = limit is not None and any(
        marker in stderr[-4096:] for marker in _MEMORY_ERROR_MARKERS
    )
    if memory_hit:
        reason = f"memory limit of {limit:g} MB exceeded"
        reason += f" (killed by {sig})" if sig else f" (exit code {returncode})"
        return result(ScriptStatus.FAILED, reason, FailureCause.MEMORY_LIMIT)
    if sig:
        reason = f"killed by signal {sig} (exit code {returncode})"
        if limit is not None and sig in ("SIGSEGV", "SIGABRT", "SIGBUS"):
            # Native code often crashes rather than report a refused allocation.
            reason += f"; the memory limit of {limit:g} MB may be the cause"
        return result(ScriptStatus.FAILED, reason, FailureCause.SIGNAL)
    return result(ScriptStatus.FAILED, f"exit code {returncode}", FailureCause.EXIT_CODE)


def start_failed(plan: LaunchPlan, exc: OSError) -> ScriptResult:
    """The ``error`` result (and its log line) for a child that could not be started."""
    logger.warning("cannot start %s: %s", plan.script, exc)
    error = f"cannot start: {exc}"
    if exc.errno == errno.ENOENT and exc.filename and os.path.isfile(exc.filename):
        # execve says ENOENT for a file that is there when its "#!" interpreter is not.
        error += " (the file exists: the interpreter its '#!' line names does not)"
    return make_result(
        plan.script, ScriptStatus.ERROR, error=error, cause=FailureCause.START_FAILED
    )


def log_finished(plan: LaunchPlan, result: ScriptResult) -> None:
    """One line per finished script: debug normally, a warning when it could not run."""
    log = logger.warning if result["status"] == ScriptStatus.ERROR else logger.debug
    log(
        "finished %s: %s (exit code %s) in %.3f s",
        plan.script,
        result["status"].value,
        result["exit_code"],
        result["execution_time"],
    )


def cancelled_result(script: str, reason: str = "cancelled") -> ScriptResult:
    """The result of a script a cancel kept from starting."""
    return make_result(script, ScriptStatus.CANCELLED, error=reason, cause=FailureCause.CANCELLED)
