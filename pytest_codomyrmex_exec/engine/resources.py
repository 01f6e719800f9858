"""Scarce resources: capacities, demands, and a pool that hands out named units, never more.

A script's ``resources`` (``{"GPU": 1, "db": 1}``) are held while it runs. Every capacity is
a row of **units** with ids: ``GPU=4`` is four units ``0``..``3``, ``GPU=0,1,2,3`` four units
with those ids (:class:`Slots`), ``db=2.5`` units ``0`` and ``1`` and a unit ``2`` of half
size. A demand up to 1 takes a **share** of one unit (shares of a unit add up to at most its
size); a demand above 1 is whole and takes that many free units. The ids a run holds are
what the script is told (:func:`resource_env`: ``EXEC_RESOURCE_GPU=0,1`` and, for GPUs,
``CUDA_VISIBLE_DEVICES=0,1``).

A runner given capacities starts a script only when its whole demand fits in what is free;
a demand that could never fit (a resource the runner does not have, or more of it than
exists) is refused up front, by name, so it cannot wait forever.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from .results import ScriptResult
    from .spec import ScriptSpec

logger = logging.getLogger(__name__)

Amounts = Mapping[str, float]

Assigned = Mapping[str, tuple[str, ...]]
"""The unit ids a run holds, by resource name (``{"GPU": ("0", "2")}``)."""

_EPSILON = 1e-9
"""Slack for float amounts (``0.1 + 0.2`` of a unit still fits in ``0.3``)."""

GPU = "GPU"
"""The resource whose ids also go to ``CUDA_VISIBLE_DEVICES`` and that ``auto`` detects."""

DEFAULT_RESOURCE_ENV: Mapping[str, tuple[str, ...]] = {GPU: ("CUDA_VISIBLE_DEVICES",)}
"""Variables that receive a resource's ids besides ``EXEC_RESOURCE_<NAME>``."""

_NVIDIA_SMI_TIMEOUT = 10.0
"""Seconds ``nvidia-smi -L`` may take before ``GPU=auto`` gives up on it (it can hang on a
wedged driver)."""


@final
class Slots(float):
    """A capacity given by unit ids (``GPU=0,1,2,3``): an amount (how many) that knows them.

    A ``float``, so everything that counts amounts (the Dask backend, messages) counts it.
    """

    ids: tuple[str, ...]

    def __new__(cls, ids: Sequence[str]) -> Slots:
        ids = tuple(ids)
        duplicates = sorted({unit for unit in ids if ids.count(unit) > 1})
        if duplicates:
            raise ValueError(f"id {duplicates[0]!r} is given twice")
        if not all(ids) or any("," in unit or "\0" in unit for unit in ids):
            raise ValueError(f"ids must be non-empty, without ',' or NUL: {ids!r}")
        slots = super().__new__(cls, len(ids))
        slots.ids = ids
        return slots

    def __reduce__(self) -> tuple[type[Slots], tuple[tuple[str, ...]]]:
        return (Slots, (self.ids,))

    def __repr__(self) -> str:
        return f"Slots({self.ids!r})"


