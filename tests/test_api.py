"""The public library API: importable names, and no pytest or pluggy behind them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

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


def test_job_statuses_are_what_real_runs_end_with(tmp_path: Path) -> None:
    from pytest_codomyrmex_exec import (
        AsyncJob,
        AsyncJobStatus,
        AsyncScheduler,
        ScriptStatus,
        run_script_async,
    )

    script = tmp_path / "ok_script.py"
    script.write_text("print('ok')\n")

    async def boom() -> None:
        raise ValueError("boom")

    async def main() -> tuple[AsyncScheduler, dict[str, AsyncJob]]:
        scheduler = AsyncScheduler(max_concurrency=1)
        scheduler.schedule(run_script_async, name="script", args=(script,))
        scheduler.schedule(boom, name="raises")
        never = scheduler.schedule(boom, name="never", priority=10)
        job = scheduler.get_job(never)
        assert job is not None
        assert job.status == AsyncJobStatus.PENDING
        scheduler.cancel(never)
        return scheduler, await scheduler.run_all()

    scheduler, jobs = asyncio.run(main())
    by_name = {job.name: job for job in jobs.values()}
    assert by_name["script"].result["status"] == ScriptStatus.PASSED
    assert by_name["raises"].error == "ValueError: boom"
    # Statuses are plain strings to JSON and to list_jobs, and each run ended in a final one.
    statuses = json.loads(json.dumps({name: job.status for name, job in by_name.items()}))
    assert statuses == {"script": "completed", "raises": "failed", "never": "cancelled"}
    assert all(job.status.is_final for job in jobs.values())
    assert [job.name for job in scheduler.list_jobs("failed")] == ["raises"]
