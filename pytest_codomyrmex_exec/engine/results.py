"""The result model: a script's status, its result record, and batch summaries."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, final


class ScriptStatus(enum.StrEnum):
    """How one script run ended. A ``str`` subclass, so results stay JSON-friendly."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"
    CANCELLED = "cancelled"


class FailureCause(enum.StrEnum):
    """Why a script did not pass, as data: code switches on this, never on ``error``'s words
    (which are for people and may be reworded freely). ``None`` on a passed result."""

    EXIT_CODE = "exit_code"
    """It exited with a code that does not count as passed."""
    SIGNAL = "signal"
    """A signal killed it (not one of ours: a timeout or a cancel has its own cause)."""
    MEMORY_LIMIT = "memory_limit"
    """It ran out of its ``memory_limit_mb``."""
    TIMEOUT = "timeout"
    """It ran past its timeout; its process tree was killed."""
    CANCELLED = "cancelled"
    """A cancel (fail-fast, ``-x``, Ctrl-C, ``close()``) stopped it or kept it from starting."""
    MISSING_PATH = "missing_path"
    """The script, its working folder or its stdin file is not there (or is not a file)."""
    START_FAILED = "start_failed"
    """Its process could not be made (no interpreter, an ``exec`` that failed)."""
    RESOURCES = "resources"
    """It needs more of a resource than exists where it would run."""
    WORKER_LOST = "worker_lost"
    """What ran it died with it: a pool worker, a Dask worker, the warm server."""
    ENGINE = "engine"
    """The runner or backend itself failed (a bug, or a broken pool): not the script's doing."""


class ScriptRecord(TypedDict):
    """What a script's own process was seen to use and change while it ran (``record=True``).

    Paths are absolute. Files of the interpreter's own library and of installed distributions
    are not listed one by one: an imported distribution is listed by name and version.
    """

    reads: list[str]
    """Files it imported or opened for reading (the script itself included)."""
    writes: list[str]
    """Files it created, modified, renamed onto or removed; not a file (of at most 1 MB) that
    it rewrote with the content it had, nor the bytecode the import system caches in
    ``__pycache__``."""
    distributions: dict[str, str]
    """Installed distributions it imported from: name to version."""
    interpreter: str
    """The interpreter that ran it and its version (``"/usr/bin/python3 3.11.7"``)."""
    unseen: list[str]
    """What the recorder could not follow, one line each (a program it ran that is not
    Python, say): the record may be incomplete by these."""


class LeakedProcess(TypedDict):
    """A descendant still running when the script itself had exited (then killed)."""

    pid: int
    command: str


FAILED_TRY_TAIL = 2000
"""Characters of stdout and of stderr a :class:`FailedTry` keeps, from the end."""


class FailedTry(TypedDict):
    """A run of a script that failed and was followed by another (``max_runs``, or a rerun).

    Only the end of its output is kept: enough to show why it failed, bounded however
    often the script is retried.
    """

    attempt: int
    """Which run it was, from 1."""
    status: ScriptStatus
    cause: FailureCause | None
    exit_code: int | None
    error: str | None
    execution_time: float
    stdout_tail: str
    stderr_tail: str


class ScriptResult(TypedDict):
    """What :func:`run_script` returns for one script.

    ``error`` is a one-line, human-readable cause for every status but ``passed``.
    """

    script: str
    name: str
    status: ScriptStatus
    exit_code: int | None
    stdout: str
    stderr: str
    execution_time: float
    error: str | None
    signal: str | None
    memory_limit_exceeded: bool
    attempts: int
    """Runs made: more than 1 after retries (``max_runs``), 0 if it never started."""
    worker: str | None
    """The machine that ran it when that is not this process's own (a Dask worker's
    address and name); ``None`` otherwise."""
    cause: FailureCause | None
    """Why it did not pass (``None`` when it passed): what code should switch on."""
    resource_ids: dict[str, list[str]]
    """The ids of the resource units it held, by resource (``{"GPU": ["0", "1"]}``); empty
    when it held none or the runner does not track resources."""
    record: ScriptRecord | None
    """What it read, imported and wrote, when the spec asked for ``record``; else ``None``."""
    leaked: list[LeakedProcess]
    """Processes it started that were still running when it exited (killed then); the first
    20 found, ``leaked_count`` counts them all."""
    leaked_count: int
    """How many processes it left running when it exited (all killed then)."""
    failed_tries: list[FailedTry]
    """The runs before this one, each of which failed (empty without retries): a result
    that passed with failed tries before it is flaky."""


