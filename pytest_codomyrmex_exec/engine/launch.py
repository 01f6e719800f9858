"""From a ScriptSpec to a running child: the launch plan, the launcher seam, the kill helpers.

A :class:`Launcher` starts a plan and hands back a :class:`Child`: a pid, a process group,
the two output descriptors and a way to notice the exit. The cold launcher forks a fresh
interpreter with ``subprocess.Popen``; a fork server plugs in here too (its children are not
our children, so exit is reported through a descriptor instead of ``waitid``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, final

from .leaks import environ_has
from .recorder import cold_environment
from .results import FailureCause, ScriptResult, ScriptStatus, make_result
from .spec import ScriptSpec, module_root

logger = logging.getLogger(__name__)

RUN_TAG_VAR = "CODOMYRMEX_EXEC_RUN"
"""Set in every script's environment, unique per run. Descendants inherit it even when they
leave the script's process group (``setsid``, a daemon's double fork), so they can be found."""

SCRIPTS_VAR = "CODOMYRMEX_EXEC_SCRIPTS"
"""In every script's environment: the real paths of the scripts it runs inside, its own last,
joined by ``os.pathsep`` (what it inherited, then itself). A script that runs pytest on itself
(``pytest.main([__file__])`` under ``__main__``, common in example folders) would otherwise
run itself as a script item again, without end: the plugin does not make a script item of a
file on this list (see :func:`running_scripts`)."""

SRC_SEARCH_DEPTH = 5
"""How many parents of the script's folder are searched for a ``src/`` folder."""

# Sets the address-space limit in the child and then replaces itself with the real interpreter.
# A tiny bootstrap instead of ``preexec_fn``: preexec_fn is unsafe once the parent has threads
# (every pool, every event loop, pytest with plugins) and it disables vfork.
_RLIMIT_BOOTSTRAP = (
    "import os,resource,sys;"
    "n=int(sys.argv[1]);"
    "resource.setrlimit(resource.RLIMIT_AS,(n,n));"
    "os.execv(sys.argv[2],sys.argv[2:])"
)


@final
@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """A spec resolved against the world: the interpreter, what it runs, where, with what.

    It stays a value up to the launcher: the cold launcher builds the command line from it,
    the warm one sends its fields to the fork server; nobody parses a command line back.
    """

    spec: ScriptSpec
    interpreter: str
    """The interpreter's path, resolved (a bare name looked up on the child's ``PATH``)."""
    target: str
    """What the interpreter runs: the script's path, or its dotted module name when
    ``as_module`` (``python -m``)."""
    as_module: bool
    cwd: str
    env: dict[str, str]
    tag: str
    """This run's value of :data:`RUN_TAG_VAR`, to find what escaped the process group."""
    stdin_file: str | None = None
    """A file to read the script's stdin from; ``None`` with ``stdin`` text or no input."""
    record_fd: int | None = None
    """Where the script's process records what it uses (``record=True``): a descriptor the
    launcher hands to the script, owned by the run (see :mod:`.recorder`)."""

    @property
    def script(self) -> str:
        return self.spec.script

    @property
    def memory_limit_bytes(self) -> int | None:
        """The address-space limit (``RLIMIT_AS``) to set in the child, if any."""
        limit = self.spec.memory_limit_mb
        return None if limit is None else int(limit * 1024 * 1024)

    def open_stdin(self) -> IO[bytes] | int:
        """Empty input (``subprocess.DEVNULL``), the spec's text, or the spec's file; the
        caller closes a file once the child has its copy. Text goes through an unlinked
        temporary file, never a pipe: a script that does not read its input must not block
        us."""
        if self.stdin_file is not None:
            return open(self.stdin_file, "rb")
        if self.spec.stdin is None:
            return subprocess.DEVNULL
        holder = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the caller)
        holder.write(self.spec.stdin.encode())
        holder.seek(0)
        return holder


def _pythonpath(script_dir: str, inherited: str | None) -> str | None:
    """Prepend the nearest ``src/`` folders (script dir and up to 5 parents) to PYTHONPATH."""
    # os.path, not pathlib: this runs once per script start, and pathlib's parsing cost
    # more than the stat calls themselves.
    found: list[str] = []
    folder = script_dir
    for _ in range(SRC_SEARCH_DEPTH + 1):
        candidate = os.path.join(folder, "src")
        if os.path.isdir(candidate):
            found.append(candidate)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if inherited:
        found.append(inherited)
    return os.pathsep.join(found) if found else None


def resolve_interpreter(interpreter: str, search_path: str) -> str:
    """An absolute interpreter path: a bare name is looked up on the child's PATH, a relative
    path is taken from the caller's directory (the child starts in another one)."""
    if os.sep not in interpreter and not (os.altsep and os.altsep in interpreter):
        return shutil.which(interpreter, path=search_path) or interpreter
    return os.path.abspath(interpreter)


