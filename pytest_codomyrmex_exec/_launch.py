"""Turn run_script's arguments into a validated launch plan, and a finished child into a result.

Shared by the blocking and the asyncio runners so both check input and read outcomes alike.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Collection, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import final

from .results import ScriptResult, ScriptStatus, make_result

RUN_TAG_VAR = "CODOMYRMEX_EXEC_RUN"
"""Set in every script's environment, unique per run. Descendants inherit it even when they
leave the script's process group (``setsid``, a daemon's double fork), so they can be found."""

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

# What an allocation refused by RLIMIT_AS leaves in stderr: Python's MemoryError, C's
# ENOMEM text, C++'s bad_alloc. A bare crash signal is not taken as proof on its own.
_MEMORY_ERROR_MARKERS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "std::bad_alloc",
)


class InvalidArgument(ValueError):
    """An argument that no script could run with (a programming error, raised)."""


@final
@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """Everything needed to start one script, checked."""

    script: Path
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout: float | None
    memory_limit_mb: float | None
    allowed_exit_codes: frozenset[int]
    tag: str
    """This run's value of :data:`RUN_TAG_VAR`, to find what escaped the process group."""


def validate_timeout(timeout: float | None) -> float | None:
    """Return ``timeout`` as a float, or raise for values that cannot mean a duration."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument(f"timeout must be a number of seconds, got {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def _validate_memory_limit(memory_limit_mb: float | None) -> float | None:
    if memory_limit_mb is None:
        return None
    if (
        isinstance(memory_limit_mb, bool)
        or not isinstance(memory_limit_mb, int | float)
        or not math.isfinite(memory_limit_mb)
        or memory_limit_mb <= 0
    ):
        raise InvalidArgument(
            f"memory_limit_mb must be a positive number of megabytes, got {memory_limit_mb!r}"
        )
    return float(memory_limit_mb)


def _pythonpath(script_dir: Path, inherited: str | None) -> str | None:
    """Prepend the nearest ``src/`` folders (script dir and up to 5 parents) to PYTHONPATH."""
    found: list[str] = []
    folder = script_dir
    for _ in range(SRC_SEARCH_DEPTH + 1):
        candidate = folder / "src"
        if candidate.is_dir():
            found.append(str(candidate))
        if folder.parent == folder:
            break
        folder = folder.parent
    if inherited:
        found.append(inherited)
    return os.pathsep.join(found) if found else None


def _resolve_interpreter(interpreter: str, search_path: str) -> str:
    """An absolute interpreter path: a bare name is looked up on the child's PATH, a relative
    path is taken from the caller's directory (the child starts in another one)."""
    if os.sep not in interpreter and not (os.altsep and os.altsep in interpreter):
        return shutil.which(interpreter, path=search_path) or interpreter
    return os.path.abspath(interpreter)


