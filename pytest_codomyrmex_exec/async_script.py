"""run_script_async: the asyncio counterpart of run_script, on asyncio subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence

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
from .results import ScriptResult
from .runner import DRAIN_LIMIT, ESCAPE_CHECK, TERMINATE_GRACE

logger = logging.getLogger(__name__)


async def run_script_async(
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
) -> ScriptResult:
    """Run a script like :func:`run_script`, without blocking the event loop.

    Same guarantees: own process group, empty stdin, bounded output, SIGTERM-grace-SIGKILL
    of the whole group on timeout, leftovers killed at exit. Cancelling the awaiting task
    stops the script's tree the same way, reaps it, and then re-raises ``CancelledError``.
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
    if not isinstance(plan, LaunchPlan):
        logger.warning("cannot run %s: %s", plan["script"], plan["error"])
        return plan

    logger.debug("starting %s (timeout=%s)", plan.script, plan.timeout)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        transport, child = await loop.subprocess_exec(
            lambda: _ChildProtocol(loop, output_limit),
            *plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=plan.cwd,
            env=plan.env,
            start_new_session=True,
        )
    except OSError as exc:
        return start_failed(logger, plan, exc)

    pid = transport.get_pid()
    timed_out = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), plan.timeout)
        except TimeoutError:
            timed_out = True
            await _terminate(pid, child)
        elapsed = plan.timeout if timed_out and plan.timeout else time.monotonic() - started
        # The script has exited: whatever it left in its group would hold our pipes open.
        kill_group(pid)
        await _drain(child, plan.tag)
    except asyncio.CancelledError:
        logger.debug("cancelled %s: stopping its process tree", plan.script)
        # Shielded so a second cancellation cannot leave the tree running or unreaped.
        await asyncio.shield(_stop_after_cancel(pid, child, plan.tag))
        raise
    finally:
        transport.close()

    returncode = transport.get_returncode()
    assert returncode is not None
    result = finished_result(
        plan,
        returncode=returncode,
        stdout=child.stdout.text(),
        stderr=child.stderr.text(),
        elapsed=elapsed,
        timed_out=timed_out,
        cancelled=False,
    )
    log_finished(logger, plan, result)
    return result


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Feeds the child's pipes straight into bounded buffers and signals exit and EOF.

    Our own protocol rather than ``create_subprocess_exec``: on Python 3.11 its
    ``Process.wait()`` only returns once the pipes close, so a leftover grandchild holding
    them would make a finished script look like a hanging one.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, output_limit: int) -> None:
        self.stdout = BoundedOutput(output_limit)
        self.stderr = BoundedOutput(output_limit)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open_pipes = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        (self.stdout if fd == 1 else self.stderr).append(chunk)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def _terminate(pid: int, child: _ChildProtocol) -> None:
    """SIGTERM the group, wait out the grace, then SIGKILL it and wait for the exit."""
    kill_group(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(child.exited), TERMINATE_GRACE)
    kill_group(pid, signal.SIGKILL)
    await child.exited


async def _drain(child: _ChildProtocol, tag: str) -> None:
    """Let the pipes reach EOF, but not forever: an escaped grandchild may hold one."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(child.pipes_closed), ESCAPE_CHECK)
        return
    # Still open after the group was killed: something left the group. Find it by the tag.
    kill_tagged(RUN_TAG_VAR, tag)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(child.pipes_closed), DRAIN_LIMIT - ESCAPE_CHECK)


async def _stop_after_cancel(pid: int, child: _ChildProtocol, tag: str) -> None:
    if not child.exited.done():
        await _terminate(pid, child)
    kill_group(pid)
    await _drain(child, tag)
