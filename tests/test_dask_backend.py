"""--exec-backend dask: real pytest sessions on real Dask clusters, on loopback only.

Two kinds of cluster: the local cluster the backend starts itself (no address), and a
separately started ``dask scheduler`` with ``dask worker`` processes, the CLI users run,
reached with ``--exec-dask-scheduler``. The CLI cluster is shared by the module's tests.
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ExecPytester, still_alive
from test_plugin_ecosystem import interrupt, sleeper_with_child
from test_plugin_leaks import leftovers, records, write_tree

from pytest_codomyrmex_exec import FailureCause, ScriptSpec, ScriptStatus

distributed = pytest.importorskip("distributed")

DASK = str(Path(sys.executable).parent / "dask")


def _gpu_script(stamps: Path, hold: float = 0.6) -> str:
    """Holds the GPU for ``hold`` s and appends its start and end times to ``stamps``."""
    return (
        "# pytest.mark.exec(resources={'GPU': 1})\nimport time\n"
        f"start = time.time()\ntime.sleep({hold})\n"
        f"open({str(stamps)!r}, 'a').write(f'{{start}} {{time.time()}}\\n')\n"
    )


def _outcomes(px: ExecPytester) -> dict[str, str]:
    return {case.name: case.outcome for case in px.junit()}


_RECORD_BACKEND = """\
import pytest


@pytest.hookimpl(wrapper=True)
def pytest_exec_make_backend(config):
    backend = yield
    with open("backend.txt", "w") as out:
        out.write(type(backend).__name__)
    return backend


def pytest_exec_script_finished(item, result):
    with open("causes.txt", "a") as out:
        out.write(f"{item.name} {result['cause']}\\n")
"""


def _on_dask(px: ExecPytester, conftest: str = "") -> None:
    """Record which backend the session makes, so a test can prove it ran on Dask."""
    px.conftest(_RECORD_BACKEND + conftest)


def _ran_on_dask(px: ExecPytester) -> bool:
    return px.lines("backend.txt") == ["DaskBackend"]


def _causes(px: ExecPytester) -> dict[str, str]:
    """Each script's ``cause`` as the finished hook saw it (with :func:`_on_dask`)."""
    return dict(line.split(" ", 1) for line in px.lines("causes.txt"))


def scheduler_address(scheduler_file: Path) -> str:
    """The address in a starting ``dask scheduler``'s file, once the file is whole: it
    exists before its JSON is written, and an empty read failed on CI."""
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(scheduler_file.read_text())["address"])
        assert time.monotonic() < deadline, "the dask scheduler did not start"
        time.sleep(0.1)


