"""The recorder (issue 16): what a script's own process read, imported, wrote and ran.

Real scripts in temporary trees, run cold and warm, alone and through each runner; the
record must be the same however the script was started, survive a script killed outright,
and the script must not be able to tell that it was recorded.
"""

from __future__ import annotations

import _ctypes
import asyncio
import importlib.metadata
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_python_versions import find_python

from pytest_codomyrmex_exec import (
    AsyncParallelRunner,
    AsyncScheduler,
    ParallelRunner,
    ScriptRecord,
    ScriptSpec,
    ScriptStatus,
    WarmLauncher,
    run_script,
    run_script_async,
)
from pytest_codomyrmex_exec.engine.launch import COLD, Launcher

MAIN = """\
import os, subprocess, sys
import helper
import pluggy

data = open("data.txt").read()
with open("made.txt", "w") as fh:
    fh.write(data)
os.rename("made.txt", "moved.txt")
open("gone.txt", "w").close()
os.remove("gone.txt")
pid = os.fork()
if pid == 0:  # a forked child records into the same record
    open("forked.txt", "w").close()
    os._exit(0)
os.waitpid(pid, 0)
subprocess.run(["true"], check=True)
subprocess.run([sys.executable, "child.py"], check=True)
print("done", helper.VALUE)
"""


def _tree(folder: Path) -> Path:
    """A script with a local module, a data file, writes, a fork and two programs it runs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helper.py").write_text("VALUE = 1\n")
    (folder / "data.txt").write_text("some data\n")
    (folder / "child.py").write_text("open('child-wrote.txt', 'w').close()\n")
    script = folder / "main_script.py"
    script.write_text(MAIN)
    return script


def _expected(script: Path) -> ScriptRecord:
    folder = script.parent
    version = ".".join(str(part) for part in sys.version_info[:3])
    return ScriptRecord(
        reads=sorted(str(folder / name) for name in ("data.txt", "helper.py", script.name)),
        writes=sorted(
            str(folder / name) for name in ("forked.txt", "gone.txt", "made.txt", "moved.txt")
        ),
        distributions={"pluggy": importlib.metadata.version("pluggy")},
        interpreter=f"{sys.executable} {version}",
        unseen=[
            f"ran {shutil.which('true')}: not followed (not Python)",
            f"ran {sys.executable} child.py: not followed",
        ],
    )


@pytest.fixture(scope="module")
def warm_launcher() -> Iterator[WarmLauncher]:
    with WarmLauncher() as launcher:
        yield launcher


@pytest.fixture(params=["cold", "warm"])
def start(request: pytest.FixtureRequest, warm_launcher: WarmLauncher) -> Iterator[Launcher]:
    """A launcher of each kind; a warm one must really have forked every script it got."""
    if request.param == "cold":
        yield COLD
        return
    before = warm_launcher.warm_starts
    yield warm_launcher
    assert warm_launcher.warm_starts > before, f"none started warm: {warm_launcher.cold_starts}"
    assert not warm_launcher.cold_starts, warm_launcher.cold_starts


def test_the_record_lists_what_the_script_read_imported_wrote_and_ran(
    tmp_path: Path, start: Launcher
) -> None:
    script = _tree(tmp_path)

    result = run_script(script, record=True, launcher=start)

    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    assert result["stdout"] == "done 1\n"
    assert result["record"] == _expected(script)
    assert (tmp_path / "child-wrote.txt").exists()  # the Python child did run


def test_without_record_there_is_no_record(tmp_path: Path, start: Launcher) -> None:
    script = _tree(tmp_path)
    result = run_script(script, launcher=start)
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    assert result["record"] is None


def test_a_module_run_under_a_memory_limit_is_recorded_too(tmp_path: Path, start: Launcher) -> None:
    """``python -m`` and the memory-limit bootstrap (cold: a program before the script)."""
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("VALUE = 2\n")
    script = package / "main_script.py"
    script.write_text("from . import helper\nprint(helper.VALUE)\n")

    result = run_script(script, record=True, as_module=True, memory_limit_mb=4000, launcher=start)

    assert result["stdout"] == "2\n", result["stderr"]
    assert result["record"] is not None
    assert result["record"]["reads"] == [
        str(package / name) for name in sorted(("__init__.py", "helper.py", "main_script.py"))
    ]
    assert result["record"]["unseen"] == []


PROBE = """\
import os, sys

def fail(depth):
    if depth:
        fail(depth - 1)
    raise RuntimeError("probe")

