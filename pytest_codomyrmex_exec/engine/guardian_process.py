"""The guardian's own program, run as ``python -I -S guardian_process.py ROOT FD VAR VALUE``.

It waits on the read end ``FD`` of its owner's pipe. ``q`` before end-of-file: a normal end,
exit. End-of-file alone: the owner died; kill every process whose environment carries
``VAR=VALUE`` (and its group) with :func:`.launch.kill_tagged`, imported from the package
under ``ROOT`` only then, and exit. Until then it imports nothing but ``os``, ``signal`` and
``sys``: its start-up is a bare interpreter's. See :mod:`.guardian`.
"""

from __future__ import annotations

import os
import signal
import sys

QUIT = b"q"
SWEEP_ROUNDS = 5
"""A tree that forks while it is being killed is swept again, a few times at most."""
SWEEP_PAUSE = 0.05


def wait_for_owner(fd: int) -> bool:
    """Block until the owner quits (``False``) or dies (``True``: sweep)."""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if QUIT in chunk:
            return False
        if not chunk:
            return True


def main(argv: list[str]) -> int:
    # Ctrl-C in the terminal, a SIGTERM to the job, a hang-up: they are for the owner; the
    # guardian must outlive it to clean up after it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    root, fd, variable, value = argv[0], int(argv[1]), argv[2], argv[3]
    if not wait_for_owner(fd):
        # A normal end; the owner waits to reap us: skip the interpreter's teardown.
        os._exit(0)
    import time

    sys.path.insert(0, root)
    from pytest_codomyrmex_exec.engine.launch import kill_tagged

    for _ in range(SWEEP_ROUNDS):
        if not kill_tagged(variable, value):
            break
        time.sleep(SWEEP_PAUSE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
