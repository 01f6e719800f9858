"""run_script: run one script to its result, blocking; the selectors pump of the stop sequence."""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, final

from .events import RunEventKind, Subscription
from .launch import COLD, Child, Launcher, LaunchPlan, plan_launch
from .recorder import open_record, read_record
from .results import FailedTry, ScriptResult, ScriptStatus, failed_try
from .spec import SEED_POSITIONAL, ScriptSpec
from .stop import (
    POLL,
    Control,
    Output,
    Wait,
    cancelled_result,
    log_finished,
    start_failed,
    supervise,
)

logger = logging.getLogger("pytest_codomyrmex_exec.engine")

_READ_SIZE = 65536
_LONGEST_SELECT = 86400.0  # one select call never waits longer; the loop simply goes round


class CancelSignal(Protocol):
    """Anything with ``is_set()``: a ``threading.Event``, a token a process pool can pickle,
    a Dask ``Event``."""

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


def spec_of(
    script: str | os.PathLike[str] | ScriptSpec,
    positional: tuple[Any, ...],
    options: dict[str, Any],
) -> ScriptSpec:
    """The spec for a ``run_script``-style call: ``positional`` are :data:`SEED_POSITIONAL`
    fields, ``options`` any fields by name; a given spec gets them applied as changes."""
    if len(positional) > len(SEED_POSITIONAL):
        raise TypeError(
            f"at most {len(SEED_POSITIONAL)} positional settings after the script "
            f"({', '.join(SEED_POSITIONAL)}), got {len(positional)}"
        )
    given = dict(zip(SEED_POSITIONAL, positional, strict=False))
    twice = sorted(given.keys() & options.keys())
    if twice:
        raise TypeError(f"got multiple values for {', '.join(twice)}")
    settings = {**given, **options}
    if isinstance(script, ScriptSpec):
        return script.replace(**settings) if settings else script
    return ScriptSpec.build(script, **settings)


def should_retry(result: ScriptResult, attempt: int, spec: ScriptSpec) -> bool:
    """A failed or timed-out run is tried again while runs are left; errors never are."""
    return attempt < spec.max_runs and result["status"] in (
        ScriptStatus.FAILED,
        ScriptStatus.TIMEOUT,
    )


def finish_attempts(
    result: ScriptResult,
    attempt: int,
    started: bool,
    events: Subscription | None,
    failed: list[FailedTry],
) -> ScriptResult:
    """Record how many runs the final result took, and the failed runs before it; send the
    one ``finished`` event."""
    result["attempts"] = attempt if started else attempt - 1
    result["failed_tries"] = failed
    if events is not None:
        events.emit(RunEventKind.FINISHED, result["script"], result=result, attempt=attempt)
    return result


def announce_retry(
    result: ScriptResult, attempt: int, events: Subscription | None, failed: list[FailedTry]
) -> None:
    """Keep what the failed attempt said in ``failed`` and send the ``retry`` event."""
    failed.append(failed_try(result, attempt))
    logger.info("retrying %s after attempt %d: %s", result["script"], attempt, result["error"])
    if events is not None:
        events.emit(RunEventKind.RETRY, result["script"], result=result, attempt=attempt)


def prepare(
    spec: ScriptSpec, base_env: Mapping[str, str] | None, cancel: CancelSignal | None
) -> LaunchPlan | ScriptResult:
    """The plan, or the result of a run that must not start (bad paths, already cancelled)."""
    plan = plan_launch(spec, None if base_env is None else dict(base_env))
    if not isinstance(plan, LaunchPlan):
        logger.warning("cannot run %s: %s", plan["script"], plan["error"])
        return plan
    if cancel is not None and cancel.is_set():
        logger.debug("not starting %s: cancelled", spec.script)
        return cancelled_result(spec.script)
    return plan


def run_script(
    script_path: str | os.PathLike[str] | ScriptSpec,
    *positional: Any,
    base_env: Mapping[str, str] | None = None,
    cancel_event: CancelSignal | None = None,
    events: Subscription | None = None,
    launcher: Launcher = COLD,
    **options: Any,
) -> ScriptResult:
    """Run a script with ``python`` (default: this interpreter) and return its result.

    ``script_path`` is a path or a :class:`ScriptSpec`. Settings are :class:`ScriptSpec`
    fields: by name in ``options`` (``timeout=60``, ``env``, ``cwd``, ``memory_limit_mb``,
    ``args``, ``allowed_exit_codes``, ``python``, ``output_limit``, ``max_runs``,
    ``stdin``, ...), and the first four also by position (:data:`SEED_POSITIONAL`); given with
    a spec, they change it. The script runs in a new session. On
    timeout or cancellation its whole process group gets SIGTERM, then SIGKILL after
    ``kill_grace`` seconds; when the script exits, whatever it left running (in its
    group, or out of it with its run's tag) is killed at once and named in the result's
    ``leaked`` and ``leaked_count`` (Linux). Nothing the script does raises here: it ends up
    in the result's ``status`` and ``error``. Invalid arguments raise ``ValueError`` or
    ``TypeError``.

    ``env`` entries are added to ``base_env`` (default ``os.environ``); a ``None`` value
    removes a variable. Once ``cancel_event`` is set the script is stopped and the result is
    ``cancelled``. ``events`` receives the run's :class:`RunEvent` stream. With
    ``record=True`` the result's ``record`` lists what the script's own process read,
    imported, wrote and ran (:mod:`~pytest_codomyrmex_exec.engine.recorder`), also when it
    was killed; otherwise it is ``None``.
    """
    spec = spec_of(script_path, positional, options)
    return run_spec(
        spec, base_env=base_env, cancel_event=cancel_event, events=events, launcher=launcher
    )


