"""Shared helpers for the plugin tests: real pytest sessions on real scripts, and their traces.

Two fixtures live here (nothing autouse), so the engine tests are unaffected: ``px``, a
pytester with what every plugin test needs, and ``mode``, which runs a test once per way the
plugin can run scripts and proves that each script really ran that way. Scripts written with
``track=True`` record their pid (and may record their children's) in a folder;
:meth:`ExecPytester.assert_no_process_left` then proves nothing outlived the run.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest
from session_starter import STARTUP_VARIABLES

from pytest_codomyrmex_exec import ScriptResult

# pytest's own start-up dominates a short inner session; hypothesis alone costs ~0.4 s of it.
# Blocking plugins these tests never use keeps the suite fast (blocking an absent one is a no-op).
_FAST_ADDOPTS = "-p no:hypothesispytest -p no:benchmark"

# Installed plugins an inner session loads only when its arguments use them: each costs part of
# every session's start-up (xdist and coverage import their machinery even when idle), and the
# suite starts hundreds of sessions. pytest-timeout and pytest-rerunfailures stay: their ini
# keys and environment change what the plugin does even when no option names them.
_ON_DEMAND = (
    (("-n", "--numprocesses", "--dist", "--tx", "-d"), "-p no:xdist -p no:xdist.looponfail"),
    (("--cov",), "-p no:pytest_cov"),
)


def _unused_plugins(args: Iterable[str]) -> str:
    """``-p no:`` options for the on-demand plugins that ``args`` do not use."""
    given = [str(arg).split("=", 1)[0] for arg in args]

    def uses(prefixes: tuple[str, ...]) -> bool:
        # "-n" only as itself; a long option also with more after it ("--cov-report").
        return any(
            arg == p or (p.startswith("--") and arg.startswith(p))
            for arg in given
            for p in prefixes
        )

    return " ".join(block for prefixes, block in _ON_DEMAND if not uses(prefixes))


# A shell that starts the suite in the background (`cmd &`, nohup, some CI runners) starts it
# with SIGINT ignored, and an ignored signal stays ignored across exec: every inner pytest
# session would then be deaf to the Ctrl-C that the shutdown tests send it. A handled signal
# is reset to its default on exec, so handling it here gives the inner sessions what a
# terminal would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


FRESH_SESSIONS_VAR = "EXEC_TESTS_FRESH_SESSIONS"
"""Set (to anything), every inner session starts a new interpreter instead of being forked
from session_starter.py: slower, for comparing or when in doubt about the starter."""
CLOSE_STDIN = pytest.Pytester.CLOSE_STDIN
_ENVIRONMENT_AT_START = dict(os.environ)
"""The environment before any test changed it: the starter's (a variable a test sets for its
sessions does not make every later session start anew)."""


class _ForkedSession:
    """What pytester needs of a ``Popen`` (``stdin``, ``wait``, ``kill``), for a session that
    session_starter.py started."""

    stdin = None

    def __init__(self, connection: socket.socket, args: list[str]) -> None:
        self._connection = connection
        self._args = args
        self._pending = b""
        self.returncode: int | None = None
        self.pid = int(self._line(None))

    def _line(self, timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            self._connection.settimeout(left)
            try:
                chunk = self._connection.recv(64)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self._args, timeout or 0) from None
            if not chunk:
                raise RuntimeError("the session starter went away")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
            self._connection.close()
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class _SessionStarter:
    """session_starter.py, started once per process that runs these tests (each xdist worker)."""

    def __init__(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="exec-starter-"))
        self.socket_path = str(folder / "socket")
        environment = {k: v for k, v in _ENVIRONMENT_AT_START.items() if k != "PYTHONPATH"}
        self.startup = self._startup_values(environment)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("session_starter.py")), self.socket_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=environment,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the session starter did not start")
            time.sleep(0.01)

    @staticmethod
    def _startup_values(environment: dict[str, str]) -> dict[str, str]:
        return {
            name: value
            for name, value in environment.items()
            if name.startswith(STARTUP_VARIABLES) and name != "PYTHONPATH"
        }

    def start(self, args: list[str], env: dict[str, str], stdout: Any, stderr: Any) -> Any:
        """A started session, or ``None`` when the interpreter must start anew for it."""
        if self._startup_values(env) != self.startup or self.process.poll() is not None:
            return None
        read_end, write_end = os.pipe()
        os.close(write_end)  # as pytester's CLOSE_STDIN: a pipe that ends at once
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(self.socket_path)
            request = json.dumps({"args": args, "cwd": os.getcwd(), "env": env}).encode()
            socket.send_fds(connection, [request], [read_end, stdout.fileno(), stderr.fileno()])
        finally:
            os.close(read_end)
        return _ForkedSession(connection, args)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
            os.rmdir(os.path.dirname(self.socket_path))


_STARTERS: list[_SessionStarter] = []
"""The one starter of this process, once a session needed it."""


def _session_starter() -> _SessionStarter:
    if not _STARTERS:
        _STARTERS.append(_SessionStarter())
    return _STARTERS[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    for starter in _STARTERS:
        starter.stop()


RUN_TIMEOUT = 120.0
"""Seconds an inner session may take before the test fails instead of hanging the suite."""


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie nobody reaps yet counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def still_alive(pids: Iterable[int], within: float = 2.0) -> list[int]:
    """The pids still running after waiting up to ``within`` s (SIGKILL is not instant)."""
    pending = list(pids)
    deadline = time.monotonic() + within
    while True:
        pending = [pid for pid in pending if is_alive(pid)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.02)


class LoopSteps:
    """Counts the iterations of the running event loop, from :meth:`start` on (``count``):
    how many loop steps one thing takes after another."""

    def __init__(self) -> None:
        self.count = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:  # runs once per loop iteration
            self.count += 1
            loop.call_soon(tick)

        loop.call_soon(tick)


def error_of(result: ScriptResult) -> str:
    """The result's error text; a result that should carry one but does not fails here."""
    assert result["error"] is not None, result
    return result["error"]


