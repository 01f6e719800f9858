"""pytest-codomyrmex-exec: run Python scripts as tests, in parallel, in real subprocesses.

This package's top level is the execution library (re-exported from
:mod:`pytest_codomyrmex_exec.engine`); it imports neither pytest nor pluggy. The pytest plugin
lives in :mod:`pytest_codomyrmex_exec.plugin` and is loaded by pytest.

Names are imported on first use: pytest loads this package at every start-up through the
plugin, and most runs need neither asyncio nor the pools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine.async_runner import AsyncParallelRunner
    from .engine.events import JobEvent, JobEventKind, RunEvent, RunEventKind
    from .engine.forkserver import WarmLauncher
    from .engine.parallel import ParallelRunner, ProgressEvent
    from .engine.results import (
        AsyncExecutionResult,
        ExecutionResult,
        FailureCause,
        ScriptResult,
        ScriptStatus,
    )
    from .engine.run import CancelEvent, run_script
    from .engine.run_async import run_script_async
    from .engine.scheduler import (
        AsyncJob,
        AsyncJobStatus,
        AsyncScheduler,
        SchedulerMetrics,
    )
    from .engine.spec import ScriptSpec

__all__ = [
    "AsyncExecutionResult",
    "AsyncJob",
    "AsyncJobStatus",
    "AsyncParallelRunner",
    "AsyncScheduler",
    "CancelEvent",
    "ExecutionResult",
    "FailureCause",
    "JobEvent",
    "JobEventKind",
    "ParallelRunner",
    "ProgressEvent",
    "RunEvent",
    "RunEventKind",
    "SchedulerMetrics",
    "ScriptResult",
    "ScriptSpec",
    "ScriptStatus",
    "WarmLauncher",
    "run_script",
    "run_script_async",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import engine  # lazy itself: only the module that holds ``name`` is imported

    value = getattr(engine, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
