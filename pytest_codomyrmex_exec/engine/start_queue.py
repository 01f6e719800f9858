"""The one scheduling core: which waiting jobs start now, by priority, resources and a limit.

:class:`ParallelRunner`, :class:`AsyncScheduler` and :class:`AsyncParallelRunner` keep their
waiting jobs in a :class:`StartQueue` and start what it hands out. The policy, in one place:

- Waiting jobs are taken in **start order**: lower ``priority`` first, then the order in
  which they were pushed.
- At most ``limit`` jobs run at once (``None``: no limit). The limit may change between
  walks (``workers="auto"``, see :mod:`.cpu_meter`); lowering it stops no running job.
- With capacities, a job starts only when its whole ``demand`` is free, so resources are never
  oversubscribed; without capacities demands are not tracked. The :class:`ResourcePool` picks
  the units (device ids) a job gets; they are on its ticket (``assigned``) while it runs.
- An **exclusive** job runs alone: it starts only when nothing runs and no job ahead of it in
  this walk starts; while it cannot, the walk stops at it, so nothing behind it starts (it
  reserves everything) and it starts as soon as the running jobs end. While it runs nothing
  else starts. It is placed by priority like any other.
- **Backfill without starvation.** Walking the start order, a job that cannot start yet
  *reserves* its demand: the jobs after it may start only in what is free beyond every
  reservation ahead of them. A job behind may therefore pass one that waits, but only with
  resources the waiting one does not need, so it can never delay it. A two-GPU job waiting
  behind two running one-GPU jobs starts as soon as those two end, however many one-GPU jobs
  queue behind it.

Running slots are not reserved: a job's resources and its slot are given back together, and
the next walk offers the slot to the first job in start order that fits.

Not thread-safe: one thread (or event loop) pushes, hands out and releases.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar, final

from .resources import Amounts, ResourcePool, unmet_demand

_T = TypeVar("_T")

_Lane = tuple[frozenset[tuple[str, float]], bool]
"""A distinct demand, and whether it is exclusive. Jobs with the same demand wait in one lane,
in start order: if the first of a lane cannot start, none behind it can, which keeps a walk
short."""


@final
@dataclass(eq=False, slots=True)
class Ticket(Generic[_T]):
    """One job in a :class:`StartQueue`: what it is, where it stands, what it needs."""

    job: _T
    priority: float
    sequence: int
    """Its place among jobs of equal priority: the order it was pushed."""
    demand: dict[str, float] = field(default_factory=dict)
    """What it holds while it runs (empty when the queue does not track resources)."""
    exclusive: bool = False
    """It runs with no other job running."""
    assigned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The ids of the units it holds, by resource, from when it starts (e.g. the GPUs for
    ``CUDA_VISIBLE_DEVICES``: see :func:`resource_env`)."""

    @property
    def rank(self) -> tuple[float, int]:
        """Its place in the start order."""
        return (self.priority, self.sequence)


