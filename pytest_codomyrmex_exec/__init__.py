"""pytest-codomyrmex-exec: run Python scripts as tests, in parallel, in real subprocesses.

This package's top level is the execution library; it imports neither pytest nor pluggy.
The pytest plugin lives in :mod:`pytest_codomyrmex_exec.plugin` and is loaded by pytest.

Names are imported on first use: pytest loads this package at every start-up through the
plugin, and most runs need neither asyncio nor the pools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .async_runner import AsyncParallelRunner
    from .async_script import run_script_async
    from .parallel_runner import ParallelRunner, ProgressEvent
    from .results import AsyncExecutionResult, ExecutionResult, ScriptResult, ScriptStatus
    from .runner import CancelEvent, run_script
    from .scheduler import (
        AsyncJob,
        AsyncJobStatus,
        AsyncScheduler,
        JobEvent,
        JobEventKind,
        SchedulerMetrics,
    )

_HOMES = {
    "AsyncParallelRunner": "async_runner",
    "run_script_async": "async_script",
    "ParallelRunner": "parallel_runner",
    "ProgressEvent": "parallel_runner",
    "AsyncExecutionResult": "results",
    "ExecutionResult": "results",
    "ScriptResult": "results",
    "ScriptStatus": "results",
    "CancelEvent": "runner",
    "run_script": "runner",
    "AsyncJob": "scheduler",
    "AsyncJobStatus": "scheduler",
    "AsyncScheduler": "scheduler",
    "JobEvent": "scheduler",
    "JobEventKind": "scheduler",
    "SchedulerMetrics": "scheduler",
}

__all__ = [
    "AsyncExecutionResult",
    "AsyncJob",
    "AsyncJobStatus",
    "AsyncParallelRunner",
    "AsyncScheduler",
    "CancelEvent",
    "ExecutionResult",
    "JobEvent",
    "JobEventKind",
    "ParallelRunner",
    "ProgressEvent",
    "SchedulerMetrics",
    "ScriptResult",
    "ScriptStatus",
    "run_script",
    "run_script_async",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