def write_script(folder: Path, name: str, body: str) -> Path:
    """Write ``body`` (dedented) to ``folder/name``, creating the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


@dataclass
class Case:
    """One junit ``testcase``: its outcome as pytest counts it, its time and messages."""

    name: str
    classname: str
    time: float
    outcome: str
    messages: list[str] = field(default_factory=list)


def parse_junit(path: Path) -> list[Case]:
    """Every testcase of a junit file in document order (parsing proves the XML is valid)."""
    cases = []
    for element in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in element}
        if "error" in tags:
            outcome = "error"
        elif "failure" in tags:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        messages = [
            f"{child.get('message', '')}\n{child.text or ''}"
            for child in element
            if child.tag in ("error", "failure", "skipped")
        ]
        cases.append(
            Case(
                name=element.get("name", ""),
                classname=element.get("classname", ""),
                time=float(element.get("time", "nan")),
                outcome=outcome,
                messages=messages,
            )
        )
    return cases


class ExecPytester:
    """A :class:`pytest.Pytester` with the few things every plugin test needs."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.pid_dir = pytester.path / "pids"
        self.pid_dir.mkdir()
        self.junit_path = pytester.path / "junit.xml"
        self.results_path = pytester.path / "results.jsonl"

    # -- writing the project ------------------------------------------------------------------

    def tracker(self) -> str:
        """Lines that record the running process's pid; ``_track(pid)`` records another."""
        return textwrap.dedent(
            f"""\
            import os as _os
            def _track(pid):
                open(_os.path.join({str(self.pid_dir)!r}, str(pid)), "w").close()
            _track(_os.getpid())
            """
        )

    def report_waiter(self) -> str:
        """Lines that define ``_until_reported(name)``: wait (30 s at most) until the script
        ``name``'s result is in the results file, which a run writes with ``report_args()``.

        A script that must end after another was *reported* waits on this, not on a marker
        that the other touches: on a loaded machine the other's exit races this one's.
        """
        return textwrap.dedent(
            f"""\
            def _until_reported(name):
                import os, time
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if os.path.exists({str(self.results_path)!r}):
                        with open({str(self.results_path)!r}) as stream:
                            if '"' + name in stream.read():
                                return
                    time.sleep(0.02)
            """
        )

    def script(
        self, relpath: str, body: str = "", *, track: bool = False, waits: bool = False
    ) -> Path:
        """Write a script (``body`` is dedented); ``track`` prepends the pid recorder, ``waits``
        the :meth:`report_waiter`."""
        path = self.path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(body)
        if track:
            # After the mark lines would also work; first keeps line numbers predictable.
            text = self.tracker() + text
        if waits:
            text = self.report_waiter() + text
        path.write_text(text, encoding="utf-8")
        return path

    def ini(self, **keys: str) -> None:
        """Write ``pytest.ini`` with the given ``[pytest]`` keys."""
        lines = ["[pytest]", *(f"{key} = {value}" for key, value in keys.items())]
        self.pytester.makeini("\n".join(lines) + "\n")

    def conftest(self, body: str) -> None:
        self.pytester.makeconftest(textwrap.dedent(body))

    def backend_recorder(self) -> str:
        """conftest lines that record the backend the session made; :meth:`backend_used`
        reads it, so a backend-parametrized test sees its backend really ran."""
        return textwrap.dedent(
            f"""\
            import pytest
            @pytest.hookimpl(wrapper=True)
            def pytest_exec_make_backend(config):
                backend = yield
                with open({str(self.path / "backend.txt")!r}, "w") as stream:
                    stream.write(type(backend).__name__)
                return backend
            """
        )

    def backend_used(self) -> str:
        """The ``--exec-backend`` name of the backend that ran (see :meth:`backend_recorder`)."""
        names = {"ProcessBackend": "process", "AsyncBackend": "async", "DaskBackend": "dask"}
        return names[(self.path / "backend.txt").read_text()]

    # -- running ------------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = RUN_TIMEOUT) -> pytest.RunResult:
        """A pytest session in a subprocess (processes, signals and timing are real)."""
        addopts = os.environ.get("PYTEST_ADDOPTS", "")
        ini_files = ("pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml")
        ini = " ".join((self.path / n).read_text() for n in ini_files if (self.path / n).exists())
        blocked = _unused_plugins([*args, *ini.split()])
        if blocked:
            os.environ["PYTEST_ADDOPTS"] = f"{addopts} {blocked}"
        self.pytester.popen = self._popen  # type: ignore[method-assign]
        try:
            return self.pytester.runpytest_subprocess(*args, timeout=timeout)
        finally:
            del self.pytester.popen
            os.environ["PYTEST_ADDOPTS"] = addopts

    def _popen(self, cmdargs: Any, stdout: Any, stderr: Any, stdin: Any, **kw: Any) -> Any:
        """pytester's ``popen`` for ``python -m pytest ...``: the session is forked from
        session_starter.py unless what the interpreter reads as it starts differs."""
        command = [os.fspath(arg) for arg in cmdargs]
        forked = not os.environ.get(FRESH_SESSIONS_VAR)
        if forked and command[:2] == [sys.executable, "-mpytest"] and stdin is CLOSE_STDIN:
            env = os.environ.copy()
            # What pytester's popen adds, for conftest files and modules in the test's folder.
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [os.getcwd(), env.get("PYTHONPATH", "")])
            )
            session = _session_starter().start(command[2:], env, stdout, stderr)
            if session is not None:
                return session
        return type(self.pytester).popen(self.pytester, cmdargs, stdout, stderr, stdin, **kw)

    def run_inprocess(self, *args: str) -> pytest.RunResult:
        """A pytest session in this process: for collection and option checks only."""
        return self.pytester.runpytest_inprocess(*args)

    def report_args(self) -> tuple[str, str]:
        return ("--exec-report", str(self.results_path))

    def junit_args(self) -> tuple[str, str]:
        return ("--junitxml", str(self.junit_path))

    def junit(self) -> list[Case]:
        return parse_junit(self.junit_path)

    def junit_by_name(self) -> dict[str, Case]:
        cases = self.junit()
        by_name = {case.name: case for case in cases}
        assert len(by_name) == len(cases), f"duplicate testcases: {[c.name for c in cases]}"
        return by_name

    @staticmethod
    def section(result: pytest.RunResult, title: str) -> list[str]:
        """The lines under pytest's ``____ title ____`` heading, up to the next heading."""
        lines = result.outlines
        starts = [i for i, line in enumerate(lines) if line.strip("_ ") == title]
        assert starts, f"no section {title!r} in the output"
        body = []
        for line in lines[starts[0] + 1 :]:
            if line.startswith(("___", "===", "---")):
                break
            body.append(line)
        return body

    def lines(self, name: str) -> list[str]:
        """The lines of a file the scripts appended to (empty if none did)."""
        path = self.path / name
        return path.read_text().splitlines() if path.exists() else []

    # -- processes ----------------------------------------------------------------------------

    def pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.pid_dir.iterdir())

    def wait_for_pids(self, count: int, within: float = 30.0) -> list[int]:
        deadline = time.monotonic() + within
        while len(self.pids()) < count:
            assert time.monotonic() < deadline, f"only {len(self.pids())} of {count} started"
            time.sleep(0.02)
        return self.pids()

    def assert_no_process_left(self, at_least: int, within: float = 5.0) -> None:
        """Every recorded process is gone; ``at_least`` keeps the check from being vacuous.

        ``within``: when pytest was killed, the guardian (another process) does the killing
        after pytest is gone, and init reaps; on a loaded machine that takes a moment. The
        processes these tests leave behind would live 30 s or more, so the wait hides nothing.
        """
        pids = self.pids()
        assert len(pids) >= at_least, f"expected >= {at_least} recorded processes, got {pids}"
        left = still_alive(pids, within)
        for pid in left:  # do not leak them into the rest of the suite
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes outlived the run: {left}"

    def cleanup(self) -> None:
        for pid in self.pids():
            if is_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _start_up_variables_kept() -> Iterator[None]:
    """Each test starts and ends with the variables an interpreter reads as it starts as
    they were when the suite started. Starting a Dask cluster in this process (a module's
    fixture, too) sets PYTHONHASHSEED here for good: left there, every later session of this
    worker would differ from the session starter's and start anew (slower), and a test that
    a session was forked would fail by the order the tests ran in."""

    def put_back() -> None:
        for name in [k for k in os.environ if k.startswith(STARTUP_VARIABLES)]:
            if name not in _ENVIRONMENT_AT_START:
                del os.environ[name]
        os.environ.update(
            {k: v for k, v in _ENVIRONMENT_AT_START.items() if k.startswith(STARTUP_VARIABLES)}
        )

    put_back()
    yield
    put_back()


