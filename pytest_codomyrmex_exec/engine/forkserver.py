"""Warm start: scripts forked from a pre-warmed interpreter, behind the launcher seam.

:class:`WarmLauncher` starts a server process once (``_warm_server.py``: its own session,
single-threaded, the preload list imported) and talks to it over a Unix socket pair. For
each script it sends the plan's fields (never a command line) and four descriptors (stdin,
the write ends of stdout and stderr, the write end of an exit-report pipe; a fifth, the
run's record file, when the spec asks for ``record``) with ``SCM_RIGHTS``; the server
forks a child that makes itself look like a fresh interpreter and runs the script, and
answers with the child's pid. The child leads its own session, so
``killpg`` from here works as for a cold start. The server reaps the child and writes its
return code to the exit-report pipe, whose read end is the :class:`WarmChild`'s ``exit_fd``.

What only a fresh interpreter can honour (another interpreter, a variable read at
interpreter start-up, ``warm=False``) starts cold instead; see
:meth:`WarmLauncher.fallback_reason`. If the server dies, the scripts it was running are
killed and become ``worker_lost`` errors naming the cause; the next script starts a new
server. A preload the server refuses or cannot finish makes every warm start an ``OSError``
naming the module, which the runners turn into an ``error`` result.

Linux (and other systems with ``fork`` and ``socket.send_fds``) only; elsewhere every
script starts cold, with that as the reason.
"""

from __future__ import annotations

import errno
import logging
import marshal
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import final

from .launch import (
    COLD,
    RUN_TAG_VAR,
    Child,
    LaunchPlan,
    kill_group,
    plan_launch,
    resolve_interpreter,
    signal_name,
)
from .spec import ScriptSpec

logger = logging.getLogger(__name__)

WARM_SUPPORTED = hasattr(os, "fork") and hasattr(socket, "send_fds") and sys.platform != "win32"
"""Can this platform warm-start at all (``fork`` and ``SCM_RIGHTS``)?"""

START_UP_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE")
"""Variables besides ``PYTHON*`` that an interpreter reads once, at start-up (the locale
decides the encodings of the standard streams and of file names)."""

_CHILD_PATH_VARIABLES = frozenset({"PYTHONPATH"})
"""``PYTHON*`` variables the child applies itself."""

_SERVER = Path(__file__).with_name("_warm_server.py")