def make_result(
    script: str,
    status: ScriptStatus,
    *,
    error: str | None = None,
    exit_code: int | None = None,
    stdout: str = "",
    stderr: str = "",
    execution_time: float = 0.0,
    signal: str | None = None,
    memory_limit_exceeded: bool = False,
    attempts: int = 1,
    worker: str | None = None,
    cause: FailureCause | None = None,
    resource_ids: Mapping[str, Sequence[str]] | None = None,
    record: ScriptRecord | None = None,
    leaked: Sequence[LeakedProcess] = (),
    failed_tries: Sequence[FailedTry] = (),
    leaked_count: int | None = None,
) -> ScriptResult:
    """Build a :class:`ScriptResult`; the one place its keys are spelled out."""
    return ScriptResult(
        script=script,
        name=os.path.basename(script),
        status=status,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        execution_time=execution_time,
        error=error,
        signal=signal,
        memory_limit_exceeded=memory_limit_exceeded,
        attempts=attempts,
        worker=worker,
        cause=cause,
        resource_ids={name: list(ids) for name, ids in (resource_ids or {}).items()},
        record=record,
        leaked=list(leaked),
        leaked_count=len(leaked) if leaked_count is None else leaked_count,
        failed_tries=list(failed_tries),
    )


def failed_try(result: ScriptResult, attempt: int) -> FailedTry:
    """What is kept of run number ``attempt`` of a script, which failed, when it runs again."""
    return FailedTry(
        attempt=attempt,
        status=result["status"],
        cause=result["cause"],
        exit_code=result["exit_code"],
        error=result["error"],
        execution_time=result["execution_time"],
        stdout_tail=result["stdout"][-FAILED_TRY_TAIL:],
        stderr_tail=result["stderr"][-FAILED_TRY_TAIL:],
    )


@final
@dataclass
class ExecutionResult:
    """Summary of a :class:`ParallelRunner` batch: one result per script, counters that add up."""

    results: list[ScriptResult] = field(default_factory=list)
    execution_time: float = 0.0

    def _count(self, status: ScriptStatus) -> int:
        return sum(1 for r in self.results if r["status"] == status)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return self._count(ScriptStatus.PASSED)

    @property
    def failed(self) -> int:
        """Scripts that failed or could not start (``failed`` plus ``error``)."""
        return self._count(ScriptStatus.FAILED) + self._count(ScriptStatus.ERROR)

    @property
    def timeout(self) -> int:
        return self._count(ScriptStatus.TIMEOUT)

    @property
    def cancelled(self) -> int:
        return self._count(ScriptStatus.CANCELLED)

    @property
    def success(self) -> bool:
        return self.total == self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "passed": self.passed,
            "failed": self.failed,
            "timeout": self.timeout,
            "cancelled": self.cancelled,
            "execution_time": self.execution_time,
            "success": self.success,
            "results": [dict(r) for r in self.results],
        }


@final
@dataclass
class AsyncExecutionResult:
    """Summary of an :class:`AsyncParallelRunner` run, keyed by task name."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cancelled_tasks: list[str] = field(default_factory=list)
    total: int = 0
    execution_time: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return len(self.errors)

    @property
    def cancelled(self) -> int:
        return len(self.cancelled_tasks)

    @property
    def success(self) -> bool:
        return self.completed == self.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "execution_time": self.execution_time,
            "success": self.success,
            "results": dict(self.results),
            "errors": dict(self.errors),
        }
