"""Scripts on Dask's distributed scheduler: ParallelRunner with a Dask executor."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_codomyrmex_exec import ParallelRunner, ScriptStatus

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_client() -> Iterator[object]:
    # Worker processes, so every job really crosses a process boundary (pickled there and back).
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            # Its HTTP routes would otherwise want port 8787, and warn (an error here) when
            # another cluster on the machine has it.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _write(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.write_text(code)
    return path


def test_scripts_run_on_dask_workers(dask_client: distributed.Client, tmp_path: Path) -> None:
    scripts = [
        _write(tmp_path, f"job{i}_script.py", "import os\nprint(os.getppid())\n") for i in range(4)
    ]
    failing = _write(tmp_path, "broken_script.py", "raise SystemExit(3)\n")
    runner = ParallelRunner(executor=dask_client.get_executor())

    batch = runner.run_scripts([*scripts, failing], timeout=30)

    assert (batch.total, batch.passed, batch.failed) == (5, 4, 1)
    assert batch.results[-1]["exit_code"] == 3
    worker_pids = {int(r["stdout"]) for r in batch.results[:4]}
    # The scripts' parents are Dask worker processes, not this test process.
    assert os.getpid() not in worker_pids


def test_cancel_reaches_scripts_on_dask_workers(
    dask_client: distributed.Client, tmp_path: Path
) -> None:
    sleeper = _write(
        tmp_path,
        "sleeper_script.py",
        # Written then renamed: the canceller acts as soon as the file exists, so it must
        # never see a file whose pid is not written yet.
        f"import os, time\nopen({str(tmp_path / 'pid.tmp')!r}, 'w').write(str(os.getpid()))\n"
        f"os.replace({str(tmp_path / 'pid.tmp')!r}, {str(tmp_path / 'pid')!r})\n"
        "time.sleep(60)\n",
    )
    runner = ParallelRunner(executor=dask_client.get_executor())
    pid_file = tmp_path / "pid"

    def cancel_once_started() -> None:
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.cancel()

    threading.Thread(target=cancel_once_started, daemon=True).start()
    started = time.monotonic()
    batch = runner.run_scripts([sleeper], timeout=60)

    assert batch.results[0]["status"] == ScriptStatus.CANCELLED
    assert time.monotonic() - started < 20
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