def package_root(script: Path) -> tuple[Path, str]:
    """The folder above the script's package (the top of its ``__init__.py`` chain) and the
    script's dotted module name from there."""
    parts = [script.stem]
    folder = script.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts)


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _input_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be a script's input, in words (``None``: it is a regular file).

    Only a regular file is accepted: opening a FIFO waits for a writer, and a device such as
    ``/dev/zero`` never ends, so either would hang the run instead of failing it.
    """
    try:
        mode = os.stat(path).st_mode  # stat, not open: it does not block on a FIFO
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
    return f"is not a regular file ({kind})"


def plan_launch(
    spec: ScriptSpec, base_env: dict[str, str] | None = None
) -> LaunchPlan | ScriptResult:
    """Resolve ``spec``; return a plan, or an ``error`` result saying what is missing."""
    script = Path(spec.script)

    def error(message: str, cause: FailureCause = FailureCause.MISSING_PATH) -> ScriptResult:
        return make_result(spec.script, ScriptStatus.ERROR, error=message, cause=cause)

    try:
        is_file = stat.S_ISREG(os.stat(script).st_mode)  # one stat call, not two
    except OSError:
        return error(f"script not found: {script}", FailureCause.MISSING_PATH)
    if not is_file:
        return error(f"not a file: {script}", FailureCause.MISSING_PATH)

    work_dir = spec.cwd if spec.cwd is not None else str(script.parent)
    if not os.path.isdir(work_dir):
        return error(f"working directory does not exist: {work_dir}", FailureCause.MISSING_PATH)

    stdin_file = None
    if spec.stdin_file is not None:
        stdin_file = os.path.join(script.parent, spec.stdin_file)
        problem = _input_file_problem(stdin_file)
        if problem is not None:
            return error(f"stdin_file {problem}: {stdin_file}")

    child_env = dict(os.environ if base_env is None else base_env)
    # As a shell would after cd: a script that reads PWD must not see pytest's folder.
    child_env["PWD"] = os.path.abspath(work_dir)
    for key, value in spec.env.items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value

    interpreter = spec.python if spec.python is not None else sys.executable
    if not interpreter:
        return error(
            "no Python interpreter: sys.executable is empty and none was given",
            FailureCause.START_FAILED,
        )
    interpreter = resolve_interpreter(interpreter, child_env.get("PATH", os.defpath))
    if not os.path.isfile(interpreter) or not os.access(interpreter, os.X_OK):
        return error(
            f"Python interpreter not found or not executable: {interpreter}",
            FailureCause.START_FAILED,
        )

    tag = uuid.uuid4().hex
    child_env[RUN_TAG_VAR] = tag
    outer = child_env.get(SCRIPTS_VAR)
    own = os.path.realpath(script)
    child_env[SCRIPTS_VAR] = f"{outer}{os.pathsep}{own}" if outer else own
    extra_paths: list[str] = []
    target = str(script)
    as_module = spec.as_module
    if spec.module is not None:
        extra_paths.append(str(module_root(spec.script, spec.module)))  # the spec checked it
        target, as_module = spec.module, True
    elif spec.as_module:
        root, target = package_root(script)
        extra_paths.append(str(root))
    pythonpath = _pythonpath(str(script.parent), child_env.get("PYTHONPATH"))
    joined = os.pathsep.join([*extra_paths, *([pythonpath] if pythonpath else [])])
    if joined:
        child_env["PYTHONPATH"] = joined

    return LaunchPlan(
        spec=spec,
        interpreter=interpreter,
        target=target,
        as_module=as_module,
        cwd=work_dir,
        env=child_env,
        tag=tag,
        stdin_file=stdin_file,
    )


# -- the launcher seam ----------------------------------------------------------------------


class Child(Protocol):
    """A started script, as the stop sequence sees it."""

    @property
    def pid(self) -> int: ...

    @property
    def pgid(self) -> int:
        """The script's own process group (it leads a new session)."""
        ...

    @property
    def stdout_fd(self) -> int: ...

    @property
    def stderr_fd(self) -> int: ...

    @property
    def exit_fd(self) -> int | None:
        """Readable once the script has exited (a pidfd), or ``None``: then poll ``exited``."""
        ...

    @property
    def lost(self) -> str | None:
        """Why the script's end is unknown (what ran it died with it), or ``None``: then
        :meth:`wait`'s return code says how it ended."""
        ...

    @property
    def began(self) -> float:
        """:func:`time.monotonic` when the script's own process was being made: its run time
        counts from here, not from when the launcher returned (a loaded machine may not run
        the caller again before a short script has ended), nor from before what the launcher
        did first (a warm server importing its preload list is nobody's script time)."""
        ...

    def exited(self) -> bool:
        """Has the script exited? Must not reap it: the group id must stay valid for killpg."""
        ...

    def wait(self) -> int:
        """Reap the exited script; its return code (negative: killed by that signal)."""
        ...

    def close(self) -> None:
        """Release descriptors; kill and reap the script if it still runs."""
        ...