first_fd = os.open(os.devnull, os.O_RDONLY)  # the number a script's first open() gets
print(sys.argv, sys.path, __file__, __name__, __spec__, os.getcwd(), first_fd)
print({k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "CODOMYRMEX_EXEC_REC"))})
print(sorted(sys.modules), sorted(sys.path_importer_cache.keys() - set(sys.path)))
sys.stdout.flush()
fail(2)
"""


@pytest.mark.parametrize("pythonpath", [None, "lib"])
def test_a_script_cannot_tell_it_is_recorded(
    tmp_path: Path, warm_launcher: WarmLauncher, pythonpath: str | None
) -> None:
    """Same output, traceback frame for frame, exit code, argv, path, module and cwd,
    recorded or not, cold or warm; with and without a PYTHONPATH of the caller's."""
    script = tmp_path / "probe_script.py"
    script.write_text(PROBE)
    env = {"PYTHONPATH": None if pythonpath is None else str(tmp_path / pythonpath)}
    seen = {}
    for launcher, start in ((COLD, "cold"), (warm_launcher, "warm")):
        for record in (False, True):
            result = run_script(
                script, record=record, launcher=launcher, args=["a b", "c"], env=env
            )
            assert (result["record"] is not None) == record
            seen[start, record] = (result["exit_code"], result["stdout"], result["stderr"])
    assert seen["cold", True] == seen["cold", False]
    assert seen["warm", True] == seen["warm", False]
    exit_code, stdout, stderr = seen["cold", False]
    assert exit_code == 1
    assert "['" + str(script) + "', 'a b', 'c']" in stdout
    assert stderr.count(f'File "{script}"') == 4  # <module> and three calls of fail()
    assert stderr.endswith("RuntimeError: probe\n")
    assert warm_launcher.warm_starts >= 2


def test_a_database_and_a_library_by_path_are_reads(tmp_path: Path) -> None:
    """sqlite3 and ctypes open their files in C: only their own audit events show them."""
    shutil.copy(_ctypes.__file__, tmp_path / "libmine.so")  # any shared library will do
    script = tmp_path / "db_script.py"
    script.write_text(
        "import ctypes, sqlite3\n"
        "sqlite3.connect('data.db').execute('create table t(x)').connection.commit()\n"
        "sqlite3.connect(':memory:').close()\n"
        "ctypes.CDLL('libc.so.6')\n"  # found by the system's search: no file of the tree
        "ctypes.CDLL('./libmine.so')\n"
    )
    result = run_script(script, record=True)
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    record = result["record"]
    assert record is not None
    assert record["reads"] == sorted(
        str(tmp_path / name) for name in ("data.db", "db_script.py", "libmine.so")
    )
    assert record["unseen"] == [
        f"opened the SQLite database {tmp_path / 'data.db'}: its writes are not seen"
    ]


def test_processes_multiprocessing_starts_are_recorded_or_named(tmp_path: Path) -> None:
    """Forked workers record into the same record; spawned ones start through
    ``_posixsubprocess``, which raises no audit event, and must still be named."""
    script = tmp_path / "pool_script.py"
    script.write_text(
        "import multiprocessing as mp\n"
        "def work(name):\n"
        "    open(name, 'w').close()\n"
        "if __name__ == '__main__':\n"
        "    with mp.get_context('fork').Pool(1) as pool:\n"
        "        pool.map(work, ['forked.txt'])\n"
        "    with mp.get_context('spawn').Pool(1) as pool:\n"
        "        pool.map(work, ['spawned.txt'])\n"
    )
    result = run_script(script, record=True)
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    assert (tmp_path / "spawned.txt").exists()
    record = result["record"]
    assert record is not None
    assert record["writes"] == [str(tmp_path / "forked.txt")]
    assert record["unseen"] == [
        "started Python processes with multiprocessing (spawn): not followed"
    ]