def run_spec(
    spec: ScriptSpec,
    *,
    base_env: Mapping[str, str] | None = None,
    cancel_event: CancelSignal | None = None,
    events: Subscription | None = None,
    launcher: Launcher = COLD,
) -> ScriptResult:
    """Run ``spec`` to its final result, retrying up to ``max_runs``. A module-level function
    of plain values, so any executor can run it (a process pool, a Dask worker)."""
    attempt = 0
    failed: list[FailedTry] = []
    while True:
        attempt += 1
        result, started = _attempt(spec, base_env, cancel_event, events, launcher, attempt)
        if not should_retry(result, attempt, spec):
            return finish_attempts(result, attempt, started, events, failed)
        announce_retry(result, attempt, events, failed)


@final
@dataclass(slots=True)
class Attempt:
    """One started run: what the stop sequence and its pump work on."""

    plan: LaunchPlan
    child: Child
    output: Output
    control: Control
    started: float

    def supervise(self) -> Generator[Wait, None, ScriptResult]:
        return supervise(self.child, self.plan, self.output, self.control, self.started)

    def end(self, result: ScriptResult) -> tuple[ScriptResult, bool]:
        """The attempt's result, with what the script recorded (read once it has ended)."""
        fd = self.plan.record_fd
        if fd is not None:
            result["record"] = read_record(fd, self.plan.script, self.plan.interpreter)
        log_finished(self.plan, result)
        return result, True

    def close(self) -> None:
        """Release the child and the record file, however the attempt ended."""
        try:
            self.child.close()
        finally:
            _close_record(self.plan)


def _close_record(plan: LaunchPlan) -> None:
    if plan.record_fd is not None:
        os.close(plan.record_fd)


def begin_attempt(
    spec: ScriptSpec,
    base_env: Mapping[str, str] | None,
    cancel: CancelSignal | None,
    events: Subscription | None,
    launcher: Launcher,
    attempt: int,
) -> Attempt | ScriptResult:
    """Start one attempt; or the result of one that could not start (never started)."""
    plan = prepare(spec, base_env, cancel)
    if not isinstance(plan, LaunchPlan):
        return plan
    logger.debug("starting %s (timeout=%s)", plan.script, spec.timeout)
    if spec.record:
        plan = dataclasses.replace(plan, record_fd=open_record())
    try:
        child = launcher.spawn(plan)
    except OSError as exc:
        _close_record(plan)
        return start_failed(plan, exc)
    except BaseException:
        _close_record(plan)
        raise
    started = child.began
    if events is not None:
        events.emit(RunEventKind.STARTED, plan.script, attempt=attempt)
    output = Output(plan, child, events)
    output.attempt = attempt
    return Attempt(plan, child, output, Control(), started)


def _attempt(
    spec: ScriptSpec,
    base_env: Mapping[str, str] | None,
    cancel: CancelSignal | None,
    events: Subscription | None,
    launcher: Launcher,
    attempt: int,
) -> tuple[ScriptResult, bool]:
    begun = begin_attempt(spec, base_env, cancel, events, launcher, attempt)
    if not isinstance(begun, Attempt):
        return begun, False
    try:
        return begun.end(_pump(begun, cancel))
    finally:
        begun.close()


def _pump(attempt: Attempt, cancel: CancelSignal | None) -> ScriptResult:
    """Drive the stop sequence: read output with a selector until each wait is over."""
    sequence = attempt.supervise()
    child, output, control = attempt.child, attempt.output, attempt.control
    cancel_fd = cancel.fileno() if isinstance(cancel, CancelEvent) else None
    polled_cancel = cancel is not None and cancel_fd is None
    for fd in output.open:
        os.set_blocking(fd, False)
    selector = selectors.DefaultSelector()
    registered: set[int] = set()
    try:
        wait = next(sequence)
        while True:
            wanted = set(output.open)
            if wait.for_exit and child.exit_fd is not None:
                wanted.add(child.exit_fd)
            if wait.cancellable and cancel_fd is not None:
                wanted.add(cancel_fd)
            for fd in registered - wanted:
                selector.unregister(fd)
            for fd in wanted - registered:
                selector.register(fd, selectors.EVENT_READ)
            registered = wanted
            while not _over(wait, child, output, control, cancel):
                timeout = _LONGEST_SELECT
                if wait.until is not None:
                    timeout = min(timeout, max(wait.until - time.monotonic(), 0.0))
                if (wait.for_exit and child.exit_fd is None) or (
                    wait.cancellable and polled_cancel
                ):
                    timeout = min(timeout, POLL)
                for key, _ in selector.select(timeout):
                    if key.fd in output.buffers:
                        try:
                            chunk = os.read(key.fd, _READ_SIZE)
                        except BlockingIOError:
                            continue
                        output.received(key.fd, chunk)
                        if not chunk:
                            selector.unregister(key.fd)
                            registered.discard(key.fd)
            wait = sequence.send(None)
    except StopIteration as stop:
        result: ScriptResult = stop.value
        return result
    finally:
        selector.close()


def _over(
    wait: Wait, child: Child, output: Output, control: Control, cancel: CancelSignal | None
) -> bool:
    if wait.cancellable and cancel is not None and cancel.is_set():
        control.cancelled = True
        return True
    if wait.for_exit and child.exited():
        return True
    if not wait.for_exit and not output.open:
        return True
    return wait.until is not None and time.monotonic() >= wait.until
