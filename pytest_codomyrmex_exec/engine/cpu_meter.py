"""``workers="auto"``: how many scripts run at once follows how much CPU the running ones want.

Scripts that mostly sleep (animations, network waits, ``time.sleep``) leave one-per-core
concurrency idle; CPU-bound scripts gain nothing from more than one per core and only slow
each other down. :class:`AutoLimit` starts at one per core (:func:`default_workers`) and,
while scripts run and others wait, looks at most every :data:`SAMPLE_INTERVAL` seconds at
what the running scripts' process trees asked of the CPU over the last window:

    demand per script = (CPU time + time runnable but waiting for a CPU) / wall time / scripts

That is what a script would use on an idle machine, so it is the same whether the machine
is shared or not: a busy loop counts as one core even while other work keeps it off the
CPU (``/proc/<pid>/task/<tid>/schedstat``: time on a CPU and on a run queue). A process
is measured only over windows that open once its start-up is over: its interpreter's
start-up is busy whatever the script does next. It is over once the process has slept
(:data:`SLEPT` s of its life neither on a CPU nor waiting for one: a start-up runs without
a break, and on a loaded machine it waits for a CPU, it does not sleep), or at the latest
once it is :data:`STARTUP` s old. The limit then aims at ``cores / demand per script``
scripts (as many as fit without oversubscribing the cores), at least one per core, at most
:data:`AUTO_CAP_PER_CORE` per core, at most doubling per window so the scripts it adds are
measured before more follow, and it rises only when two windows in a row say so. It falls
as soon as one window finds the scripts busy; running scripts are never stopped, the next
ones just wait.

The scripts are found as the descendants of this process (the runner's children, and the
children of the warm server that pytest started) that carry a run's tag. A process that
starts and ends between two looks is not seen. Without ``/proc`` (macOS, Windows) nothing
can be measured and the limit stays at one per core. Reads a few small files per running
process per look; never imports pytest.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final, Literal, NamedTuple, final

from .launch import RUN_TAG_VAR
from .spec import default_workers

logger = logging.getLogger(__name__)

AUTO: Final = "auto"
"""The ``max_workers`` / ``max_concurrency`` value that makes a runner use an :class:`AutoLimit`."""

Workers = int | Literal["auto"]
"""A running limit as the runners take it: a fixed number, or ``"auto"``."""

SAMPLE_INTERVAL: Final = 0.05
"""Seconds between two looks at the scripts' CPU use (only while some script waits).

A script is measured only between two looks that both see it, so this bounds how short a
script auto can learn from (0.25 s left scripts of 0.2 s unseen, and auto at one per core),
and the ramp from one per core to the cap takes about four looks: at 0.1 s it cost 60
sleepers of 0.2 s 1.24x the best fixed count, at 0.05 s 1.05x. A look costs about 0.17 ms of
CPU for 8 scripts (3.4 ms a second, only while scripts wait)."""

STARTUP: Final = 0.15
"""The most of a process's life left out of its measure as start-up: a busy script never
sleeps, so this is when it starts to count (on a loaded machine a cold start-up can take
longer, and reads busy, which only holds auto back)."""

SLEPT: Final = 0.025
"""Seconds a process must have slept before :data:`STARTUP` for its start-up to count as
over: a sleeping script is then measured from its first sleep, so scripts of 0.2 s are seen,
and a start-up slowed by a loaded machine is not taken for the script's own work. (Start
times come in ticks of 10 ms, so this is at least 15 ms of real sleep.)"""

AUTO_CAP_PER_CORE: Final = 4
"""``auto`` runs at most this many scripts per core, however idle they are."""

_LEAST_DEMAND: Final = 1 / AUTO_CAP_PER_CORE
"""Below this, a script's demand counts as this: the cap per core follows from it."""


def cores() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def auto_cap() -> int:
    """The most scripts ``auto`` ever runs at once: what a pool for it needs."""
    return AUTO_CAP_PER_CORE * cores()


