"""The async engine and the plugin's AsyncBackend on another Python (3.13) with -W error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_python(version: str) -> str | None:
    """A working ``pythonX.Y``: on PATH, or a pyenv install that its shim would not select."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(Path(pyenv_root, "versions").glob(f"{version}*/bin/python{version}"))
    for candidate in candidates:
        if candidate is None:
            continue
        probe = subprocess.run(
            [str(candidate), "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(
            tuple(int(p) for p in version.split("."))
        ):
            return str(candidate)
    return None


ASYNC_SMOKE = """\
import asyncio, pathlib, sys, tempfile, warnings
from pytest_codomyrmex_exec import AsyncScheduler, run_script_async

folder = pathlib.Path(tempfile.mkdtemp())
ok = folder / "ok.py"
ok.write_text("print('hi')")
bad = folder / "bad.py"
bad.write_text("raise SystemExit(3)")
slow = folder / "slow.py"
slow.write_text("import time\\ntime.sleep(30)")

async def main():
    results = await asyncio.gather(
        run_script_async(str(ok)),
        run_script_async(str(bad)),
        run_script_async(str(slow), timeout=0.5),
    )
    assert [r["status"] for r in results] == ["passed", "failed", "timeout"], results
    scheduler = AsyncScheduler(max_concurrency=2)
    ids = [scheduler.schedule(run_script_async, args=(str(p),)) for p in (ok, bad, ok)]
    jobs = await scheduler.run_all()
    assert [jobs[i].result["status"] for i in ids] == ["passed", "failed", "passed"]
    scheduler.close()

asyncio.run(main())

# The plugin's AsyncBackend (its scheduler on an event loop in a thread), without importing
# pytest, which this interpreter may not have: the plugin package is registered bare, so
# its __init__ (the pytest hooks) is skipped and only the backend module is loaded.
import os, types
import pytest_codomyrmex_exec
from pytest_codomyrmex_exec import ScriptSpec
plugin = types.ModuleType("pytest_codomyrmex_exec.plugin")
plugin.__path__ = [os.path.join(pytest_codomyrmex_exec.__path__[0], "plugin")]
sys.modules["pytest_codomyrmex_exec.plugin"] = plugin
from pytest_codomyrmex_exec.plugin.backends import AsyncBackend, ScriptJob

events = []
backend = AsyncBackend(2)
jobs = [ScriptJob(i, ScriptSpec(script=str(p))) for i, p in enumerate((ok, bad, slow))]
backend.start(jobs, dict(os.environ), events.append)
import time
deadline = time.monotonic() + 30
while sum(e.kind == "finished" for e in events) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
backend.cancel()  # from another thread, as the session does: kills the slow one
assert backend.join(30)
finished = {e.key: e.result["status"] for e in events if e.kind == "finished"}
assert finished == {0: "passed", 1: "failed", 2: "cancelled"}, finished
print("smoke ok", sys.version_info[:2])
"""


def test_async_engine_on_python_3_13_with_warnings_as_errors(tmp_path: Path) -> None:
    python = find_python("3.13")
    if python is None:
        pytest.skip("no Python 3.13 on this machine")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDEVMODE": "1"}
    run = subprocess.run(
        [python, "-W", "error", "-c", ASYNC_SMOKE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "smoke ok (3, 13)" in run.stdout
    assert "Warning" not in run.stderr, run.stderr


def test_find_python_finds_this_interpreter() -> None:
    # Keeps the 3.13 test from skipping for a broken finder rather than a missing Python.
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert find_python(version) is not None
