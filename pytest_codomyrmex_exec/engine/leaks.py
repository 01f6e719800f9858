"""What a script left running when it ended: found in the process table, named, killed.

A script's descendants are found two ways: still in its process group (the group id stays
taken while any member lives, even once the leader is reaped), or carrying the script's
:data:`~.launch.RUN_TAG_VAR` value in their environment after leaving the group (``setsid``,
a daemon's double fork). Linux only (``/proc``); elsewhere nothing is found and the stop
sequence's group kill is all there is.

Cost: only processes made after the script are read. Linux hands out pids in increasing
order, wrapping at ``pid_max``, so a descendant's pid lies after the script's and up to
``/proc/sys/kernel/ns_last_pid``; reading a process's files is what costs. When few pids were
handed out since the script's (:data:`PROBE_LIMIT`), those pids are looked at one by one,
since a pid that is gone costs one failed ``open``; otherwise ``/proc`` is listed, which on a
busy machine (hundreds of processes) cost more than the rest of a tiny script's supervision.
A script that ran long enough for the pids to wrap all the way round
(:data:`PROCESSES_PER_SECOND`) gets every process read.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import final

from .results import LeakedProcess

LEAKS_LISTED = 20
"""Leftover processes a result names (its ``leaked``); ``leaked_count`` counts them all."""

COMMAND_CHARS = 200
"""Characters of a leftover's command line kept in its entry."""

PROCESSES_PER_SECOND = 50_000
"""More processes than any machine makes in a second (a fork loop makes tens of thousands):
a script that ran less than ``pid_max`` divided by this cannot have seen the pids wrap all
the way round, so its pid still bounds its descendants' (0.66 s with the smallest
``pid_max``, 32,768; 84 s with systemd's 4,194,304)."""

PROBE_LIMIT = 128
"""At most this many pids handed out since the script's are looked at one by one; more, and
``/proc`` is listed instead (a listing costs about what a hundred failed looks do)."""

SWEEP_ROUNDS = 3
"""Scans per sweep at most: a leftover may fork while it is being killed."""

EXEC_WAIT = 0.05
"""Seconds a sweep waits, at most, for a process whose environment and command line both
read empty. Such a process was caught inside ``execve``: its old memory is gone and its new
arguments and environment not yet set up (one started with no environment still has its
command line). A daemon the script started just before it exited can be there when the
sweep looks, on a loaded machine, and without its tag it went unnamed (found only at the
session's end). A kernel thread's environment is empty for good, and is not waited for."""

_KERNEL_THREAD = 0x00200000
"""``PF_KTHREAD`` in the flags of ``/proc/<pid>/stat``."""

_PROC = "/proc"
_LAST_PID = "/proc/sys/kernel/ns_last_pid"
_PID_MAX = "/proc/sys/kernel/pid_max"


@final
@dataclass(frozen=True, slots=True)
class Leftover:
    """One process found still running: its pid, its group (killed with it), its command."""

    pid: int
    pgid: int
    command: str

    def entry(self) -> LeakedProcess:
        return LeakedProcess(pid=self.pid, command=self.command)


def _read(path: str, chunk_size: int = 16384) -> bytes | None:
    """The whole of a ``/proc`` file, or ``None`` (gone meanwhile, or not ours to read).
    ``chunk_size``: bytes per read; what a read returns short of it ends the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, chunk_size)]
        while len(chunks[-1]) == chunk_size:
            chunks.append(os.read(fd, chunk_size))
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def environ_has(pid: int, entry: bytes) -> bool:
    """Does ``pid``'s environment hold ``entry`` (``b"NAME=value"``) exactly?"""
    return _holds(_read(f"{_PROC}/{pid}/environ"), entry)


def _holds(environ: bytes | None, entry: bytes) -> bool:
    return environ is not None and entry in environ.split(b"\0")


@final
@dataclass(frozen=True, slots=True)
class _Stat:
    state: str
    group: int
    name: str
    kernel: bool
    """A kernel thread: no environment, no group of a script's."""


def _stat(pid: int) -> _Stat | None:
    """``pid``'s state letter, process group, name and kind, or ``None`` once it is gone."""
    text = _read(f"{_PROC}/{pid}/stat", 1024)
    if not text:
        return None
    # "pid (name) state ppid pgrp session tty tpgid flags ...": the name may hold spaces
    # and parentheses.
    head, _, rest = text.rpartition(b")")
    fields = rest.split()
    try:
        return _Stat(
            fields[0].decode(),
            int(fields[2]),
            head.partition(b"(")[2].decode(errors="replace"),
            bool(int(fields[6]) & _KERNEL_THREAD),
        )
    except (IndexError, ValueError):
        return None


