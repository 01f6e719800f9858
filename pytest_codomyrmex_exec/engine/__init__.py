"""The execution engine: run Python scripts in real subprocesses, alone or many at once.

It imports neither pytest nor pluggy. The library's public names are the imports of the
``TYPE_CHECKING`` block below, the one list of them: type checkers read the block as it is
written, and at run time :func:`__getattr__` reads the same block to import a name from its
module on first use, since pytest loads this package at every start-up through the plugin and
most runs need neither asyncio nor the pools. Each is written ``from .module import Name as
Name``, the form that strict type checkers take for a re-export. The top-level package
re-exports these names.
Everything else stays in its module; the plugin imports what it needs from the modules by
name.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .async_runner import AsyncParallelRunner as AsyncParallelRunner
    from .events import JobEvent as JobEvent
    from .events import JobEventKind as JobEventKind
    from .events import JobEventSink as JobEventSink
    from .events import RunEvent as RunEvent
    from .events import RunEventKind as RunEventKind
    from .events import Subscription as Subscription
    from .forkserver import WarmLauncher as WarmLauncher
    from .launch import Launcher as Launcher
    from .parallel import ParallelRunner as ParallelRunner
    from .parallel import ProgressEvent as ProgressEvent
    from .resources import Slots as Slots
    from .results import AsyncExecutionResult as AsyncExecutionResult
    from .results import ExecutionResult as ExecutionResult
    from .results import FailedTry as FailedTry
    from .results import FailureCause as FailureCause
    from .results import LeakedProcess as LeakedProcess
    from .results import ScriptRecord as ScriptRecord
    from .results import ScriptResult as ScriptResult
    from .results import ScriptStatus as ScriptStatus
    from .run import CancelEvent as CancelEvent
    from .run import run_script as run_script
    from .run import run_spec as run_spec
    from .run_async import run_script_async as run_script_async
    from .run_async import run_spec_async as run_spec_async
    from .scheduler import AsyncJob as AsyncJob
    from .scheduler import AsyncJobStatus as AsyncJobStatus
    from .scheduler import AsyncScheduler as AsyncScheduler
    from .scheduler import SchedulerMetrics as SchedulerMetrics
    from .spec import RUN_KEYWORDS as RUN_KEYWORDS
    from .spec import InvalidSpec as InvalidSpec
    from .spec import InvalidSpecType as InvalidSpecType
    from .spec import ScriptSpec as ScriptSpec


@functools.cache
def _public_names() -> dict[str, str]:
    """Each public name and the module that defines it, as the ``TYPE_CHECKING`` block of
    this file lists them."""
    import ast  # only here: the plugin's start-up never calls this

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name: f"{__name__}.{statement.module}"
        for statement in block.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return list(_public_names())
    home = _public_names().get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_public_names()})