def _read_at_start_up(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` that a forked child cannot take on: what start-up has read."""
    return {
        key: value
        for key, value in env.items()
        if (key.startswith("PYTHON") or key in START_UP_VARIABLES)
        and key != RUN_TAG_VAR
        and key not in _CHILD_PATH_VARIABLES
    }


_MAX_MESSAGE = 1 << 20
_READY_TIMEOUT = 120.0
"""Seconds the server may take by default to import its preload list and say it is ready."""
_TAG_LENGTH = 32  # uuid4().hex, as plan_launch makes the run tag


def _interpreter_path(python: str) -> str:
    return os.path.abspath(resolve_interpreter(python, os.environ.get("PATH", os.defpath)))


@final
class WarmChild:
    """A script forked by the server: not our child, so its exit comes through a pipe.

    The server reaps the script as soon as it exits, so unlike a cold start's zombie the
    leader's pid is free again when the stop sequence kills what is left in its group. The
    group id stays taken while any member lives (Linux frees a pid only once no process,
    group or session uses it), so that kill reaches the leftovers; with none left it finds
    no group, short of the pid being reused as a new group's id within those milliseconds.
    """

    def __init__(
        self, pid: int, stdout: int, stderr: int, exit_read: int, server: _Server, began: float
    ):
        self._pid = pid
        self._began = began
        self._stdout = stdout
        self._stderr = stderr
        self._exit = exit_read
        self._server = server
        self._buffer = b""
        self._code: int | None = None
        self._lost: str | None = None
        os.set_blocking(exit_read, False)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def pgid(self) -> int:
        return self._pid  # the child called setsid() before the server answered

    @property
    def stdout_fd(self) -> int:
        return self._stdout

    @property
    def stderr_fd(self) -> int:
        return self._stderr

    @property
    def exit_fd(self) -> int | None:
        return self._exit if self._exit >= 0 else None

    @property
    def lost(self) -> str | None:
        """Set when the server died while the script ran: it took the only record of the
        script's exit with it, so the stop sequence makes the run a ``worker_lost`` error."""
        return self._lost

    @property
    def began(self) -> float:
        return self._began

    def exited(self) -> bool:
        if self._code is None and self._lost is None:
            self._read(blocking=False)
        return self._code is not None or self._lost is not None

    def _read(self, *, blocking: bool) -> None:
        if self._exit < 0:
            return
        os.set_blocking(self._exit, blocking)
        try:
            while b"\n" not in self._buffer:
                chunk = os.read(self._exit, 64)
                if not chunk:
                    break
                self._buffer += chunk
        except BlockingIOError:
            return
        if b"\n" in self._buffer:
            self._code = int(self._buffer.split(b"\n", 1)[0])
            return
        # EOF without a status: the server died and took the only record of the exit.
        cause = self._server.death()
        self._lost = f"the warm-start server died ({cause}) while the script ran"
        logger.warning("%s: %s; killing its process group", self._pid, self._lost)
        kill_group(self.pgid)

    def wait(self) -> int:
        while self._code is None and self._lost is None:
            self._read(blocking=True)
        return self._code if self._code is not None else -signal.SIGKILL

    def close(self) -> None:
        if not self.exited():
            # Only when something went wrong on our side (KeyboardInterrupt): leave nothing.
            kill_group(self.pgid)
            self.wait()
        for fd in (self._stdout, self._stderr, self._exit):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self._stdout = self._stderr = self._exit = -1


class _Server:
    """One server process and the socket to it."""

    def __init__(
        self,
        python: str,
        preload: tuple[str, ...],
        env: Mapping[str, str],
        ready_timeout: float,
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server_env = dict(env)
        preload_path = server_env.pop("PYTHONPATH", "")
        server_env[RUN_TAG_VAR] = "0" * _TAG_LENGTH  # overwritten in each child (see server)
        try:
            with suppress(OSError):
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _MAX_MESSAGE)
            self.proc = subprocess.Popen(
                [python, str(_SERVER), str(theirs.fileno()), preload_path, *preload],
                # Never pytest's captured output of whichever test started the server; how
                # the server ended (exit code, signal) is what a dead server's report says.
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=server_env,
                start_new_session=True,
                cwd="/",
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.python = python
        self.env = server_env
        self._wait_until_ready(ready_timeout)
        logger.debug("warm-start server %d ready (preloaded %s)", self.proc.pid, preload)

    def _wait_until_ready(self, timeout: float) -> None:
        """Follow the server through its preload list (it names each module before importing
        it) to "ready"; ``_Broken`` naming the module when it fails, dies or hangs there."""
        deadline = time.monotonic() + timeout
        importing: str | None = None
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.0) or 1e-3)
            try:
                kind, value = self._receive()
            except TimeoutError:
                self.kill(grace=0.0)  # stuck in an import: it would not read an EOF either
                where = f" (still importing {importing!r})" if importing else ""
                raise _Broken(
                    f"it did not become ready in {timeout:g} s{where}", module=importing
                ) from None
            except OSError as exc:
                cause = self.death() if isinstance(exc, ConnectionError) else str(exc)
                self.kill(grace=0.0)
                if importing is not None:
                    raise _Broken(
                        f"cannot preload {importing!r}: the server died while importing it "
                        f"({cause})",
                        module=importing,
                    ) from None
                raise _Broken(f"{self.python} ended before it was ready ({cause})") from None
            if kind == "importing":
                importing = str(value)
            elif kind == "ready":
                self.sock.settimeout(None)
                return
            else:
                self.kill(grace=0.0)
                raise _Broken(str(value), module=importing)

    def _receive(self) -> tuple[str, object]:
        data = self.sock.recv(_MAX_MESSAGE)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "the server closed its socket")
        reply = marshal.loads(data)
        assert isinstance(reply, tuple)
        assert len(reply) == 2
        return (str(reply[0]), reply[1])

    def spawn(self, request: dict[str, object], fds: list[int]) -> int:
        """Send one request; the child's pid. ``OSError`` when the server cannot."""
        payload = marshal.dumps(request)
        if len(payload) > _MAX_MESSAGE:
            raise _TooLarge(f"the plan is {len(payload)} bytes, more than {_MAX_MESSAGE}")
        try:
            socket.send_fds(self.sock, [payload], fds)
            kind, value = self._receive()
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise _TooLarge(
                    f"the plan ({len(payload)} bytes) does not fit the socket"
                ) from None
            raise OSError(f"the warm-start server died ({self.death()})") from None
        if kind != "ok" or not isinstance(value, int):
            raise OSError(f"the warm-start server could not start the script: {value}")
        return value

    def alive(self) -> bool:
        return self.proc.poll() is None

    def death(self) -> str:
        """How the server ended, once it has (waits a moment for a dying one)."""
        try:
            code = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "its socket closed"
        if code < 0:
            return f"killed by {signal_name(-code)}"
        return f"exit code {code}"

    def kill(self, grace: float = 5.0) -> None:
        """Close the socket; on that EOF the server kills its scripts and exits. After
        ``grace`` seconds its whole session is killed."""
        with suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
            self.proc.wait()


class _TooLarge(OSError):
    """The plan does not fit one message: the script starts cold instead."""


class _Broken(OSError):
    """The server cannot start (a preload failed to import): it will not get better."""

    def __init__(self, message: str, module: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        """The preload module it was importing when it failed, if any."""


@final
class WarmLauncher:
    """Start scripts by forking them from a pre-warmed interpreter (a fork server).

    ``python`` is the server's interpreter (default: this one); ``preload`` names modules
    it imports once, so that scripts importing them find them loaded; ``env`` is the
    server's environment (default: ``os.environ``), which should be the scripts' base
    environment: variables an interpreter reads at start-up are compared with it, and its
    ``PYTHONPATH`` is where the preload list is found. ``ready_timeout``: seconds the server
    may take to import the preload list. ``optional_preload`` names modules imported after
    ``preload`` that may be dropped: one the server refuses, cannot import, or dies or hangs
    importing is dropped (named in :attr:`dropped`) and the server starts with the rest,
    where a ``preload`` module would make every warm start fail with that error. The server
    starts at the first warm spawn; that time is no script's (a script's timeout starts once
    its own process exists).
    Thread-safe; use as a context manager, or ``close()``.
    """

    def __init__(
        self,
        python: str | None = None,
        preload: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout: float = _READY_TIMEOUT,
        optional_preload: Iterable[str] = (),
    ) -> None:
        self.python = _interpreter_path(python or sys.executable)
        required = tuple(preload)
        optional = tuple(dict.fromkeys(n for n in optional_preload if n not in required))
        self.preload = required + optional
        self._optional = frozenset(optional)
        self.dropped: dict[str, str] = {}
        """``optional_preload`` modules dropped, with why the server refused them."""
        for name in self.preload:
            if not name or not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"preload: not a module name: {name!r}")
        if not ready_timeout > 0:  # NaN too
            raise ValueError(
                f"ready_timeout: must be a positive number of seconds, got {ready_timeout!r}"
            )
        self.ready_timeout = ready_timeout
        self.env = dict(os.environ if env is None else env)
        self._start_up_env = _read_at_start_up(self.env)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._broken: str | None = None
        self._closed = False
        self.cold_starts: dict[str, str] = {}
        """Scripts started cold, with the reason (the last one per script)."""
        self.last_start: dict[str, str | None] = {}
        """How each script last started: ``None`` when forked warm, else why it started cold.
        Reporting reads it instead of planning the launch a second time."""
        self.warm_starts = 0
        """How many scripts were forked from a server."""

    @property
    def server_pid(self) -> int | None:
        """The running server's pid, if one runs."""
        server = self._server
        return server.proc.pid if server is not None and server.alive() else None

    def __enter__(self) -> WarmLauncher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (it kills any script it still runs). Later spawns start cold."""
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            server.kill()

    # -- deciding -------------------------------------------------------------------------

    def fallback_reason(self, plan: LaunchPlan) -> str | None:
        """Why ``plan`` must start cold, or ``None`` when it can start warm."""
        if not WARM_SUPPORTED:
            return "this platform has no fork server (needs fork and SCM_RIGHTS)"
        if self._closed:
            return "the warm-start server is closed"
        spec = plan.spec
        if not spec.warm:
            return "warm=False"
        if os.path.abspath(plan.interpreter) != self.python:
            return f"another interpreter ({plan.interpreter})"
        mine_all, theirs_all = _read_at_start_up(plan.env), self._start_up_env
        for key in sorted(mine_all.keys() | theirs_all.keys()):  # sorted: the same reason always
            mine, theirs = mine_all.get(key), theirs_all.get(key)
            if mine != theirs:
                change = "unset" if mine is None else f"{key}={mine}"
                return f"{change} (read at interpreter start-up)"
        return None

    def reason_for(self, spec: ScriptSpec, base_env: Mapping[str, str] | None = None) -> str | None:
        """:meth:`fallback_reason` for a spec: what the plugin reports before a run."""
        plan = plan_launch(spec, None if base_env is None else dict(base_env))
        if not isinstance(plan, LaunchPlan):
            return None  # it will not start at all; its error says why
        return self.fallback_reason(plan)

    # -- starting -------------------------------------------------------------------------

    def spawn(self, plan: LaunchPlan) -> Child:
        reason = self.fallback_reason(plan)
        if reason is None:
            try:
                child = self._spawn_warm(plan)
            except _TooLarge as exc:
                reason = str(exc)
            else:
                self.last_start[plan.script] = None
                return child
        logger.info("starting %s cold: %s", plan.script, reason)
        self.cold_starts[plan.script] = reason
        self.last_start[plan.script] = reason
        return COLD.spawn(plan)

    def _running_server(self) -> _Server:
        if self._broken is not None:
            raise OSError(f"the warm-start server could not start: {self._broken}")
        server = self._server
        if server is not None and not server.alive():
            logger.warning("the warm-start server died (%s); starting a new one", server.death())
            server.kill()
            server = self._server = None
        while server is None:
            try:
                server = _Server(self.python, self.preload, self.env, self.ready_timeout)
            except _Broken as exc:
                if exc.module in self._optional and exc.module in self.preload:
                    # The failed server is gone with whatever the import left behind: a new
                    # one without that module (the list is shorter each time: this ends).
                    logger.warning("warm start: dropped preload %r: %s", exc.module, exc)
                    self.dropped[exc.module] = str(exc)
                    self.preload = tuple(name for name in self.preload if name != exc.module)
                    continue
                self._broken = str(exc)
                raise OSError(f"the warm-start server could not start: {exc}") from None
            self._server = server
        return server

    def _spawn_warm(self, plan: LaunchPlan) -> WarmChild:
        request: dict[str, object] = {
            "cwd": plan.cwd,
            "env": plan.env,
            "module": plan.as_module,
            "target": plan.target,
            "args": list(plan.spec.args),
            "memory": plan.memory_limit_bytes,
        }
        stdin = plan.open_stdin()
        stdin_fd = os.open(os.devnull, os.O_RDONLY) if isinstance(stdin, int) else stdin.fileno()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        exit_read, exit_write = os.pipe()
        handed = [stdin_fd, out_write, err_write, exit_write]
        if plan.record_fd is not None:  # the run's: closed by the run, not here
            handed.append(plan.record_fd)
        ok = False
        try:
            with self._lock:
                server = self._running_server()
                began = time.monotonic()  # the server is up: from here on it is the script's
                try:
                    pid = server.spawn(request, handed)
                    self.warm_starts += 1
                except _TooLarge:
                    raise
                except OSError:
                    if not server.alive():
                        server.kill()
                        self._server = None  # the next script starts a new server
                    raise
                except BaseException:
                    # Interrupted mid-conversation (Ctrl-C): the socket may still hold this
                    # request's answer. Retire the server (it kills what it forked for us).
                    self._server = None
                    server.kill()
                    raise
            ok = True
        finally:
            for fd in (out_write, err_write, exit_write):
                os.close(fd)  # the child has its copies now (or never will)
            if isinstance(stdin, int):
                os.close(stdin_fd)
            else:
                stdin.close()
            if not ok:
                for fd in (out_read, err_read, exit_read):
                    os.close(fd)
        return WarmChild(pid, out_read, err_read, exit_read, server, began)
