"""pytest-codomyrmex-exec: run Python scripts as tests, in parallel, in real subprocesses.

This package's top level is the execution library; it imports neither pytest nor pluggy.
The pytest plugin lives in :mod:`pytest_codomyrmex_exec.plugin` and is loaded by pytest.
"""

from __future__ import annotations

from .results import AsyncExecutionResult, ExecutionResult, ScriptResult, ScriptStatus
from .runner import run_script

__all__ = [
    "AsyncExecutionResult",
    "ExecutionResult",
    "ScriptResult",
    "ScriptStatus",
    "run_script",
]
