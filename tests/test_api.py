"""The public library API: importable names, and no pytest or pluggy behind them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest_codomyrmex_exec

PUBLIC = {
    "run_script",
    "run_script_async",
    "ParallelRunner",
    "ExecutionResult",
    "AsyncParallelRunner",
    "AsyncExecutionResult",
    "AsyncScheduler",
    "AsyncJob",
    "AsyncJobStatus",
}


def test_public_names_are_exported() -> None:
    missing = PUBLIC - set(pytest_codomyrmex_exec.__all__)
    assert not missing
    for name in pytest_codomyrmex_exec.__all__:
        assert getattr(pytest_codomyrmex_exec, name) is not None


def test_library_import_pulls_in_neither_pytest_nor_pluggy() -> None:
    # A fresh interpreter: this one has pytest loaded already.
    probe = (
        "import json, sys\n"
        "import pytest_codomyrmex_exec as lib\n"
        "for name in lib.__all__: getattr(lib, name)\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('pytest', '_pytest', 'pluggy'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_job_status_values() -> None:
    from pytest_codomyrmex_exec import AsyncJobStatus

    assert {s.value for s in AsyncJobStatus} == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    }
