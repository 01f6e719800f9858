"""The guardian: a small process that kills tagged processes once its owner has died.

A process that starts scripts in their own sessions cannot take them down when it is killed
itself (SIGKILL, the OOM killer, ``os._exit``): nothing of it runs any more. So it starts a
guardian first, in a session of its own (a kill of the owner's process group misses it),
ignoring SIGINT, SIGTERM and SIGHUP, and holding the read end of a pipe whose write end only
the owner has. When the pipe reaches end-of-file without the word ``q`` first, the owner is
gone: the guardian kills every process whose environment carries ``variable=value`` (and
that process's group), and exits. On a normal end the owner writes ``q`` and the guardian
exits without looking.

Linux only: the sweep reads ``/proc/<pid>/environ`` (:func:`.launch.kill_tagged`).

The child program is :mod:`.guardian_process`, run by path: it imports only ``os``, ``signal``
and ``sys`` until it has to sweep, so starting it costs a bare interpreter start-up, in the
background.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import final

from .guardian_process import QUIT

logger = logging.getLogger(__name__)

_RELEASE_WAIT = 5.0
_PROGRAM = Path(__file__).with_name("guardian_process.py")

_write_ends: set[int] = set()
"""Write ends of the live guardians' pipes: a forked child (no exec) closes its copies."""


def _close_write_ends_in_child() -> None:
    for fd in list(_write_ends):
        with suppress(OSError):
            os.close(fd)
    _write_ends.clear()


if hasattr(os, "register_at_fork"):
    # A fork without exec (multiprocessing's fork, a fork server) would keep the pipe open
    # and hide the owner's death from the guardian. exec closes it anyway (O_CLOEXEC).
    os.register_at_fork(after_in_child=_close_write_ends_in_child)


def guardian_supported() -> bool:
    """Can a guardian work here? It needs ``/proc`` to find tagged processes (Linux)."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc")


@final
class Guardian:
    """The owner's handle on its guardian; :meth:`release` at a normal end."""

    def __init__(self, proc: subprocess.Popen[bytes], write_end: int) -> None:
        self._proc = proc
        self._write_end: int | None = write_end

    @property
    def pid(self) -> int:
        return self._proc.pid

    def release(self, *, sweep: bool = False) -> None:
        """Let the guardian go: it exits at once, or (``sweep``) after one last sweep.

        Waits (briefly) for it to exit, so that it is reaped and not left as a zombie.
        """
        write_end, self._write_end = self._write_end, None
        if write_end is None:
            return
        _write_ends.discard(write_end)
        try:
            if not sweep:
                with suppress(OSError):
                    os.write(write_end, QUIT)
        finally:
            os.close(write_end)
        try:
            self._proc.wait(_RELEASE_WAIT)
        except subprocess.TimeoutExpired:
            logger.warning("the guardian (pid %d) did not exit in %g s", self.pid, _RELEASE_WAIT)


def start_guardian(variable: str, value: str) -> Guardian:
    """Start a guardian that kills every process tagged ``variable=value`` if we die.

    Raises ``OSError`` if it cannot be started. Call :meth:`Guardian.release` at the end.
    """
    read_end, write_end = os.pipe()  # both O_CLOEXEC: no script, no other child inherits them
    package_root = str(_PROGRAM.resolve().parent.parent.parent)
    # -I -S: the user's environment and site hooks stay out; a bare interpreter start-up.
    argv = [sys.executable, "-I", "-S", str(_PROGRAM), package_root, str(read_end)]
    try:
        proc = subprocess.Popen(
            [*argv, variable, value],
            stdin=subprocess.DEVNULL,
            # Never the owner's stdout/stderr: whoever reads pytest's output to its end must
            # not wait for the guardian.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(read_end,),
            cwd="/",
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _write_ends.add(write_end)
    logger.debug("guardian started: pid %d, for %s=%s", proc.pid, variable, value)
    return Guardian(proc, write_end)
