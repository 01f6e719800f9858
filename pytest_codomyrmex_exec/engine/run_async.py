"""run_script_async: run_script without blocking the event loop; the asyncio pump.

The script is started by the same launcher and stopped by the same sequence as
:func:`run_script`; only the waiting differs. Its pipes and its pidfd are watched with
``loop.add_reader``, so no child watcher (deprecated since Python 3.12) and no thread per
script is involved.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from .events import Subscription
from .launch import COLD, Launcher
from .results import FailedTry, ScriptResult
from .run import (
    _READ_SIZE,
    Attempt,
    announce_retry,
    begin_attempt,
    finish_attempts,
    should_retry,
    spec_of,
)
from .spec import ScriptSpec
from .stop import POLL, Wait

logger = logging.getLogger("pytest_codomyrmex_exec.engine")


async def run_script_async(
    script_path: str | os.PathLike[str] | ScriptSpec,
    *positional: Any,
    base_env: Mapping[str, str] | None = None,
    events: Subscription | None = None,
    launcher: Launcher = COLD,
    **options: Any,
) -> ScriptResult:
    """Run a script like :func:`run_script`, without blocking the event loop.

    Same guarantees: own process group, bounded output, SIGTERM-grace-SIGKILL of the whole
    group on timeout, leftovers killed at exit. Cancelling the awaiting task stops the
    script's tree the same way; ``CancelledError`` is raised only once the tree is dead and
    reaped, however many times the task is cancelled meanwhile.
    """
    spec = spec_of(script_path, positional, options)
    return await run_spec_async(spec, base_env=base_env, events=events, launcher=launcher)


async def run_spec_async(
    spec: ScriptSpec,
    *,
    base_env: Mapping[str, str] | None = None,
    events: Subscription | None = None,
    launcher: Launcher = COLD,
) -> ScriptResult:
    """:func:`run_spec` for the event loop, retries included."""
    attempt = 0
    failed: list[FailedTry] = []
    while True:
        attempt += 1
        result, started = await _attempt(spec, base_env, events, launcher, attempt)
        if not should_retry(result, attempt, spec):
            return finish_attempts(result, attempt, started, events, failed)
        announce_retry(result, attempt, events, failed)


async def _attempt(
    spec: ScriptSpec,
    base_env: Mapping[str, str] | None,
    events: Subscription | None,
    launcher: Launcher,
    attempt: int,
) -> tuple[ScriptResult, bool]:
    begun = begin_attempt(spec, base_env, None, events, launcher, attempt)
    if not isinstance(begun, Attempt):
        return begun, False
    try:
        return begun.end(await _LoopPump(begun).drive())
    finally:
        begun.close()


class _LoopPump:
    """Reads the child's pipes from the event loop and wakes the sequence when a wait may end."""

    def __init__(self, attempt: Attempt) -> None:
        self._loop = asyncio.get_running_loop()
        self._attempt = attempt
        self._child = attempt.child
        self._output = attempt.output
        self._control = attempt.control
        self._wake: asyncio.Future[None] | None = None
        self._watched: set[int] = set()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _readable(self, fd: int) -> None:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        self._output.received(fd, chunk)
        if not chunk:
            self._unwatch(fd)
            self._poke()

    def _exited(self) -> None:
        # A pidfd stays readable once the child has exited: one wake-up is all it is for.
        if self._child.exit_fd is not None:
            self._unwatch(self._child.exit_fd)
        self._poke()

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched:
            self._loop.remove_reader(fd)
            self._watched.discard(fd)

    async def drive(self) -> ScriptResult:
        sequence = self._attempt.supervise()
        for fd in self._output.open:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._readable, fd)
            self._watched.add(fd)
        exit_fd = self._child.exit_fd
        if exit_fd is not None:
            self._loop.add_reader(exit_fd, self._exited)
            self._watched.add(exit_fd)
        interrupted = False
        try:
            wait = next(sequence)
            while True:
                while not self._over(wait):
                    try:
                        await self._sleep(wait)
                    except asyncio.CancelledError:
                        # The tree must be dead before this returns: note it, stop the script
                        # (if the stop has not begun yet) and carry on to the end.
                        interrupted = True
                        if wait.cancellable:
                            self._control.cancelled = True
                wait = sequence.send(None)
        except StopIteration as stop:
            result: ScriptResult = stop.value
        finally:
            for fd in list(self._watched):
                self._unwatch(fd)
        if interrupted:
            logger.debug("cancelled %s: its process tree is dead", result["script"])
            raise asyncio.CancelledError
        return result

    def _over(self, wait: Wait) -> bool:
        if wait.cancellable and self._control.cancelled:
            return True
        if wait.for_exit and self._child.exited():
            return True
        if not wait.for_exit and not self._output.open:
            return True
        return wait.until is not None and time.monotonic() >= wait.until

    async def _sleep(self, wait: Wait) -> None:
        delay: float | None = None
        if wait.until is not None:
            delay = max(wait.until - time.monotonic(), 0.0)
        if wait.for_exit and self._child.exit_fd is None:
            delay = POLL if delay is None else min(delay, POLL)
        self._wake = self._loop.create_future()
        timer = None if delay is None else self._loop.call_later(delay, self._poke)
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()