def plan_launch(
    script_path: str | os.PathLike[str],
    *,
    timeout: float | None,
    env: Mapping[str, str | None] | None,
    cwd: str | os.PathLike[str] | None,
    memory_limit_mb: float | None,
    args: Sequence[str],
    allowed_exit_codes: Collection[int],
    python: str | os.PathLike[str] | None,
    base_env: Mapping[str, str] | None,
) -> LaunchPlan | ScriptResult:
    """Check the arguments; return a plan, or an ``error`` result saying what is wrong.

    Invalid values (a NaN timeout, a negative memory limit) raise :class:`InvalidArgument`;
    things about the outside world (a missing file or folder) become an ``error`` result,
    since they are facts about one script, not bugs in the caller.
    """
    seconds = validate_timeout(timeout)
    memory = _validate_memory_limit(memory_limit_mb)
    if isinstance(args, str | bytes):
        raise InvalidArgument(f"args must be a sequence of strings, got {args!r}")
    argv_tail = [os.fspath(a) for a in args]
    codes = frozenset(allowed_exit_codes)
    if not codes or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise InvalidArgument(
            f"allowed_exit_codes must be a non-empty set of ints, got {allowed_exit_codes!r}"
        )

    script = Path(os.path.abspath(os.fspath(script_path)))
    label = str(script)

    def error(message: str) -> ScriptResult:
        return make_result(label, ScriptStatus.ERROR, error=message)

    if not script.exists():
        return error(f"script not found: {script}")
    if not script.is_file():
        return error(f"not a file: {script}")

    work_dir = script.parent if cwd is None else Path(os.path.abspath(os.fspath(cwd)))
    if not work_dir.is_dir():
        return error(f"working directory does not exist: {work_dir}")

    child_env = dict(os.environ if base_env is None else base_env)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value

    interpreter = os.fspath(python) if python is not None else sys.executable
    if not interpreter:
        return error("no Python interpreter: sys.executable is empty and none was given")
    interpreter = _resolve_interpreter(interpreter, child_env.get("PATH", os.defpath))
    if not os.path.isfile(interpreter) or not os.access(interpreter, os.X_OK):
        return error(f"Python interpreter not found or not executable: {interpreter}")

    tag = uuid.uuid4().hex
    child_env[RUN_TAG_VAR] = tag
    pythonpath = _pythonpath(script.parent, child_env.get("PYTHONPATH"))
    if pythonpath:
        child_env["PYTHONPATH"] = pythonpath

    argv = [interpreter, str(script), *argv_tail]
    if memory is not None:
        limit_bytes = int(memory * 1024 * 1024)
        argv = [interpreter, "-I", "-S", "-c", _RLIMIT_BOOTSTRAP, str(limit_bytes), *argv]

    return LaunchPlan(
        script=script,
        argv=argv,
        cwd=work_dir,
        env=child_env,
        timeout=seconds,
        memory_limit_mb=memory,
        allowed_exit_codes=codes,
        tag=tag,
    )


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def finished_result(
    plan: LaunchPlan,
    *,
    returncode: int,
    stdout: str,
    stderr: str,
    elapsed: float,
    timed_out: bool,
    cancelled: bool,
) -> ScriptResult:
    """Classify how a child ended: the one place exit codes become statuses."""
    sig = signal_name(-returncode) if returncode < 0 else None

    def result(status: ScriptStatus, error: str | None, memory_hit: bool = False) -> ScriptResult:
        return make_result(
            str(plan.script),
            status,
            error=error,
            exit_code=returncode,
            stdout=stdout,
            stderr=stderr,
            execution_time=elapsed,
            signal=sig,
            memory_limit_exceeded=memory_hit,
        )

    if cancelled:
        return result(ScriptStatus.CANCELLED, "cancelled")
    if timed_out:
        return result(ScriptStatus.TIMEOUT, f"timed out after {plan.timeout:g} s")
    if returncode in plan.allowed_exit_codes:
        return result(ScriptStatus.PASSED, None)

    limit = plan.memory_limit_mb
    memory_hit = limit is not None and any(
        marker in stderr[-4096:] for marker in _MEMORY_ERROR_MARKERS
    )
    if memory_hit:
        reason = f"memory limit of {limit:g} MB exceeded"
        reason += f" (killed by {sig})" if sig else f" (exit code {returncode})"
    elif sig:
        reason = f"killed by signal {sig} (exit code {returncode})"
        if limit is not None and sig in ("SIGSEGV", "SIGABRT", "SIGBUS"):
            # Native code often crashes rather than report a refused allocation.
            reason += f"; the memory limit of {limit:g} MB may be the cause"
    else:
        reason = f"exit code {returncode}"
    return result(ScriptStatus.FAILED, reason, memory_hit)


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
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
            group = os.getpgid(pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found += 1
        if group != own_group:
            kill_group(group)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def start_failed(logger: logging.Logger, plan: LaunchPlan, exc: OSError) -> ScriptResult:
    """The ``error`` result (and its log line) for a child that could not be started."""
    logger.warning("cannot start %s: %s", plan.script, exc)
    return make_result(str(plan.script), ScriptStatus.ERROR, error=f"cannot start: {exc}")


def log_finished(logger: logging.Logger, plan: LaunchPlan, result: ScriptResult) -> None:
    """One line per finished script: debug normally, a warning when it could not run."""
    log = logger.warning if result["status"] == ScriptStatus.ERROR else logger.debug
    log(
        "finished %s: %s (exit code %s) in %.3f s",
        plan.script,
        result["status"].value,
        result["exit_code"],
        result["execution_time"],
    )