def detect_gpus(environ: Mapping[str, str] | None = None) -> Slots:
    """``GPU=auto``: the ids in ``CUDA_VISIBLE_DEVICES`` if it is set, else one per device
    that ``nvidia-smi -L`` lists when it is on ``PATH``, else none."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return Slots([unit.strip() for unit in visible.split(",") if unit.strip()])
    smi = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
    if smi is None:
        return Slots(())
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("GPU=auto: %s -L failed (%s); no GPUs", smi, exc)
        return Slots(())
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    return Slots([str(index) for index in range(count)])


def parse_capacities(text: str, environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """Read ``exec_resources``: entries ``NAME=AMOUNT``, ``NAME=ID,ID,...`` or ``GPU=auto``,
    separated by spaces (or commas). Raise ``ValueError`` naming the entry at fault.

    ``GPU=4`` is four units with ids ``0``..``3``; ``GPU=0,2`` two units with ids ``0`` and
    ``2`` (a :class:`Slots`); ``GPU=auto`` asks :func:`detect_gpus` (``environ``: where to
    look, ``os.environ`` by default)."""
    entries: list[tuple[str, list[str]]] = []
    for token in text.split():
        # Within one word, a piece without "=" is one more id of the entry before it
        # (GPU=0,1,2); a piece with one starts the next entry (GPU=1,db=2).
        for position, piece in enumerate(token.split(",")):
            name, sep, value = piece.partition("=")
            if sep and name:
                entries.append((name, [value] if value else []))
            elif not sep and position > 0 and entries:
                if piece:  # a trailing comma adds nothing
                    entries[-1][1].append(piece)
            else:
                raise ValueError(f"expected NAME=AMOUNT, got {token!r}")
    capacities: dict[str, float] = {}
    for name, values in entries:
        entry = f"{name}={','.join(values)}"
        if name in capacities:
            raise ValueError(f"resource {name!r} is given twice")
        capacities[name] = _capacity(name, entry, values, environ)
    return capacities


def _capacity(name: str, entry: str, values: list[str], environ: Mapping[str, str] | None) -> float:
    if len(values) > 1:
        try:
            return Slots(values)
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
    if values == ["auto"]:
        if name != GPU:
            raise ValueError(f"{entry!r}: auto is known only for {GPU}")
        return detect_gpus(environ)
    try:
        value = float(values[0]) if values else math.nan
    except ValueError:
        raise ValueError(f"{entry!r}: the amount must be a number, ids, or auto") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{entry!r}: the amount must be a positive, finite number")
    return value


def parse_resource_env(text: str, known: Mapping[str, float]) -> dict[str, tuple[str, ...]]:
    """Read ``exec_resource_env`` (``GPU=CUDA_VISIBLE_DEVICES,HIP_VISIBLE_DEVICES``): which
    variables get a resource's ids, on top of :data:`DEFAULT_RESOURCE_ENV` (an entry for a
    name replaces its default). Raise ``ValueError`` naming an entry for a resource that is
    not among ``known`` or a variable name that cannot be one."""
    variables = {name: tuple(names) for name, names in DEFAULT_RESOURCE_ENV.items()}
    for entry in text.split():
        name, sep, value = entry.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"expected NAME=VARIABLE[,VARIABLE...], got {entry!r}")
        if name not in known:
            raise ValueError(
                f"{entry!r}: there is no resource {name!r} "
                f"(resources: {describe_capacities(known)})"
            )
        names = tuple(value.split(","))
        if not all(names) or any("\0" in variable or "=" in variable for variable in names):
            raise ValueError(f"{entry!r}: expected variable names separated by commas")
        variables[name] = names
    return variables


def describe_amounts(amounts: Amounts) -> str:
    """``GPU=1 db=2``, or ``none``."""
    return " ".join(f"{name}={amount:g}" for name, amount in amounts.items()) or "none"


def describe_capacities(capacities: Amounts) -> str:
    """``GPU=0,1 db=2``, or ``none``: capacities as the ini line gives them."""
    parts = []
    for name, amount in capacities.items():
        if isinstance(amount, Slots):
            parts.append(f"{name}={','.join(amount.ids) or '(none found)'}")
        else:
            parts.append(f"{name}={amount:g}")
    return " ".join(parts) or "none"


def describe_assigned(assigned: Mapping[str, Sequence[str]]) -> str:
    """``GPU=0,1 db=0``: the ids a run held (``""`` for none)."""
    return " ".join(f"{name}={','.join(ids)}" for name, ids in assigned.items())


def resource_env(
    assigned: Assigned, variables: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV
) -> dict[str, str]:
    """The variables a run holding ``assigned`` is given: ``EXEC_RESOURCE_<NAME>`` (upper
    case) and each of ``variables[name]``, all set to the ids, comma-separated."""
    env: dict[str, str] = {}
    for name, ids in assigned.items():
        value = ",".join(ids)
        env[f"EXEC_RESOURCE_{name.upper()}"] = value
        for variable in variables.get(name, ()):
            env[variable] = value
    return env


def with_resource_env(
    spec: ScriptSpec,
    assigned: Assigned,
    variables: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV,
) -> ScriptSpec:
    """``spec`` with the ids it was given in its environment (itself when it holds none).
    The ids win over the spec's own ``env``: they are where the script must run."""
    if not assigned:
        return spec
    return spec.replace(env={**spec.env, **resource_env(assigned, variables)})


def unmet_demand(demand: Amounts, capacities: Amounts, where: str = "this runner") -> str | None:
    """Why ``demand`` can never be met by ``capacities``, naming the resource; ``None`` if
    it can."""
    for name, amount in demand.items():
        units = _units(capacities.get(name, 0.0))
        if amount <= 1 + _EPSILON:
            have = max(units.values(), default=0.0)
        else:
            have = float(sum(1 for size in units.values() if size >= 1 - _EPSILON))
        if amount > have + _EPSILON:
            if not units:
                return (
                    f"needs resource {name}={amount:g}, which {where} does not have "
                    f"(resources: {describe_capacities(capacities)})"
                )
            if amount <= 1 + _EPSILON:
                return (
                    f"needs resource {name}={amount:g}, but the largest unit of {name} "
                    f"{where} has is {have:g}"
                )
            return f"needs resource {name}={amount:g}, but {where} has only {name}={have:g}"
    return None