def _read(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            return stream.read().decode("ascii", "replace")
    except OSError:  # the process or thread ended meanwhile
        return ""


_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class _Process(NamedTuple):
    demand: int
    """Nanoseconds its threads have run or waited to run."""
    started: float
    """When it started, in seconds of ``CLOCK_BOOTTIME``."""
    children: list[int]


def _process(pid: int) -> _Process | None:
    """What ``pid`` asked of the CPU, when it started, and its children's pids; ``None``
    once it has ended (also while it waits to be reaped: a zombie's counters stay readable
    and still, so it would count as a script that sleeps)."""
    # The fields after the command's name, which may itself hold a ")": the state first.
    stat = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()
    if len(stat) < 20 or stat[0] in ("Z", "X"):
        return None
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    demand = 0
    children: list[int] = []
    for tid in threads:
        fields = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
        if len(fields) >= 2:
            demand += int(fields[0]) + int(fields[1])
        # Per thread: a child belongs to the thread that started it (a pool thread, say).
        children.extend(int(child) for child in _read(f"/proc/{pid}/task/{tid}/children").split())
    return _Process(demand, int(stat[19]) / _TICKS, children)


def measurable() -> bool:
    """Can this machine tell how much CPU a process tree wants (Linux ``/proc``)?"""
    me = os.getpid()
    return all(os.path.exists(f"/proc/{me}/task/{me}/{name}") for name in ("schedstat", "children"))


class Reading(NamedTuple):
    """One window of a :class:`CpuMeter`."""

    demand: float
    """Cores' worth of CPU the measured scripts' processes wanted during the window."""
    scripts: int
    """Scripts measured: running ones with a process seen before the window."""


_TAG_ENTRY = RUN_TAG_VAR.encode() + b"="


def _run_tag(pid: int) -> bytes | None:
    """The script run ``pid`` belongs to (its :data:`RUN_TAG_VAR`), ``None`` for none (this
    process's other children, the warm server's placeholder of zeros)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            entries = stream.read().split(b"\0")
    except OSError:
        return None
    for entry in entries:
        if entry.startswith(_TAG_ENTRY):
            tag = entry[len(_TAG_ENTRY) :]
            return tag if tag.strip(b"0") else None
    return None


@final
class CpuMeter:
    """The CPU demand of the scripts running below this process, window by window.

    A script is the processes carrying its run's tag (:data:`RUN_TAG_VAR`: the script and
    its children, cold or forked by the warm server), so helpers (the guardian, the warm
    server) count for nothing, and a script whose process has ended is not counted while
    its runner still holds its slot.
    """

    def __init__(self) -> None:
        self._root = os.getpid()
        self._seen: dict[int, int] = {}
        """Each tagged descendant's demand in ns at the last look."""
        self._tags: dict[int, bytes] = {}
        """Each tagged descendant's run tag (read once: it never changes after exec)."""
        self._when: float | None = None
        self._booted = 0.0
        """The last look, in seconds of ``CLOCK_BOOTTIME`` (the clock of a process's start)."""

    def forget(self) -> None:
        """Start over: the next :meth:`sample` only opens a window."""
        self._seen.clear()
        self._when = None

    def sample(self) -> Reading | None:
        """What the running scripts wanted over the window since the last call (``None``
        for the first one).

        A process still in its start-up when the window opened is not measured (see the
        module's policy). A script counts once one of its processes has been measured.
        """
        # The window runs between the middles of two walks, not between the calls: on a
        # loaded machine the caller may wait for a CPU between taking the time and reading
        # the counters, and a window longer than the counters' own makes busy scripts look
        # partly idle.
        walk_began = time.monotonic()
        seen: dict[int, int] = {}
        tags: dict[int, bytes] = {}
        young: set[int] = set()
        """Processes still in their start-up when the window opened."""
        pending = [self._root]
        while pending:
            pid = pending.pop()
            found = _process(pid)
            if found is None:
                continue
            demand, started, children = found
            pending.extend(children)
            if pid == self._root:
                continue  # the runner itself is no script, whatever its environment
            # Untagged ones are read again next time: before its exec a child still has
            # its parent's environment.
            tag = self._tags.get(pid) or _run_tag(pid)
            if tag is not None:
                seen[pid], tags[pid] = demand, tag
                if self._starting(started, self._seen.get(pid)):
                    young.add(pid)
        now = (walk_began + time.monotonic()) / 2
        window = None if self._when is None else now - self._when
        before, self._seen, self._tags, self._when = self._seen, seen, tags, now
        self._booted = time.clock_gettime(time.CLOCK_BOOTTIME)
        if window is None or window <= 0:
            return None
        used = 0
        measured: set[bytes] = set()
        for pid, demand in seen.items():
            known = before.get(pid)
            # Else new, a reused pid, or still in the start-up the window must leave out.
            if known is not None and known <= demand and pid not in young:
                used += demand - known
                measured.add(tags[pid])
        return Reading(used / 1e9 / window, len(measured))

    def _starting(self, started: float, demand_then: int | None) -> bool:
        """Was a process that started at ``started`` (s of ``CLOCK_BOOTTIME``) still in its
        start-up at the last look, when it had wanted ``demand_then`` ns of CPU?"""
        age = self._booted - started
        if age >= STARTUP:
            return False
        return demand_then is None or age - demand_then / 1e9 < SLEPT