@pytest.fixture
def px(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterable[ExecPytester]:
    monkeypatch.setenv("PYTEST_ADDOPTS", _FAST_ADDOPTS)
    # pytest-timeout reads it in the inner sessions too, and scripts take their timeout from
    # it: a CI job that sets it would change what the tests expect (60 s default, ini values).
    monkeypatch.delenv("PYTEST_TIMEOUT", raising=False)
    # A CI matrix's shard (EXEC_SHARD) would shard every inner session too.
    monkeypatch.delenv("EXEC_SHARD", raising=False)
    # Wide enough that pytest does not cut the short summary lines the tests read.
    monkeypatch.setenv("COLUMNS", "240")
    helper = ExecPytester(pytester)
    yield helper
    helper.cleanup()


# -- modes: the ways the plugin runs scripts, each proved to have run -------------------------

Way = Literal["inline", "async", "process"]
"""What started a script: pytest's main thread (``inline``), the thread of an event loop
(``async``: the async backend) or another thread (``process``: the process backend's pool)."""


@dataclass(frozen=True)
class Mode:
    """One way to run scripts: the command-line arguments that choose it, and what each
    script's start must look like under it. Iterating gives the arguments (``px.run(*mode)``)."""

    name: str
    args: tuple[str, ...]
    way: Way
    warm: bool = False
    xdist: bool = False
    """Scripts run in pytest-xdist's workers (``-n``), not in the pytest that was started."""

    @property
    def parallel(self) -> bool:
        return self.way != "inline"

    def __iter__(self) -> Iterator[str]:
        return iter(self.args)

    def warmed(self) -> Mode:
        return replace(self, name=f"{self.name}-warm", args=(*self.args, "--exec-warm"), warm=True)


_COLD_MODES = [
    Mode("inline", (), "inline"),
    Mode("process", ("--exec-parallel", "--exec-backend", "process"), "process"),
    Mode("async", ("--exec-parallel", "--exec-backend", "async"), "async"),
    Mode("xdist", ("-n", "2"), "inline", xdist=True),
]
MODES = {mode.name: mode for cold in _COLD_MODES for mode in (cold, cold.warmed())}
"""Every mode by name; ``<name>-warm`` adds ``--exec-warm`` to ``<name>``."""
DEFAULT_MODES = ("inline", "process", "async")

_PROBE = Path(__file__).resolve().parent / "mode_probe"
"""The folder of ``exec_mode_probe``, the plugin that records each session's script starts."""
_PROBE_VAR = "EXEC_MODE_PROBE"
_CALL_PASSED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "modes(*names, cold_starts=0): the modes the `mode` fixture runs this test in (default: "
        f"{', '.join(DEFAULT_MODES)}; any of {', '.join(MODES)}); cold_starts: how many "
        "scripts must start cold in a warm mode",
    )
    config.addinivalue_line(
        "markers",
        "warm_modes(*names): the `mode` fixture runs the test's modes warm; with names, only "
        "those of its modes (all, when it has none of them)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``mode`` from the ``modes`` and ``warm_modes`` marks."""
    if "mode" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "mode" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            raise ValueError(
                f"{metafunc.definition.nodeid}: parametrizes 'mode' itself; use the `mode` "
                "fixture (and a `modes` mark), which proves that each mode really ran"
            )
    chosen = metafunc.definition.get_closest_marker("modes")
    names = chosen.args if chosen is not None and chosen.args else DEFAULT_MODES
    unknown = [name for name in names if name not in MODES]
    if unknown:
        raise ValueError(f"{metafunc.definition.nodeid}: unknown mode(s) {unknown}")
    modes = [MODES[name] for name in names]
    warm = metafunc.definition.get_closest_marker("warm_modes")
    if warm is not None:
        modes = [mode for mode in modes if mode.name in warm.args] or modes
        modes = [mode if mode.warm else mode.warmed() for mode in modes]
    metafunc.parametrize("mode", modes, ids=[mode.name for mode in modes], indirect=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep whether the test's call passed, for the ``mode`` fixture's teardown."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@dataclass(frozen=True)
class Start:
    """One script start, as the pytest that made it saw it (see mode_probe/)."""

    script: str | None
    way: Way
    warm: bool
    in_worker: bool
    """Made by a pytest-xdist worker."""

    def __str__(self) -> str:
        name = Path(self.script).name if self.script else "a script"
        where = " by an xdist worker" if self.in_worker else ""
        return f"{name}: {self.way}, {'warm' if self.warm else 'cold'}{where}"


_WAYS: dict[str, Way] = {"main": "inline", "loop": "async", "thread": "process"}


def observed_starts(folder: Path) -> list[Start]:
    """Every script start the probe recorded in ``folder``."""
    records: list[dict[str, Any]] = [
        ast.literal_eval(line)
        for path in sorted(folder.glob("*.records"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.endswith("}")  # a session killed mid-write leaves a cut line
    ]
    parent_of = {r["pid"]: r["ppid"] for r in records if r["kind"] == "pytest"}
    return [
        Start(r["script"], _WAYS[r["context"]], r["warm"], parent_of.get(r["pid"]) in parent_of)
        for r in records
        if r["kind"] == "start"
    ]


def check_mode(mode: Mode, starts: list[Start], cold_starts: int = 0) -> None:
    """The starts show ``mode`` at work. A parallel mode runs a script inline when it must
    (an xfail or skip mark), so inline starts may come beside its own, never instead."""
    seen = "\n  ".join(map(str, starts))
    assert starts, f"mode {mode.name}: no script started, so nothing shows that the mode ran"
    ways = Counter(start.way for start in starts)
    assert ways[mode.way], f"mode {mode.name}: no script started {mode.way}:\n  {seen}"
    assert set(ways) <= {mode.way, "inline"}, f"mode {mode.name}: foreign starts:\n  {seen}"
    cold = sum(not start.warm for start in starts)
    expected_cold = cold_starts if mode.warm else len(starts)
    assert cold == expected_cold, f"mode {mode.name}: {cold} cold start(s):\n  {seen}"
    if mode.xdist:
        assert all(s.in_worker for s in starts), f"mode {mode.name}: not by xdist:\n  {seen}"


@pytest.fixture
def mode(
    request: pytest.FixtureRequest,
    px: ExecPytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mode]:
    """The mode this test runs in (``MODES``; the ``modes`` mark chooses which). Every pytest
    session the test runs is watched; the test passes only if the scripts it started were
    started the mode's way (see :func:`check_mode`)."""
    chosen: Mode = request.param
    records = tmp_path_factory.mktemp("mode-records")
    monkeypatch.setenv(_PROBE_VAR, str(records))
    monkeypatch.setenv("PYTHONPATH", str(_PROBE), prepend=os.pathsep)
    monkeypatch.syspath_prepend(str(_PROBE))  # for sessions run in this process
    monkeypatch.setenv("PYTEST_ADDOPTS", f"{os.environ['PYTEST_ADDOPTS']} -p exec_mode_probe")
    yield chosen
    if not request.node.stash.get(_CALL_PASSED, False):
        return  # the test failed (or was skipped) on its own: that says enough
    marker = request.node.get_closest_marker("modes")
    cold_starts = int(marker.kwargs.get("cold_starts", 0)) if marker is not None else 0
    check_mode(chosen, observed_starts(records), cold_starts)


# -- what several test files share ---------------------------------------------------------------

# Prints each script's resolved timeout as the run starts (the hook pytest calls per script).
TIMEOUT_HOOK = """\
def pytest_exec_script_started(item, settings):
    with open("timeouts.txt", "a") as out:
        out.write(f"{item.name} {settings.timeout}\\n")
"""


# The summary, the report file and junit are made from results once a script has run: the
# parallel session's replay differs from an inline run, the backend that ran it does not.
AFTER_THE_RUN = pytest.mark.modes("inline", "async")


def write_mixed_project(px: ExecPytester) -> None:
    px.script("quick_script.py", "print('quick')\n")
    px.script("nap_script.py", "import time\ntime.sleep(1.2)\n")
    px.script("nap2_script.py", "import time\ntime.sleep(0.8)\n")
    px.script(
        "boom_script.py",
        """\
        def compute():
            raise RuntimeError("boom")

        compute()
        """,
    )
    px.script(
        "hang_script.py",
        "# pytest.mark.exec(timeout=0.5)\nimport time\ntime.sleep(30)\n",
    )
    px.script("crash_script.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")


# An inner session's own peak memory (RSS, MB), written to peak_mb.txt in its rootdir. VmHWM,
# not getrusage's ru_maxrss: that one keeps the peak of the process before its exec (or its
# fork), which is this test's xdist worker: a worker that had peaked at 443 MB made a soak
# session of 60 MB read as 443 MB on CI.
PEAK_MEMORY_CONFTEST = """\
import re

def pytest_unconfigure(config):
    with open("/proc/self/status") as status:
        peak_kb = re.search(r"^VmHWM:\\s+(\\d+) kB", status.read(), re.M)[1]
    (config.rootpath / "peak_mb.txt").write_text(str(int(peak_kb) / 1024))
"""

SUMMARY_LINE = re.compile(
    r"^(\d+) scripts?, ([\d.]+) s of script time in ([\d.]+) s(?:: ([\d.]+)x)?$", re.M
)


def summary_lines(result: pytest.RunResult) -> list[str]:
    """The lines of the run summary, under its ``=== codomyrmex-exec: script runs ===``."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if "= codomyrmex-exec: script runs =" in line]
    assert starts, "no run summary in the output"
    body = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("==="):
            break
        body.append(line)
    return body