@final
class StartQueue(Generic[_T]):
    """Waiting jobs, and the decision which of them start now (see the module's policy)."""

    def __init__(self, *, limit: int | None = None, capacities: Amounts | None = None) -> None:
        self._limit: int | None = None
        self.limit = limit
        self._tracked = capacities is not None
        self._pool = ResourcePool(capacities or {})
        self._lanes: dict[_Lane, list[Ticket[_T]]] = {}
        self._running: set[Ticket[_T]] = set()
        self._alone = False
        """An exclusive job runs: nothing else starts."""
        self._sequence = 0
        self._waiting = 0

    @property
    def capacities(self) -> dict[str, float] | None:
        """The capacities given, or ``None`` when resources are not tracked."""
        return dict(self._pool.capacities) if self._tracked else None

    @property
    def limit(self) -> int | None:
        """How many jobs may run at once (``None``: no limit); the next walk follows a change."""
        return self._limit

    @limit.setter
    def limit(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"the limit of running jobs must be at least 1, got {limit}")
        self._limit = limit

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len(self._running)

    def refusal(self, demand: Amounts, where: str = "this runner") -> str | None:
        """Why ``demand`` could never start here, naming the resource; ``None`` if it could
        (always, when resources are not tracked). Push only demands with no refusal."""
        return unmet_demand(demand, self._pool.capacities, where) if self._tracked else None

    def push(
        self,
        job: _T,
        *,
        priority: float = 0,
        demand: Amounts | None = None,
        exclusive: bool = False,
    ) -> Ticket[_T]:
        """Add a waiting job; its ticket is what :meth:`withdraw` and :meth:`release` take.

        The caller has checked ``priority`` (a number, not NaN) and ``demand`` (no
        :meth:`refusal`): a demand that can never fit would wait forever.
        """
        wanted = dict(demand or {}) if self._tracked else {}
        ticket = Ticket(job, priority, self._sequence, wanted, exclusive)
        self._sequence += 1
        lane = self._lanes.setdefault(_lane(ticket), [])
        bisect.insort(lane, ticket, key=_rank)
        self._waiting += 1
        return ticket

    def withdraw(self, ticket: Ticket[_T]) -> bool:
        """Take a waiting job out (it will not start); ``False`` if it was not waiting."""
        key = _lane(ticket)
        lane = self._lanes.get(key, [])
        index = bisect.bisect_left(lane, ticket.rank, key=_rank)
        if index == len(lane) or lane[index] is not ticket:
            return False
        del lane[index]
        if not lane:
            del self._lanes[key]
        self._waiting -= 1
        return True

    def pop_ready(self) -> list[Ticket[_T]]:
        """The jobs that start now, in start order: they count as running and hold their
        demand until :meth:`release`. Call again whenever a job was pushed or released."""
        if self._alone:
            return []
        free = self._pool.copy()  # the walk takes what starts and reserves what waits
        starting: list[Ticket[_T]] = []
        taken: dict[_Lane, int] = {}
        # One entry per lane: its next job that has not been looked at in this walk.
        fronts = [(lane[0].rank, 0, key) for key, lane in self._lanes.items()]
        heapq.heapify(fronts)
        while fronts and (self._limit is None or self.running + len(starting) < self._limit):
            _, position, key = heapq.heappop(fronts)
            ticket = self._lanes[key][position]
            demand = ticket.demand
            if ticket.exclusive:
                if self._running or starting:
                    break  # it waits for them; nothing behind it may start meanwhile
                ticket.assigned = free.take(demand)
                starting.append(ticket)
                taken[key] = position + 1
                break  # it runs alone
            if free.fits(demand):
                ticket.assigned = free.take(demand)
                starting.append(ticket)
                taken[key] = position + 1  # a lane starts from its front: earlier ones fit too
            elif free.exhausted(demand):
                # Nothing it names is left: every job behind it in its lane waits too, and
                # their reservations would take nothing more.
                continue
            else:
                free.reserve(demand)
            if position + 1 < len(self._lanes[key]):
                following = self._lanes[key][position + 1]
                heapq.heappush(fronts, (following.rank, position + 1, key))
        for key, count in taken.items():
            lane = self._lanes[key]
            del lane[:count]
            if not lane:
                del self._lanes[key]
        for ticket in starting:
            self._pool.take(ticket.demand, ticket.assigned)
            self._running.add(ticket)
            self._alone |= ticket.exclusive
        self._waiting -= len(starting)
        return starting

    def release(self, ticket: Ticket[_T]) -> None:
        """A job from :meth:`pop_ready` ended: its slot and resources are free again."""
        self._running.remove(ticket)  # KeyError: released twice, or never started
        self._pool.give(ticket.demand, ticket.assigned)
        if ticket.exclusive:
            self._alone = False

    def drain(self) -> list[Ticket[_T]]:
        """Take every waiting job out, in start order (to record them as not run)."""
        tickets = sorted(self._waiting_tickets(), key=_rank)
        self._lanes.clear()
        self._waiting = 0
        return tickets

    def _waiting_tickets(self) -> Iterator[Ticket[_T]]:
        for lane in self._lanes.values():
            yield from lane


def _rank(ticket: Ticket[_T]) -> tuple[float, int]:
    return ticket.rank


def _lane(ticket: Ticket[_T]) -> _Lane:
    return (frozenset(ticket.demand.items()), ticket.exclusive)
