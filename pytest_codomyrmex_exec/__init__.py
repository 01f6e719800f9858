"""pytest-codomyrmex-exec: run Python scripts as tests, in parallel, in real subprocesses.

This package's top level is the execution library; it imports neither pytest nor pluggy.
The pytest plugin lives in :mod:`pytest_codomyrmex_exec.plugin` and is loaded by pytest.
"""

from __future__ import annotations

from .async_runner import AsyncParallelRunner
from .async_script import run_script_async
from .parallel_runner import ParallelRunner, ProgressEvent
from .results import AsyncExecutionResult, ExecutionResult, ScriptResult, ScriptStatus
from .runner import run_script
from .scheduler import (
    AsyncJob,
    AsyncJobStatus,
    AsyncScheduler,
    JobEvent,
    JobEventKind,
    SchedulerMetrics,
)

__all__ = [
    "AsyncExecutionResult",
    "AsyncJob",
    "AsyncJobStatus",
    "AsyncParallelRunner",
    "AsyncScheduler",
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
