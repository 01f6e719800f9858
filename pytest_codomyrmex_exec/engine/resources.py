"""Scarce resources: capacities, demands, and a pool that never hands out more than it has.

A script's ``resources`` (``{"GPU": 1, "db": 1}``) are held while it runs. A runner given
capacities starts a script only when its whole demand fits in what is free; a demand that
could never fit (a resource the runner does not have, or more of it than exists) is refused
up front, by name, so it cannot wait forever.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import final

Amounts = Mapping[str, float]

_EPSILON = 1e-9
"""Slack for float amounts (``0.1 + 0.2`` of a resource still fits in ``0.3``)."""


def parse_capacities(text: str) -> dict[str, float]:
    """``"GPU=1 db=2"`` (spaces or commas between entries) as ``{"GPU": 1.0, "db": 2.0}``;
    raise ``ValueError`` naming the entry that is not ``NAME=AMOUNT`` with a positive amount."""
    capacities: dict[str, float] = {}
    for entry in text.replace(",", " ").split():
        name, sep, amount = entry.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=AMOUNT, got {entry!r}")
        try:
            value = float(amount)
        except ValueError:
            raise ValueError(f"{entry!r}: the amount must be a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{entry!r}: the amount must be a positive, finite number")
        if name in capacities:
            raise ValueError(f"resource {name!r} is given twice")
        capacities[name] = value
    return capacities


def describe_amounts(amounts: Amounts) -> str:
    """``GPU=1 db=2``, or ``none``."""
    return " ".join(f"{name}={amount:g}" for name, amount in amounts.items()) or "none"


def unmet_demand(demand: Amounts, capacities: Amounts, where: str = "this runner") -> str | None:
    """Why ``demand`` can never be met by ``capacities``, naming the resource; ``None`` if
    it can."""
    for name, amount in demand.items():
        have = capacities.get(name, 0.0)
        if amount > have + _EPSILON:
            if have <= 0:
                return (
                    f"needs resource {name}={amount:g}, which {where} does not have "
                    f"(resources: {describe_amounts(capacities)})"
                )
            return f"needs resource {name}={amount:g}, but {where} has only {name}={have:g}"
    return None


@final
class ResourcePool:
    """What is free of each capacity: the one place that knows what "fits" means.

    Not thread-safe: one thread (or loop) hands out. A :meth:`copy` is a scratch pool for
    planning; taking from it may go below zero, which is how a waiting job's reservation
    keeps others out of what it needs.
    """

    def __init__(self, capacities: Amounts) -> None:
        self.capacities: dict[str, float] = dict(capacities)
        self._free = dict(capacities)

    def copy(self) -> ResourcePool:
        scratch = ResourcePool(self.capacities)
        scratch._free = dict(self._free)
        return scratch

    def fits(self, demand: Amounts) -> bool:
        """Is there enough of every resource ``demand`` names?"""
        free = self._free
        return all(amount <= free.get(name, 0.0) + _EPSILON for name, amount in demand.items())

    def exhausted(self, names: Iterable[str]) -> bool:
        """Is every one of ``names`` used up, so that no further demand on them could fit?"""
        return all(self._free.get(name, 0.0) <= _EPSILON for name in names)

    def take(self, demand: Amounts) -> None:
        for name, amount in demand.items():
            self._free[name] = self._free.get(name, 0.0) - amount

    def give(self, demand: Amounts) -> None:
        for name, amount in demand.items():
            self._free[name] = min(self._free.get(name, 0.0) + amount, self.capacities[name])
