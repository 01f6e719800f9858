"""The events of the engine, each keyed by the caller's key for what it is about.

A script run reports :class:`RunEvent` values (started, output, retry, finished) to an
:data:`EventSink`; an :class:`AsyncScheduler` reports :class:`JobEvent` values (scheduled,
started, and one end) about its jobs to a :data:`JobEventSink`. Both carry ``key``: the
caller's own name for the script or job, so whoever listens maps an event to its work by key,
never by a path or a name.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, final

from .results import ScriptResult

logger = logging.getLogger(__name__)


class RunEventKind(enum.StrEnum):
    """What happened. Every script gets exactly one ``finished`` event."""

    STARTED = "started"
    """The script's process started (one per attempt)."""
    OUTPUT = "output"
    """A chunk of its stdout or stderr was read (only sent to those who asked for output)."""
    RETRY = "retry"
    """An attempt failed and another follows; ``result`` is the failed attempt's."""
    FINISHED = "finished"
    """The script is done; ``result`` is final."""


Stream: TypeAlias = Literal["stdout", "stderr"]


@final
@dataclass(frozen=True, slots=True)
class RunEvent:
    """One step of one script's run.

    ``key`` is the caller's key for the script (its key in :meth:`ParallelRunner.run_specs`,
    its position for ``run_scripts``, a test item's key in the plugin); ``time`` is
    wall-clock (:func:`time.time`).
    """

    kind: RunEventKind
    key: Any
    script: str
    time: float
    result: ScriptResult | None = None
    stream: Stream | None = None
    chunk: bytes = b""
    attempt: int = 1
    """The attempt this event belongs to, from 1."""

    @property
    def index(self) -> Any:
        """The key, under the name :class:`ParallelRunner`'s progress events always had."""
        return self.key


EventSink: TypeAlias = Callable[[RunEvent], object]
"""Receives run events; an exception it raises is logged and ignored by the engine."""


class JobEventKind(enum.StrEnum):
    """What a job event sink is told: one ``scheduled``, at most one ``started``, one end."""

    SCHEDULED = "scheduled"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@final
@dataclass(frozen=True, slots=True)
class JobEvent:
    """One change in a scheduler job's life, as given to the scheduler's ``event_sink``.

    ``time`` is wall-clock (:func:`time.time`). ``runs`` is how many attempts had started
    when the event was sent; ``error`` is set on ``failed`` events. ``key`` is the caller's
    key for the job (``schedule(key=...)``), its ``job_id`` when none was given.
    """

    kind: JobEventKind
    job_id: str
    name: str
    time: float
    runs: int = 0
    error: str | None = None
    key: Any = None


JobEventSink: TypeAlias = Callable[[JobEvent], object]
"""Receives job events; an exception it raises is logged and ignored by the scheduler."""


@final
@dataclass(frozen=True, slots=True)
class Subscription:
    """Where one run's events go: the sink, the key to tag them with, whether output is wanted.

    Output events cost a call per chunk read, so they are sent only when ``output`` is set.
    """

    sink: EventSink
    key: Any = None
    output: bool = False

    def emit(
        self,
        kind: RunEventKind,
        script: str,
        *,
        result: ScriptResult | None = None,
        stream: Stream | None = None,
        chunk: bytes = b"",
        attempt: int = 1,
    ) -> None:
        event = RunEvent(kind, self.key, script, time.time(), result, stream, chunk, attempt)
        try:
            self.sink(event)
        except Exception:
            # An observer must not be able to break a run or lose its result.
            logger.exception("event sink raised on %s", event.kind)