class Launcher(Protocol):
    """Starts scripts. Raises ``OSError`` when one cannot be started."""

    def spawn(self, plan: LaunchPlan) -> Child: ...


@final
class ColdChild:
    """A child started by ``Popen``: exit is noticed through a pidfd, or by ``waitid`` polls."""

    def __init__(self, proc: subprocess.Popen[bytes], began: float) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._proc = proc
        self._began = began
        self._out = proc.stdout
        self._err = proc.stderr
        self._exit_fd: int | None = None
        if hasattr(os, "pidfd_open"):
            with suppress(OSError):
                self._exit_fd = os.pidfd_open(proc.pid)
        self._exited = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def pgid(self) -> int:
        return self._proc.pid  # start_new_session: the child leads its own group

    @property
    def stdout_fd(self) -> int:
        return self._out.fileno()

    @property
    def stderr_fd(self) -> int:
        return self._err.fileno()

    @property
    def exit_fd(self) -> int | None:
        return self._exit_fd

    @property
    def lost(self) -> None:
        return None  # our own child: its exit status always comes back

    @property
    def began(self) -> float:
        return self._began

    def exited(self) -> bool:
        if not self._exited:
            self._exited = self._check(blocking=False)
        return self._exited

    def _check(self, *, blocking: bool) -> bool:
        if self._proc.returncode is not None:
            return True
        if not hasattr(os, "waitid"):  # macOS before Python 3.13: reaping is the only look
            if blocking:
                self._proc.wait()
                return True
            return self._proc.poll() is not None
        flags = os.WEXITED | os.WNOWAIT | (0 if blocking else os.WNOHANG)
        try:
            return os.waitid(os.P_PID, self.pid, flags) is not None
        except ChildProcessError:
            return True

    def wait(self) -> int:
        self._check(blocking=True)
        self._exited = True
        return self._proc.wait()

    def close(self) -> None:
        if self._proc.returncode is None:
            # Only when something went wrong on our side (KeyboardInterrupt): leave nothing.
            kill_group(self.pgid)
            self._proc.wait()
        self._out.close()
        self._err.close()
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None


@final
class ColdLauncher:
    """Starts each script in a fresh interpreter, in a new session, with empty stdin."""

    def spawn(self, plan: LaunchPlan) -> ColdChild:
        stdin = plan.open_stdin()
        env = plan.env
        record_fds: tuple[int, ...] = ()
        if plan.record_fd is not None:
            env, record_fds = cold_environment(env, plan.record_fd), (plan.record_fd,)
        began = time.monotonic()
        try:
            proc = subprocess.Popen(
                _command_line(plan),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=plan.cwd,
                env=env,
                start_new_session=True,
                pass_fds=record_fds,
            )
        finally:
            if not isinstance(stdin, int):
                stdin.close()
        return ColdChild(proc, began)


def _command_line(plan: LaunchPlan) -> list[str]:
    """The one place a plan becomes an argv: ``python script args`` or ``python -m module
    args``, behind the memory-limit bootstrap when there is a limit."""
    target = ["-m", plan.target] if plan.as_module else [plan.target]
    argv = [plan.interpreter, *target, *plan.spec.args]
    limit = plan.memory_limit_bytes
    if limit is None:
        return argv
    return [plan.interpreter, "-I", "-S", "-c", _RLIMIT_BOOTSTRAP, str(limit), *argv]


COLD = ColdLauncher()
"""The default launcher."""


# -- killing --------------------------------------------------------------------------------


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a script's process group; a group that is already gone is fine."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_tagged(variable: str, value: str) -> int:
    """Kill every process whose environment has ``variable=value``, and its process group.

    Linux only (the environment is read from ``/proc/<pid>/environ``); elsewhere, and for
    processes we may not read, nothing is done. Returns how many processes were found.
    """
    if not os.path.isdir("/proc"):
        return 0
    needle = f"{variable}={value}".encode()
    own_group = os.getpgrp()
    me = os.getpid()
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        if not environ_has(pid, needle):
            continue
        try:
            group = os.getpgid(pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found += 1
        if group != own_group:
            kill_group(group)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def running_scripts(environ: Mapping[str, str]) -> frozenset[str]:
    """The real paths of the scripts this process runs inside (:data:`SCRIPTS_VAR`)."""
    return frozenset(path for path in environ.get(SCRIPTS_VAR, "").split(os.pathsep) if path)