@contextlib.contextmanager
def _start_cli_cluster(
    folder: Path, workers: list[tuple[list[str], dict[str, str]]]
) -> Iterator[str]:
    """``dask scheduler`` plus a ``dask worker`` process for each ``(arguments, environment)``
    (one thread each unless the arguments say ``--nthreads``); yields the scheduler address."""
    scheduler_file = folder / "scheduler.json"
    common = ["--no-dashboard", "--host", "127.0.0.1"]
    worker = [DASK, "worker", *common, "--scheduler-file", str(scheduler_file), "--nworkers", "1"]
    scheduler = [DASK, "scheduler", *common, "--port", "0", "--dashboard-address",
                 "127.0.0.1:0", "--scheduler-file", str(scheduler_file)]  # fmt: skip
    commands = [(scheduler, dict(os.environ))]
    for arguments, environment in workers:
        threads = [] if "--nthreads" in arguments else ["--nthreads", "1"]
        commands.append(([*worker, *threads, *arguments], environment))
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for index, (command, environment) in enumerate(commands):
            log = open(folder / f"log{index}.txt", "wb")  # noqa: SIM115 (closed below)
            logs.append(log)
            processes.append(subprocess.Popen(command, stdout=log, stderr=log, env=environment))
            if index == 0:  # the workers read its file: it must be whole first
                address = scheduler_address(scheduler_file)
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        # SIGINT: dask's scheduler and nannies close at once on it, while on SIGTERM each
        # waits out a grace period (8 s on an idle machine, 16 s on a loaded one).
        for process in reversed(processes):
            process.send_signal(signal.SIGINT)
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def _environment(**changes: str | None) -> dict[str, str]:
    """This process's environment with ``changes`` (``None``: removed)."""
    environment = dict(os.environ)
    for name, value in changes.items():
        environment.pop(name, None)
        if value is not None:
            environment[name] = value
    return environment


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` plus two ``dask worker`` processes: ``gpu`` (GPU=1) and ``plain``."""
    # Without pytest's CUDA_VISIBLE_DEVICES: two ids there would not match GPU=1.
    environment = _environment(CUDA_VISIBLE_DEVICES=None)
    workers = [
        (["--name", "gpu", "--resources", "GPU=1"], environment),
        (["--name", "plain"], environment),
    ]
    with _start_cli_cluster(tmp_path_factory.mktemp("dask-cli"), workers) as address:
        yield address


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two ``dask worker --resources GPU=2`` processes of two threads: ``w01`` without
    ``CUDA_VISIBLE_DEVICES``, ``w67`` with ``CUDA_VISIBLE_DEVICES=6,7``. Each has
    ``WORKER_NAME`` in its environment, for its scripts to say where they ran."""
    # No nanny: none of these tests kills a worker, so nothing needs restarting, and each
    # nanny is one more process importing distributed (the cluster's start is most of the
    # module's CPU).
    gpus = ["--nthreads", "2", "--resources", "GPU=2", "--no-nanny"]
    workers = [
        ([*gpus, "--name", "w01"], _environment(CUDA_VISIBLE_DEVICES=None, WORKER_NAME="w01")),
        ([*gpus, "--name", "w67"], _environment(CUDA_VISIBLE_DEVICES="6,7", WORKER_NAME="w67")),
    ]
    with _start_cli_cluster(tmp_path_factory.mktemp("dask-gpu"), workers) as address:
        yield address


_GPU_CLUSTER_IDS = {"w01": {"0", "1"}, "w67": {"6", "7"}}
"""The GPU ids each worker of :func:`gpu_cluster` has."""


def _wait_for_workers(address: str, count: int) -> None:
    """After a test killed a worker, its nanny restarts it: wait for the cluster to be whole."""
    with distributed.Client(address, timeout=30) as client:
        client.wait_for_workers(count, timeout=60)


# -- a local cluster, started by the backend --------------------------------------------------


def test_local_cluster_gives_each_outcome_and_names_the_worker(px: ExecPytester) -> None:
    _on_dask(px)
    report_parent = "import os\nprint('worker pid', os.getppid())\n"
    px.script("pass_script.py", report_parent)
    px.script("fail_script.py", report_parent + "raise SystemExit(3)\n")
    px.script(
        "slow_script.py",
        "# pytest.mark.exec(timeout=1)\nimport time\n" + report_parent + "time.sleep(60)\n",
    )
    px.script(
        "crash_script.py",
        report_parent + "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    px.script(
        "hog_script.py",
        "# pytest.mark.exec(memory_limit_mb=300)\n" + report_parent + "x = bytearray(2 * 10**9)\n",
    )
    started = time.monotonic()
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-workers", "2", "-v", "-rA",
        *px.junit_args(),
    )  # fmt: skip

    assert _ran_on_dask(px)
    assert time.monotonic() - started < 90
    assert _outcomes(px) == {
        "pass_script": "passed",
        "fail_script": "failed",
        "slow_script": "failed",
        "crash_script": "failed",
        "hog_script": "failed",
    }
    result.stdout.fnmatch_lines(
        [
            "fail_script.py failed: exit code 3 after *",
            "ran on worker tcp://127.0.0.1:* (name *)",
        ]
    )
    result.stdout.fnmatch_lines(["slow_script.py timed out after 1 s"])
    result.stdout.fnmatch_lines(["crash_script.py failed: killed by signal SIGSEGV after *"])
    result.stdout.fnmatch_lines(["hog_script.py failed: memory limit of 300 MB exceeded*"])
    # The junit report names the worker of every script.
    workers = {
        prop.get("value")
        for prop in ET.parse(px.junit_path).getroot().iter("property")
        if prop.get("name") == "worker"
    }
    assert len(workers) in (1, 2)
    assert all(w and w.startswith("tcp://127.0.0.1:") for w in workers)
    # The scripts ran in worker processes, not in pytest's; the cluster was closed at the end.
    parents = {int(line.split()[-1]) for line in result.outlines if line.startswith("worker pid")}
    assert parents
    assert result.ret == 1
    assert not still_alive(parents, within=10.0)


def test_priority_order_holds_on_one_single_thread_worker(px: ExecPytester) -> None:
    _on_dask(px)
    log = px.path / "order.txt"
    # Each line: the script's name, and the pid of the Dask worker that ran it.
    append = (
        f"import os\nopen({str(log)!r}, 'a').write(__file__.rsplit('/', 1)[1] + ' ' + "
        "os.environ.get('CODOMYRMEX_EXEC_DASK_WORKER', 'none') + '\\n')\n"
    )
    # Runs first and holds the only slot while the others are queued on the cluster. The
    # lowest and the highest priority a spec may have travel to the scheduler and back.
    px.script("first_script.py", f"# pytest.mark.exec(priority={-2**31})\nimport time\n"
              f"{append}time.sleep(1.5)\n")  # fmt: skip
    queued = (("p5", 5), ("m3", -3), ("max", 2**31 - 1), ("p0", 0), ("p2", 2), ("m9", -9))
    for name, priority in queued:
        px.script(f"{name}_script.py", f"# pytest.mark.exec(priority={priority})\n{append}")
    result = px.run("--exec-parallel", "--exec-backend", "dask", "--exec-workers", "1")

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=7)
    lines = [line.split() for line in px.lines("order.txt")]
    assert [name for name, _ in lines] == [
        f"{name}_script.py" for name in ("first", "m9", "m3", "p0", "p2", "p5", "max")
    ]
    assert len({worker for _, worker in lines}) == 1
    assert lines[0][1].startswith("Worker-")  # run by one Dask worker, named by its id


def test_choosing_dask_without_distributed_is_a_usage_error(px: ExecPytester) -> None:
    px.conftest("import sys\nsys.modules['distributed'] = None  # as if it were not installed\n")
    px.script("one_script.py", "")
    result = px.run("--exec-parallel", "--exec-backend", "dask")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pip install 'distributed>=2024.1'" in result.stderr.str()


def test_local_cluster_shares_out_exec_resources(px: ExecPytester) -> None:
    _on_dask(px)
    px.ini(exec_resources="GPU=1")
    stamps = px.path / "stamps.txt"
    for name in ("gpu_a", "gpu_b"):
        px.script(f"{name}_script.py", _gpu_script(stamps))
    px.script("tpu_script.py", "# pytest.mark.exec(resources={'TPU': 1})\n")
    result = px.run("--exec-parallel", "--exec-backend", "dask", "--exec-workers", "2")

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*needs resource TPU=1, which the ini option exec_resources*"])
    intervals = sorted(tuple(map(float, line.split())) for line in px.lines("stamps.txt"))
    assert len(intervals) == 2
    assert intervals[0][1] <= intervals[1][0], f"the GPU scripts overlapped: {intervals}"


# -- a separately started scheduler and workers (the dask CLI) -------------------------------


def test_cli_cluster_resources_are_never_oversubscribed(px: ExecPytester, cli_cluster: str) -> None:
    _on_dask(
        px,
        """
import time


def pytest_exec_script_started(item, settings):
    with open("started.txt", "a") as out:
        out.write(f"{item.name} {time.time()}\\n")
""",
    )
    stamps = px.path / "stamps.txt"
    started = px.path / "started.txt"
    # Each holds the GPU until its own started hook has run, then 0.6 s more: the started
    # event travels worker -> scheduler -> client before the hook runs, which on a loaded
    # machine no fixed hold is sure to outlast. A hook run only once the result came would
    # leave the script waiting in vain (30 s), and the check below would fail.
    gpu = f"""\
# pytest.mark.exec(resources={{'GPU': 1}})
import os, time
start = time.time()
me = os.path.basename(__file__)[: -len(".py")] + " "
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if os.path.exists({str(started)!r}):
        with open({str(started)!r}) as stream:
            if any(line.startswith(me) for line in stream):
                break
    time.sleep(0.02)
time.sleep(0.6)
open({str(stamps)!r}, "a").write(f"{{start}} {{time.time()}}\\n")
"""
    px.script("gpu_a_script.py", gpu)
    px.script("gpu_b_script.py", gpu)
    px.script("plain_script.py", "print('no resources needed')\n")
    px.script("tpu_script.py", "# pytest.mark.exec(resources={'TPU': 1})\n")
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster,
        "--exec-workers", "4", *px.junit_args(),
    )  # fmt: skip

    assert _ran_on_dask(px)
    assert _outcomes(px) == {
        "gpu_a_script": "passed",
        "gpu_b_script": "passed",
        "plain_script": "passed",
        "tpu_script": "error",
    }
    result.stdout.fnmatch_lines(
        ["*tpu_script.py could not run: needs resource TPU=1, which no Dask worker has*"]
    )
    assert _causes(px)["tpu_script"] == "resources"
    intervals = sorted(tuple(map(float, line.split())) for line in px.lines("stamps.txt"))
    assert len(intervals) == 2
    assert intervals[0][1] <= intervals[1][0], f"the GPU scripts overlapped: {intervals}"
    # The start hook ran while each script was still running, not when its result came.
    starts = sorted(
        float(line.split()[1]) for line in px.lines("started.txt") if line.startswith("gpu")
    )
    assert len(starts) == 2
    for start, (_, end) in zip(starts, intervals, strict=True):
        assert start < end - 0.2, f"started hook at {start}, script ended at {end}"


def test_x_on_the_cluster_leaves_no_process(px: ExecPytester, cli_cluster: str) -> None:
    _on_dask(px)
    # A sleeper (with a child of its own) runs on one worker; a failure on the other, once
    # both sleep, must stop them (the child too) within seconds.
    px.script(
        "sleep_script.py",
        """\
        # pytest.mark.exec(priority=-1)
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        _track(child.pid)
        time.sleep(120)
        """,
        track=True,
    )
    px.script(
        "fails_script.py",
        f"""\
        import os, time
        deadline = time.time() + 60
        while len(os.listdir({str(px.pid_dir)!r})) < 2 and time.time() < deadline:
            time.sleep(0.05)
        raise SystemExit(1)
        """,
    )
    px.script("later_script.py", "")
    started = time.monotonic()
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster,
        "-x", "--exec-timeout", "0",
    )  # fmt: skip

    assert _ran_on_dask(px)
    assert time.monotonic() - started < 60
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    result.assert_outcomes(failed=1)
    px.assert_no_process_left(at_least=2)


def test_leftovers_on_a_worker_are_killed_there_at_once_and_reported(
    px: ExecPytester, cli_cluster: str
) -> None:
    _on_dask(px)
    write_tree(px)  # z_check_script.py fails if leaky's leftovers outlive its report
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster,
        *px.report_args(),
    )  # fmt: skip

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["  leaky_script.py: 2 processes", "*  sleep 300"])
    line = records(px)["leaky_script.py"]
    assert {entry["pid"] for entry in line["leaked"]} == set(leftovers(px))
    px.assert_no_process_left(at_least=3)


def test_ctrl_c_kills_the_scripts_on_the_workers(px: ExecPytester, cli_cluster: str) -> None:
    _on_dask(px)
    # One of them ignores SIGTERM: only the SIGKILL after the grace period stops it.
    px.script("sleep0_script.py", sleeper_with_child(px, stubborn=True))
    px.script("sleep1_script.py", sleeper_with_child(px))
    mode = ["--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster]
    text, elapsed = interrupt(px, mode, 4, presses=1)

    assert _ran_on_dask(px)
    assert "KeyboardInterrupt" in text
    assert "INTERNALERROR" not in text
    assert elapsed < 15, f"pytest took {elapsed:.1f} s to stop"
    px.assert_no_process_left(at_least=4)


def test_pytest_killed_outright_leaves_no_script_on_the_workers(
    px: ExecPytester, cli_cluster: str
) -> None:
    # SIGKILL: no cancel is ever sent. The scheduler drops the dead client's tasks, and the
    # running task sees its own cancellation and kills its script's tree.
    px.script("sleep_script.py", sleeper_with_child(px))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--exec-parallel"]
    command += ["--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster]
    with subprocess.Popen(
        command, cwd=px.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as proc:
        try:
            pids = px.wait_for_pids(2)
        finally:
            proc.kill()
    assert not still_alive(pids, within=15.0)


def test_a_worker_killed_mid_script_is_an_error_naming_it(
    px: ExecPytester, cli_cluster: str
) -> None:
    _on_dask(px)
    runs = px.path / "runs.txt"
    parent = px.path / "victim-parent"
    px.script(
        "victim_script.py",
        f"""\
        # pytest.mark.exec(priority=-1)
        import os, time
        open({str(runs)!r}, "a").write("run\\n")
        # Written, then renamed: the killer SIGKILLs the pid it reads, so never half a pid.
        open({str(parent) + ".tmp"!r}, "w").write(str(os.getppid()))
        os.replace({str(parent) + ".tmp"!r}, {str(parent)!r})
        time.sleep(120)
        """,
        track=True,
    )
    for index in range(3):
        px.script(f"bystander{index}_script.py", "import time\ntime.sleep(0.5)\n")

    def kill_the_victims_worker() -> None:
        deadline = time.monotonic() + 60
        while not parent.exists():
            assert time.monotonic() < deadline, "the victim never started"
            time.sleep(0.05)
        os.kill(int(parent.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_victims_worker, daemon=True)
    killer.start()
    try:
        result = px.run(
            "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster,
            "--exec-timeout", "0", *px.junit_args(),
        )  # fmt: skip
    finally:
        killer.join(5)
        _wait_for_workers(cli_cluster, 2)

    assert _ran_on_dask(px)
    outcomes = _outcomes(px)
    assert outcomes.pop("victim_script") == "error"
    assert list(outcomes.values()) == ["passed"] * 3
    result.stdout.fnmatch_lines(
        [
            "*victim_script.py could not run: the Dask worker tcp://127.0.0.1:* died while "
            "running the script; it is not run a second time*"
        ]
    )
    assert px.lines("runs.txt") == ["run"]  # never started twice
    assert _causes(px)["victim_script"] == "worker_lost"
    px.assert_no_process_left(at_least=1)  # the orphaned script was killed


def test_a_worker_that_cannot_see_the_script_says_so(px: ExecPytester, cli_cluster: str) -> None:
    # The script vanishes after collection: as on a worker without the shared filesystem.
    _on_dask(
        px,
        """
import os


def pytest_collection_finish(session):
    os.remove(os.path.join(str(session.config.rootpath), "gone_script.py"))
""",
    )
    px.script("gone_script.py", "")
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", cli_cluster
    )

    assert _ran_on_dask(px)
    result.assert_outcomes(errors=1)
    assert _causes(px) == {"gone_script": "missing_path"}
    result.stdout.fnmatch_lines(
        [
            "*gone_script.py could not run: script not found: * on Dask worker tcp://127.0.0.1:*"
            "a shared filesystem*"
        ]
    )


def test_the_task_reports_a_missing_path_with_its_worker(cli_cluster: str) -> None:
    from pytest_codomyrmex_exec.plugin.dask_worker import WorkerRun, run_on_worker

    with distributed.Client(cli_cluster, timeout=30) as client:
        spec = ScriptSpec(script="/nonexistent/folder/x_script.py")
        run = WorkerRun(run_id="run-missing", session_tag="tag")
        result = client.submit(run_on_worker, spec, 0, run, pure=False).result(timeout=60)
    assert result["status"] == ScriptStatus.ERROR
    assert result["cause"] == FailureCause.MISSING_PATH
    assert str(result["worker"]).startswith("tcp://127.0.0.1:")
    assert "on Dask worker" in (result["error"] or "")
    assert "shared filesystem" in (result["error"] or "")


# -- nothing waits on a cluster without a deadline --------------------------------------------


@contextlib.contextmanager
def _not_a_scheduler(kind: str) -> Iterator[tuple[str, threading.Event]]:
    """A server on loopback that is no Dask scheduler, and an event set once someone connects:
    ``http`` is a web server, ``silent`` accepts and never says a word."""
    connected = threading.Event()
    server: socketserver.TCPServer
    if kind == "http":

        class Web(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                connected.set()
                super().setup()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Web)
    else:

        class Silent(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                connected.set()
                while self.request.recv(65536):
                    pass

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}", connected
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["http", "silent"])
def test_an_address_that_is_no_scheduler_makes_every_script_an_error_in_time(
    px: ExecPytester, kind: str
) -> None:
    _on_dask(px)
    px.ini(exec_dask_connect_timeout="2")
    px.script("a_script.py", "print('never runs')\n")
    px.script("b_script.py", "print('never runs')\n")
    with _not_a_scheduler(kind) as (address, connected):
        started = time.monotonic()
        result = px.run(
            "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", address,
            *px.junit_args(), timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert connected.is_set()

    assert _ran_on_dask(px)
    assert _outcomes(px) == {"a_script": "error", "b_script": "error"}
    assert _causes(px) == {"a_script": "engine", "b_script": "engine"}
    for name in ("a", "b"):
        result.stdout.fnmatch_lines(
            [
                f"*{name}_script.py could not run: cannot use Dask: connecting to the scheduler "
                f"({address}): no answer in 2 s"
            ]
        )
    # Without a deadline the client waits for the handshake forever.
    assert elapsed < 25, f"pytest took {elapsed:.1f} s"


def test_sigterm_while_connecting_ends_pytest_promptly(px: ExecPytester) -> None:
    px.script("a_script.py", "print('never runs')\n")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--exec-parallel"]
    with _not_a_scheduler("silent") as (address, connected):
        command += ["--exec-backend", "dask", "--exec-dask-scheduler", address]
        with subprocess.Popen(
            command, cwd=px.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc:
            try:
                assert connected.wait(60), "pytest never tried to connect"
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                output, _ = proc.communicate(timeout=30)
                elapsed = time.monotonic() - signalled
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "INTERNALERROR" not in text
    # The connect deadline is 30 s; before it existed, the stop waited for up to a day.
    assert elapsed < 10, f"pytest took {elapsed:.1f} s after SIGTERM"


def test_x_starts_no_queued_script_after_the_failure(px: ExecPytester) -> None:
    _on_dask(px)
    started = px.path / "started"
    started.mkdir()
    px.script("fails_script.py", "# pytest.mark.exec(priority=-1)\nraise SystemExit(1)\n")
    for index in range(4):
        px.script(
            f"queued{index}_script.py",
            f"open({str(started / f'queued{index}')!r}, 'w').close()\n",
        )
    result = px.run("-x", "--exec-parallel", "--exec-backend", "dask", "--exec-workers", "1")

    assert _ran_on_dask(px)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    assert sorted(os.listdir(started)) == [], "queued scripts started after the failure"


def test_x_lets_the_queue_go_on_after_a_skip_exit_code(px: ExecPytester) -> None:
    # The exit is held for pytest's judgement like a failure; pytest counts it a skip, so
    # the queued scripts must start after all (not wait for ever, not be cancelled).
    _on_dask(px)
    px.ini(exec_skip_exit_codes="77")
    px.script("skips_script.py", "# pytest.mark.exec(priority=-1)\nraise SystemExit(77)\n")
    for index in range(3):
        px.script(f"queued{index}_script.py", "")
    result = px.run("-x", "--exec-parallel", "--exec-backend", "dask", "--exec-workers", "1")

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=3, skipped=1)


@contextlib.contextmanager
def _run_on_a_lone_scheduler(
    px: ExecPytester, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """A ``dask scheduler`` of the test's own, with no worker, and a pytest run on it that has
    sent its scripts there (they wait: no worker): the scheduler's and pytest's processes."""
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--no-dashboard", "--host", "127.0.0.1", "--port", "0",
         "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        address = scheduler_address(scheduler_file)
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--exec-parallel"]
        command += ["--exec-backend", "dask", "--exec-dask-scheduler", address]
        with subprocess.Popen(
            [*command, *px.junit_args()],
            cwd=px.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as pytest_process:
            try:
                deadline = time.monotonic() + 60
                with distributed.Client(address, timeout=30) as watcher:
                    # A lambda: sent by value, the scheduler cannot import this module.
                    while not watcher.run_on_scheduler(
                        lambda dask_scheduler: len(dask_scheduler.tasks)
                    ):
                        assert time.monotonic() < deadline, "the script never reached Dask"
                        time.sleep(0.1)
                yield scheduler, pytest_process
            finally:
                if pytest_process.poll() is None:
                    pytest_process.kill()
                    pytest_process.wait()
    finally:
        scheduler.kill()
        scheduler.wait()


def test_a_scheduler_that_dies_mid_run_ends_it_with_errors(
    px: ExecPytester, tmp_path: Path
) -> None:
    _on_dask(px)
    px.ini(exec_dask_connect_timeout="3")
    px.script("a_script.py", "print('never runs: the cluster has no worker')\n")
    with _run_on_a_lone_scheduler(px, tmp_path) as (scheduler, pytest_process):
        scheduler.kill()
        killed = time.monotonic()
        output, _ = pytest_process.communicate(timeout=60)
        elapsed = time.monotonic() - killed
    text = output.decode(errors="replace")
    assert _ran_on_dask(px)
    assert _outcomes(px) == {"a_script": "error"}, text
    assert _causes(px) == {"a_script": "engine"}
    assert "lost the connection to Dask" in text, text
    assert elapsed < 30, f"pytest took {elapsed:.1f} s after the scheduler died"


def test_a_stop_the_scheduler_does_not_answer_is_abandoned_with_a_note(
    px: ExecPytester, tmp_path: Path
) -> None:
    # A frozen scheduler keeps its connections open and answers nothing: the cancel, the
    # sweep and the close would each wait for good.
    px.ini(exec_dask_call_timeout="2")
    px.script("a_script.py", "print('never runs: the cluster has no worker')\n")
    with _run_on_a_lone_scheduler(px, tmp_path) as (scheduler, pytest_process):
        scheduler.send_signal(signal.SIGSTOP)
        pytest_process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = pytest_process.communicate(timeout=60)
        elapsed = time.monotonic() - signalled
    text = output.decode(errors="replace")
    assert pytest_process.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "codomyrmex-exec: Dask (tcp://127.0.0.1:" in text, text
    assert "stopped answering (setting the cancel event: no answer in 2 s)" in text, text
    assert "the backend did not stop" not in text, text
    # Two exchanges of 2 s at most (the cancel, closing the client); before, for good.
    assert elapsed < 20, f"pytest took {elapsed:.1f} s after SIGTERM"


def test_the_worker_side_imports_nothing_of_pytest() -> None:
    """The task's module and what it imports of the package stay free of pytest's side."""
    package = Path(__file__).parent.parent / "pytest_codomyrmex_exec"
    for module in ("plugin/dask_worker.py", "plugin/environment.py"):
        tree = ast.parse((package / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("pytest", "_pytest", "pluggy"), (module, name)
                if name.startswith(".") and not name.startswith(".."):
                    assert name == ".environment", f"{module} imports the plugin's {name}"


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_an_unusable_deadline_is_a_usage_error_naming_the_key(px: ExecPytester, value: str) -> None:
    px.ini(exec_dask_call_timeout=value)
    px.script("a_script.py", "")
    result = px.run_inprocess("--exec-parallel", "--exec-backend", "dask")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini option 'exec_dask_call_timeout'" in result.stderr.str()
    assert repr(value) in result.stderr.str()


def test_local_capacities_are_shared_out_over_the_workers() -> None:
    from pytest_codomyrmex_exec.plugin.dask_backend import spread_resources

    assert spread_resources({"GPU": 1, "db": 2}, 2) == [{"GPU": 1.0, "db": 1.0}, {"db": 1.0}]
    assert spread_resources({"lic": 2.5}, 3) == [{"lic": 1.0}, {"lic": 1.0}, {"lic": 0.5}]
    assert spread_resources({}, 2) == [{}, {}]


def test_a_demand_no_single_worker_meets_is_named() -> None:
    from pytest_codomyrmex_exec.plugin.dask_backend import unmet_on_cluster

    workers = {"tcp://a:1": {"GPU": 1.0}, "tcp://b:2": {"db": 1.0}}
    assert unmet_on_cluster({"GPU": 1}, workers) is None
    assert "GPU=2, which no Dask worker has" in str(unmet_on_cluster({"GPU": 2}, workers))
    assert "no Dask worker has them all" in str(unmet_on_cluster({"GPU": 1, "db": 1}, workers))
    assert unmet_on_cluster({"GPU": 9}, {}) is None  # no worker yet: nothing to judge by


# -- device ids on the workers ----------------------------------------------------------------


def _device_script(stamps: Path, gpus: float, hold: float = 1.0) -> str:
    """Asks for ``gpus``, holds them ``hold`` s, and appends to ``stamps`` its name, start,
    end, ``CUDA_VISIBLE_DEVICES``, ``EXEC_RESOURCE_GPU`` and its worker's ``WORKER_NAME``."""
    return f"""\
# pytest.mark.exec(resources={{'GPU': {gpus}}})
import os, time
start = time.time()
time.sleep({hold})
fields = [os.path.basename(__file__)[: -len("_script.py")], str(start), str(time.time()),
          os.environ.get("CUDA_VISIBLE_DEVICES", "-"), os.environ.get("EXEC_RESOURCE_GPU", "-"),
          os.environ.get("WORKER_NAME", "-")]
open({str(stamps)!r}, "a").write(" ".join(fields) + "\\n")
"""


def _stamps(px: ExecPytester) -> dict[str, tuple[float, float, list[str], str]]:
    """Each device script's start, end, ids and worker, by name."""
    records = {}
    for line in px.lines("stamps.txt"):
        name, start, end, visible, exec_ids, worker = line.split()
        assert visible == exec_ids, f"{name}: CUDA_VISIBLE_DEVICES {visible}, ids {exec_ids}"
        records[name] = (float(start), float(end), visible.split(","), worker)
    return records


def test_each_worker_hands_out_its_own_device_ids(px: ExecPytester, gpu_cluster: str) -> None:
    _on_dask(px)
    stamps = px.path / "stamps.txt"
    asked = {f"one{index}": 1 for index in range(6)} | {"two0": 2, "two1": 2, "half0": 0.5}
    for name, gpus in asked.items():
        px.script(f"{name}_script.py", _device_script(stamps, gpus))
    report = px.path / "report.jsonl"
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", gpu_cluster,
        "--exec-workers", "4", "-v", "--exec-report", str(report), *px.junit_args(),
        "-o", "junit_family=xunit1",
    )  # fmt: skip

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=len(asked))
    records = _stamps(px)
    assert set(records) == set(asked)
    for name, (_, _, ids, worker) in records.items():
        assert len(set(ids)) == len(ids) == max(1, asked[name]), (name, ids)
        assert set(ids) <= _GPU_CLUSTER_IDS[worker], f"{name} on {worker} got {ids}"
    assert {worker for *_, worker in records.values()} == {"w01", "w67"}
    assert {unit for _, _, ids, _ in records.values() for unit in ids} == {"0", "1", "6", "7"}
    # No id held by two whole-device scripts at once on one worker, though some overlapped.
    whole = [(name, *records[name]) for name in asked if asked[name] >= 1]
    overlapped = False
    for index, (a, a_start, a_end, a_ids, a_worker) in enumerate(whole):
        for b, b_start, b_end, b_ids, b_worker in whole[index + 1 :]:
            if a_worker == b_worker and a_start < b_end and b_start < a_end:
                overlapped = True
                assert not set(a_ids) & set(b_ids), f"{a} and {b} shared {a_ids} / {b_ids}"
    assert overlapped, "no two device scripts ran at once on one worker"
    # The ids are in the results file and in -v, as they are locally.
    lines = [json.loads(line) for line in report.read_text().splitlines()[1:]]
    reported = {line["nodeid"].split("::")[-1][: -len("_script")]: line for line in lines}
    for name, (_, _, ids, _) in records.items():
        assert reported[name]["resource_ids"] == {"GPU": ids}
    result.stdout.fnmatch_lines([f"*two0_script PASSED (GPU={','.join(records['two0'][2])})*"])
    properties = {
        case.get("name"): {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        for case in ET.parse(px.junit_path).getroot().iter("testcase")
    }
    for name, (_, _, ids, _) in records.items():
        assert properties[f"{name}_script"]["exec_resources"] == f"GPU={','.join(ids)}"


def test_half_device_scripts_on_one_worker_share_an_id(px: ExecPytester, gpu_cluster: str) -> None:
    _on_dask(px)
    stamps = px.path / "stamps.txt"
    halves = [f"half{index}" for index in range(4)]
    for name in halves:
        px.script(f"{name}_script.py", _device_script(stamps, 0.5))
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", gpu_cluster,
        "--exec-workers", "4",
    )  # fmt: skip

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=4)
    records = _stamps(px)
    assert set(records) == set(halves)
    for name, (_, _, ids, worker) in records.items():
        assert len(ids) == 1, (name, ids)
        assert ids[0] in _GPU_CLUSTER_IDS[worker], f"{name} on {worker} got {ids}"
    # Two threads a worker: at most two halves at once there, packed onto one device.
    pairs = 0
    for index, a in enumerate(halves):
        for b in halves[index + 1 :]:
            a_start, a_end, a_ids, a_worker = records[a]
            b_start, b_end, b_ids, b_worker = records[b]
            if a_worker == b_worker and a_start < b_end and b_start < a_end:
                pairs += 1
                assert a_ids == b_ids, f"{a} got {a_ids}, {b} got {b_ids} at the same time"
    assert pairs, "no two half-device scripts ran at once on one worker"


def test_exclusive_is_refused_on_dask_naming_the_mark(px: ExecPytester, gpu_cluster: str) -> None:
    _on_dask(px)
    px.ini(exec_missing_resources="skip")  # a refusal is no missing resource: never a skip
    px.script("alone_script.py", "# pytest.mark.exec(exclusive=True)\nprint('ran')\n")
    px.script("other_script.py", "")
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-dask-scheduler", gpu_cluster
    )

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=1, errors=1)
    assert _causes(px)["alone_script"] == "engine"
    result.stdout.fnmatch_lines(
        [
            "*alone_script.py could not run: exec(exclusive=True) is not supported by "
            "--exec-backend dask*"
        ]
    )


def test_a_local_cluster_hands_out_the_ini_ids(px: ExecPytester) -> None:
    _on_dask(px)
    px.ini(exec_resources="GPU=0,1,2,3")
    stamps = px.path / "stamps.txt"
    for name in ("two0", "two1", "two2"):
        px.script(f"{name}_script.py", _device_script(stamps, 2, hold=0.2))
    report = px.path / "report.jsonl"
    result = px.run(
        "--exec-parallel", "--exec-backend", "dask", "--exec-workers", "2",
        "--exec-report", str(report),
    )  # fmt: skip

    assert _ran_on_dask(px)
    result.assert_outcomes(passed=3)
    header = json.loads(report.read_text().splitlines()[0])
    assert header["options"]["resources"] == {"GPU": ["0", "1", "2", "3"]}
    records = _stamps(px)
    assert len(records) == 3
    # Each of the two workers has two of the four ids, and a script asking for two gets both.
    for name, (_, _, ids, _) in records.items():
        assert sorted(ids) in (["0", "2"], ["1", "3"]), f"{name} got {ids}"


def test_a_local_cluster_shares_out_ids_round_robin() -> None:
    from pytest_codomyrmex_exec.engine import Slots
    from pytest_codomyrmex_exec.plugin.dask_backend import spread_resources

    shares = spread_resources({"GPU": Slots(["3", "5", "8"]), "db": 2}, 2)
    assert [{name: amount.ids for name, amount in share.items()} for share in shares] == [
        {"GPU": ("3", "8"), "db": ("0",)},
        {"GPU": ("5",), "db": ("1",)},
    ]


def test_worker_ids_come_from_its_environment_and_must_match_its_resources() -> None:
    from pytest_codomyrmex_exec.plugin.dask_worker import RESOURCE_IDS_VAR, worker_capacities

    def ids(capacities: dict[str, float]) -> dict[str, object]:
        return {name: getattr(amount, "ids", amount) for name, amount in capacities.items()}

    assert ids(worker_capacities({"GPU": 2.0}, {})) == {"GPU": 2.0}  # ids 0 and 1
    assert ids(worker_capacities({"GPU": 2.0}, {"CUDA_VISIBLE_DEVICES": "6,7"})) == {
        "GPU": ("6", "7")
    }
    given = {RESOURCE_IDS_VAR: '{"GPU": ["1", "3"]}', "CUDA_VISIBLE_DEVICES": "6,7"}
    assert ids(worker_capacities({"GPU": 2.0, "db": 1.0}, given)) == {"GPU": ("1", "3"), "db": 1.0}
    # A local cluster's share with a fraction has no ids: not those of pytest's variable.
    given = {RESOURCE_IDS_VAR: '{"GPU": null}', "CUDA_VISIBLE_DEVICES": "6,7"}
    assert ids(worker_capacities({"GPU": 1.5}, given)) == {"GPU": 1.5}
    with pytest.raises(ValueError, match=r"GPU=2 but CUDA_VISIBLE_DEVICES gives 3 ids \(6,7,8\)"):
        worker_capacities({"GPU": 2.0}, {"CUDA_VISIBLE_DEVICES": "6,7,8"})


def test_a_share_that_fits_no_unit_yet_waits_for_one() -> None:
    from pytest_codomyrmex_exec.plugin.dask_worker import WorkerPool

    class NeverCancelled:
        def is_set(self) -> bool:
            return False

    # Dask's count admits 0.8 after 0.6 and 0.6 on GPU=2; no single unit has 0.8 free.
    pool = WorkerPool({"GPU": 2.0})
    first = pool.take({"GPU": 0.6}, NeverCancelled())  # type: ignore[arg-type]
    assert first is not None
    assert pool.take({"GPU": 0.6}, NeverCancelled()) is not None  # type: ignore[arg-type]
    got: list[object] = []
    waiter = threading.Thread(
        target=lambda: got.append(pool.take({"GPU": 0.8}, NeverCancelled()))  # type: ignore[arg-type]
    )
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()
    assert not got
    pool.give({"GPU": 0.6}, first)
    waiter.join(10)
    assert got == [first]