def _tagged(pid: int, tag_entry: bytes) -> bool:
    """Does ``pid`` carry ``tag_entry``, once its environment can be read (see
    :data:`EXEC_WAIT`)?"""
    path = f"{_PROC}/{pid}/environ"
    block = _read(path)
    deadline = time.monotonic() + EXEC_WAIT
    while block == b"" and _read(f"{_PROC}/{pid}/cmdline") == b"":
        if time.monotonic() >= deadline:
            break
        time.sleep(0.001)
        block = _read(path)
    return _holds(block, tag_entry)


def _is_process(pid: int) -> bool:
    """Is ``pid`` a process, not one of its threads? A thread's id opens ``/proc/<tid>`` as
    well (only a listing leaves it out), with its process's group and environment."""
    status = _read(f"{_PROC}/{pid}/status", 4096) or b""
    return f"\nTgid:\t{pid}\n".encode() in status


def _command(pid: int, name: str) -> str:
    raw = _read(f"{_PROC}/{pid}/cmdline") or b""
    words = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    command = words or f"[{name}]"
    return command if len(command) <= COMMAND_CHARS else command[: COMMAND_CHARS - 3] + "..."


def _number(path: str) -> int | None:
    text = _read(path, 64)
    try:
        return int(text) if text else None
    except ValueError:
        return None


@functools.cache
def _pid_max() -> int:
    return _number(_PID_MAX) or 32768  # the kernel's smallest default


def _candidates(leader: int, ran_for: float) -> list[int]:
    """The pids that may be the script's descendants: those made after it, when that can be
    told (see the module docstring); else every process but the script itself. Looked at one
    by one, some are gone and some are the ids of threads (see :func:`_is_process`)."""
    last = _number(_LAST_PID) if ran_for < _pid_max() / PROCESSES_PER_SECOND else None
    if last is not None:
        if last >= leader:
            since = range(leader + 1, last + 1)
        else:  # the pids wrapped round
            since = range(leader + 1, last + 1 + _pid_max())
        if len(since) <= PROBE_LIMIT:
            return [pid % _pid_max() for pid in since]
    try:
        listed = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return []
    if last is None:
        return [pid for pid in listed if pid != leader]
    if last >= leader:
        return [pid for pid in listed if leader < pid <= last]
    return [pid for pid in listed if pid > leader or pid <= last]  # the pids wrapped round


def find_leftovers(tag_entry: bytes, pgid: int, leader: int, ran_for: float) -> list[Leftover]:
    """The live processes in group ``pgid`` or with ``tag_entry`` in their environment,
    other than the script (``leader``) and this process. ``ran_for``: the script's seconds."""
    me = os.getpid()
    found = []
    for pid in _candidates(leader, ran_for):
        if pid == me:
            continue
        stat = _stat(pid)
        if stat is None or stat.kernel:
            continue
        if stat.state in ("Z", "X"):  # it has ended; only its parent's wait is missing
            continue
        if (stat.group == pgid or _tagged(pid, tag_entry)) and _is_process(pid):
            found.append(Leftover(pid, stat.group, _command(pid, stat.name)))
    return found


def kill_leftovers(leftovers: list[Leftover]) -> None:
    """SIGKILL each leftover and its process group (never this process's own group)."""
    own_group = os.getpgrp()
    for leftover in leftovers:
        if leftover.pgid != own_group:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(leftover.pgid, signal.SIGKILL)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(leftover.pid, signal.SIGKILL)


def sweep(tag_entry: bytes, pgid: int, leader: int, ran_for: float) -> list[Leftover]:
    """Find and kill what the script left, until a scan finds nothing new; all it found."""
    if not os.path.isdir(_PROC):
        return []
    seen: dict[int, Leftover] = {}
    for _ in range(SWEEP_ROUNDS):
        fresh = [
            leftover
            for leftover in find_leftovers(tag_entry, pgid, leader, ran_for)
            if leftover.pid not in seen
        ]
        if not fresh:
            break
        kill_leftovers(fresh)
        seen.update((leftover.pid, leftover) for leftover in fresh)
    return list(seen.values())
