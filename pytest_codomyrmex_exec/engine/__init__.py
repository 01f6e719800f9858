"""The execution engine: run Python scripts in real subprocesses, alone or many at once.

It imports neither pytest nor pluggy. The pytest plugin uses it only through the names
exported here. Names are imported on first use: pytest loads this package at every
start-up through the plugin, and most runs need neither asyncio nor the pools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .async_runner import AsyncParallelRunner
    from .events import (
        EventSink,
        JobEvent,
        JobEventKind,
        JobEventSink,
        RunEvent,
        RunEventKind,
        Subscription,
    )
    from .forkserver import WARM_SUPPORTED, WarmChild, WarmLauncher
    from .guardian import Guardian, guardian_supported, start_guardian
    from .launch import (
        COLD,
        RUN_TAG_VAR,
        Child,
        ColdLauncher,
        Launcher,
        LaunchPlan,
        kill_tagged,
        package_root,
        plan_launch,
    )
    from .parallel import BATCH_ENV_VAR, ParallelRunner, ProgressEvent
    from .resources import Slots, describe_amounts, parse_capacities, unmet_demand
    from .results import (
        AsyncExecutionResult,
        ExecutionResult,
        FailureCause,
        ScriptResult,
        ScriptStatus,
        make_result,
    )
    from .run import CancelEvent, CancelSignal, run_script, run_spec
    from .run_async import run_script_async, run_spec_async
    from .scheduler import (
        AsyncJob,
        AsyncJobStatus,
        AsyncScheduler,
        SchedulerMetrics,
    )
    from .spec import (
        DEFAULT_OUTPUT_LIMIT,
        DEFAULT_TIMEOUT,
        RUN_KEYWORDS,
        InvalidSpec,
        ScriptSpec,
        validate_memory_limit,
        validate_timeout,
    )
    from .stop import TERMINATE_GRACE

_HOMES = {
    "AsyncParallelRunner": "async_runner",
    "EventSink": "events",
    "JobEvent": "events",
    "JobEventKind": "events",
    "JobEventSink": "events",
    "RunEvent": "events",
    "RunEventKind": "events",
    "Subscription": "events",
    "WARM_SUPPORTED": "forkserver",
    "WarmChild": "forkserver",
    "WarmLauncher": "forkserver",
    "Guardian": "guardian",
    "guardian_supported": "guardian",
    "start_guardian": "guardian",
    "COLD": "launch",
    "RUN_TAG_VAR": "launch",
    "Child": "launch",
    "ColdLauncher": "launch",
    "LaunchPlan": "launch",
    "Launcher": "launch",
    "kill_tagged": "launch",
    "package_root": "launch",
    "plan_launch": "launch",
    "BATCH_ENV_VAR": "parallel",
    "ParallelRunner": "parallel",
    "Slots": "resources",
    "describe_amounts": "resources",
    "parse_capacities": "resources",
    "unmet_demand": "resources",
    "ProgressEvent": "parallel",
    "AsyncExecutionResult": "results",
    "ExecutionResult": "results",
    "FailureCause": "results",
    "ScriptResult": "results",
    "ScriptStatus": "results",
    "make_result": "results",
    "CancelEvent": "run",
    "CancelSignal": "run",
    "run_script": "run",
    "run_spec": "run",
    "run_script_async": "run_async",
    "run_spec_async": "run_async",
    "AsyncJob": "scheduler",
    "AsyncJobStatus": "scheduler",
    "AsyncScheduler": "scheduler",
    "SchedulerMetrics": "scheduler",
    "DEFAULT_OUTPUT_LIMIT": "spec",
    "DEFAULT_TIMEOUT": "spec",
    "RUN_KEYWORDS": "spec",
    "InvalidSpec": "spec",
    "ScriptSpec": "spec",
    "validate_memory_limit": "spec",
    "validate_timeout": "spec",
    "TERMINATE_GRACE": "stop",
}

__all__ = [
    "BATCH_ENV_VAR",
    "COLD",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_TIMEOUT",
    "RUN_KEYWORDS",
    "RUN_TAG_VAR",
    "TERMINATE_GRACE",
    "WARM_SUPPORTED",
    "AsyncExecutionResult",
    "AsyncJob",
    "AsyncJobStatus",
    "AsyncParallelRunner",
    "AsyncScheduler",
    "CancelEvent",
    "CancelSignal",
    "Child",
    "ColdLauncher",
    "EventSink",
    "ExecutionResult",
    "FailureCause",
    "Guardian",
    "InvalidSpec",
    "JobEvent",
    "JobEventKind",
    "JobEventSink",
    "LaunchPlan",
    "Launcher",
    "ParallelRunner",
    "ProgressEvent",
    "RunEvent",
    "RunEventKind",
    "SchedulerMetrics",
    "ScriptResult",
    "ScriptSpec",
    "ScriptStatus",
    "Slots",
    "Subscription",
    "WarmChild",
    "WarmLauncher",
    "describe_amounts",
    "guardian_supported",
    "kill_tagged",
    "make_result",
    "package_root",
    "parse_capacities",
    "plan_launch",
    "run_script",
    "run_script_async",
    "run_spec",
    "run_spec_async",
    "start_guardian",
    "unmet_demand",
    "validate_memory_limit",
    "validate_timeout",
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