def _units(capacity: float) -> dict[str, float]:
    """The units of one capacity, by id, with their sizes."""
    if isinstance(capacity, Slots):
        return dict.fromkeys(capacity.ids, 1.0)
    whole = math.floor(capacity + _EPSILON)
    units = {str(index): 1.0 for index in range(whole)}
    if capacity - whole > _EPSILON:
        units[str(whole)] = capacity - whole
    return units


@final
class ResourcePool:
    """What is free of each unit: the one place that knows what "fits" means and which
    units a demand gets.

    A demand up to 1 takes a share of one unit: the fullest that still fits it, so shares
    pack together and whole units stay free. A demand above 1 takes that many free units,
    in id order. Not thread-safe: one thread (or loop) hands out.

    A :meth:`copy` is a scratch pool for planning: :meth:`reserve` takes what a waiting job
    would be given first (free units before busy ones) and may go below zero, which is how
    its reservation keeps others out of what it needs.
    """

    def __init__(self, capacities: Amounts) -> None:
        self.capacities: dict[str, float] = dict(capacities)
        self._sizes = {name: _units(capacity) for name, capacity in capacities.items()}
        self._free = {name: dict(units) for name, units in self._sizes.items()}

    def copy(self) -> ResourcePool:
        scratch = ResourcePool.__new__(ResourcePool)
        scratch.capacities = self.capacities
        scratch._sizes = self._sizes
        scratch._free = {name: dict(units) for name, units in self._free.items()}
        return scratch

    def fits(self, demand: Amounts) -> bool:
        """Is there enough of every resource ``demand`` names?"""
        return all(self._choose(name, amount) is not None for name, amount in demand.items())

    def exhausted(self, names: Iterable[str]) -> bool:
        """Is every unit of ``names`` used up, so that no further demand on them could fit?"""
        return all(
            all(free <= _EPSILON for free in self._free.get(name, {}).values()) for name in names
        )

    def take(self, demand: Amounts, assigned: Assigned | None = None) -> dict[str, tuple[str, ...]]:
        """Hold ``demand`` and return the ids of the units it got. ``assigned``: those units,
        as a scratch copy chose them (they fit here too: a copy never has more free)."""
        chosen = dict(assigned) if assigned is not None else {}
        for name, amount in demand.items():
            ids = chosen.get(name) or self._choose(name, amount)
            if ids is None:
                raise ValueError(f"{describe_amounts(demand)} does not fit")
            self._apply(name, amount, ids, -1)
            chosen[name] = ids
        return chosen

    def reserve(self, demand: Amounts) -> None:
        """Set aside what a job that cannot start yet would be given first (scratch only)."""
        for name, amount in demand.items():
            units, sizes = self._free.get(name, {}), self._sizes.get(name, {})
            count = 1 if amount <= 1 + _EPSILON else round(amount)
            # Only units it could ever run on, the freest first: what it gets when they free.
            large = [unit for unit in units if sizes[unit] >= min(amount, 1.0) - _EPSILON]
            ids = sorted(large, key=lambda unit: -units[unit])[:count]
            if ids:
                self._apply(name, amount, tuple(ids), -1)

    def give(self, demand: Amounts, assigned: Assigned) -> None:
        """A run that held ``demand`` on the units ``assigned`` ended."""
        for name, amount in demand.items():
            self._apply(name, amount, assigned[name], +1)

    def _choose(self, name: str, amount: float) -> tuple[str, ...] | None:
        units = self._free.get(name)
        if not units:
            return None
        if amount <= 1 + _EPSILON:
            fitting = [unit for unit, free in units.items() if free >= amount - _EPSILON]
            if not fitting:
                return None
            return (min(fitting, key=lambda unit: units[unit]),)  # the fullest that fits
        whole = [unit for unit, free in units.items() if free >= 1 - _EPSILON]
        count = round(amount)
        return tuple(whole[:count]) if len(whole) >= count else None

    def _apply(self, name: str, amount: float, ids: tuple[str, ...], sign: int) -> None:
        each = amount if len(ids) == 1 else 1.0
        units, sizes = self._free[name], self._sizes[name]
        for unit in ids:
            # Never above its size: float shares given back must not add up to more.
            units[unit] = min(units[unit] + sign * each, sizes[unit])


def with_resource_ids(result: ScriptResult, assigned: Assigned) -> ScriptResult:
    """``result`` carrying the ids its run held (itself when it held none)."""
    if not assigned:
        return result
    marked = result.copy()
    marked["resource_ids"] = {name: list(ids) for name, ids in assigned.items()}
    return marked