@final
class AutoLimit:
    """The running limit of a runner given ``"auto"``: see the module's policy."""

    def __init__(self) -> None:
        self.cores = cores()
        self.floor = min(self.cores, default_workers())
        """Where it starts, and the least it goes down to: one per core (as a fixed
        ``auto`` did)."""
        self.cap = AUTO_CAP_PER_CORE * self.cores
        self.limit = self.floor
        self._meter = CpuMeter() if measurable() else None
        self._next = 0.0
        self._fitted = self.floor
        """What the last window's reading said would fit."""

    def update(self, running: int, waiting: int, now: float) -> int:
        """The limit now; called as often as the runner likes, it looks at most every
        :data:`SAMPLE_INTERVAL` s, and only while scripts run and others wait."""
        if self._meter is None:
            return self.limit
        if not running or not waiting:
            self._meter.forget()  # a window across an idle spell would average it in
            self._fitted = self.floor
            return self.limit
        if now < self._next:
            return self.limit
        self._next = now + SAMPLE_INTERVAL
        try:
            reading = self._meter.sample()
        except Exception:  # a /proc this code does not understand: never lose the run to it
            logger.warning("auto: cannot measure the scripts' CPU use; one per core from now")
            logger.debug("auto: the meter failed", exc_info=True)
            self._meter = None
            self.limit = self.floor
            return self.limit
        if reading is None or not reading.scripts:
            logger.debug("auto: %d running, %d waiting; none measured yet", running, waiting)
            return self.limit
        per_script = max(reading.demand / reading.scripts, _LEAST_DEMAND)
        fits = min(self.cap, max(self.floor, int(self.cores / per_script)))
        # It rises only on two windows in a row: one short window can catch a busy script
        # held up (waiting on the disk, say) and call it idle. It falls on one.
        limit = min(fits, self._fitted, 2 * self.limit)
        if logger.isEnabledFor(logging.DEBUG):
            # What auto saw and did, window by window: the one way to tell afterwards why
            # it stayed low (busy scripts, a loaded machine, nothing measured yet).
            logger.debug(
                "auto: %d running, %d waiting; %d measured wanting %.2f cores; fits %d; "
                "limit %d -> %d",
                running,
                waiting,
                reading.scripts,
                reading.demand,
                fits,
                self.limit,
                limit,
            )
        self.limit, self._fitted = limit, fits
        return self.limit