@pytest.mark.parametrize("version", ["3.7", "3.13"])
def test_on_another_interpreter_too_a_script_cannot_tell(tmp_path: Path, version: str) -> None:
    """The hook loads on any Python 3; before 3.8 (no audit hooks) it only removes itself,
    and the record says it did not start."""
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} here")
    script = tmp_path / "probe_script.py"
    script.write_text(PROBE)
    plain, recorded = (run_script(script, record=r, python=python) for r in (False, True))
    assert (recorded["stdout"], recorded["stderr"]) == (plain["stdout"], plain["stderr"])
    assert plain["stderr"].endswith("RuntimeError: probe\n")
    record = recorded["record"]
    assert record is not None
    assert record["reads"] == [str(script)]
    if version == "3.7":
        assert record["unseen"] == ["the recorder did not start in the script's process"]
    else:
        assert record["interpreter"].startswith(f"{python} {version}.")
        assert record["unseen"] == []


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        ("os.kill(os.getpid(), signal.SIGKILL)", ScriptStatus.FAILED),
        ("os._exit(3)", ScriptStatus.FAILED),
        ("time.sleep(60)", ScriptStatus.TIMEOUT),
    ],
)
def test_a_killed_script_keeps_what_it_recorded(
    tmp_path: Path, ending: str, status: ScriptStatus
) -> None:
    (tmp_path / "data.txt").write_text("x\n")
    script = tmp_path / "killed_script.py"
    script.write_text(
        "import os, signal, time\n"
        "open('data.txt').read()\n"
        "open('partial.txt', 'w').write('x')\n"
        "print('ready', flush=True)\n"
        f"{ending}\n"
    )
    began = time.monotonic()
    result = run_script(script, record=True, timeout=2, kill_grace=0.2)
    assert time.monotonic() - began < 20
    assert result["status"] == status
    record = result["record"]
    assert record is not None
    assert record["reads"] == sorted([str(tmp_path / "data.txt"), str(script)])
    assert record["writes"] == [str(tmp_path / "partial.txt")]
    assert record["unseen"] == []


def test_the_record_is_bounded_and_says_so(tmp_path: Path) -> None:
    script = tmp_path / "many_script.py"
    script.write_text(
        "for i in range(20100):\n"
        "    try:\n"
        "        open(f'missing-{i}.txt')\n"
        "    except FileNotFoundError:\n"
        "        pass\n"
        "print('ok')\n"
    )
    result = run_script(script, record=True)
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    record = result["record"]
    assert record is not None
    assert 19_990 < len(record["reads"]) <= 20_001  # the script itself is always a read
    assert record["unseen"] == ["more than 20000 paths: the rest were not recorded"]


def test_the_record_comes_back_through_the_parallel_runner_warm(
    tmp_path: Path, warm_launcher: WarmLauncher
) -> None:
    script = _tree(tmp_path / "a")
    other = _tree(tmp_path / "b")
    before = warm_launcher.warm_starts
    runner = ParallelRunner(max_workers=2, launcher=warm_launcher)
    batch = runner.run_specs(
        {
            "recorded": ScriptSpec.build(script, record=True),
            "plain": ScriptSpec.build(other),
        }
    )
    assert batch.passed == 2, [r["stderr"] for r in batch.results]
    assert warm_launcher.warm_starts == before + 2
    assert batch.results[0]["record"] == _expected(script)
    assert batch.results[1]["record"] is None


def test_the_record_comes_back_from_async_runs_and_both_async_runners(tmp_path: Path) -> None:
    scripts = [_tree(tmp_path / name) for name in ("alone", "runner", "scheduler")]

    async def run_all() -> list[ScriptRecord | None]:
        alone = await run_script_async(scripts[0], record=True)
        ran: list[ScriptRecord | None] = []
        runner = AsyncParallelRunner(on_task_complete=lambda _, r: ran.append(r["record"]))
        await runner.run([("runner", run_script_async, (scripts[1],))])
        scheduler = AsyncScheduler()
        scheduler.schedule(run_script_async, args=(scripts[2],), kwargs={"record": True})
        jobs = await scheduler.run_all()
        scheduled = [job.result["record"] for job in jobs.values()]
        return [alone["record"], *ran, *scheduled]

    alone, unrecorded, scheduled = asyncio.run(run_all())
    assert alone == _expected(scripts[0])
    assert unrecorded is None
    assert scheduled == _expected(scripts[2])


def test_the_record_comes_back_from_a_dask_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    distributed = pytest.importorskip("distributed")
    # Starting a cluster sets PYTHONHASHSEED in this process's environment; left there, the
    # module's warm launcher would start every later script cold ("read at start-up").
    # (delenv of an absent variable would record nothing to undo.)
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", ""))
    monkeypatch.delenv("PYTHONHASHSEED")
    from pytest_codomyrmex_exec.plugin.dask_worker import WorkerRun, run_on_worker

    script = _tree(tmp_path)
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster, timeout=30) as client,
    ):
        spec = ScriptSpec.build(script, record=True)
        run = WorkerRun(run_id="run-record", session_tag="tag")
        result = client.submit(run_on_worker, spec, 0, run, pure=False).result(timeout=60)
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    assert str(result["worker"]).startswith("tcp://127.0.0.1:")
    assert result["record"] == _expected(script)


def test_no_record_file_is_left_open(tmp_path: Path, start: Launcher) -> None:
    script = tmp_path / "short_script.py"
    script.write_text("print('x')\n")
    run_script(script, record=True, launcher=start)  # a warm server's own descriptors
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert run_script(script, record=True, launcher=start)["record"] is not None
    assert sorted(os.listdir("/proc/self/fd")) == before
