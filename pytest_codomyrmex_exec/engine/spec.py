"""ScriptSpec: one frozen, validated description of a script run.

Every way of running a script builds one: ``run_script`` and ``run_script_async`` from their
keywords, the runners from per-script configs, the pytest plugin from marks and options.
Validation happens here, once, before anything starts: a value no script could run with
raises ``TypeError`` or ``ValueError`` naming the field. Facts about the outside world (a
missing file, a missing folder) are not checked here; they become ``error`` results when
the run starts, since they are facts about one script, not bugs in the caller.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

DEFAULT_TIMEOUT = 60.0
"""Seconds a script may run when no timeout is given."""

DEFAULT_OUTPUT_LIMIT = 1024 * 1024
"""Bytes kept per stream by default (half from the start, half from the end)."""

DEFAULT_KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL when a script's tree is stopped, by default."""

DEFAULT_WORKERS_CAP = 8
"""Scripts run at once, when nobody says how many, are one per CPU but at most this many."""

PRIORITY_RANGE = (-(2**31), 2**31 - 1)
"""The priorities every runner and backend can carry: a signed 32-bit int (Dask's wire
format breaks on larger ones)."""

LONGEST_WAIT = 2**31 / 1000
"""The longest timeout, in seconds, that the OS can wait for in one call (about 24.8 days).
A longer timeout means "no timeout": ``None``, the one internal value for it."""

_LARGEST_MEMORY_MB = (2**63 - 1) / (1024 * 1024)
"""``setrlimit`` takes the limit in bytes as a signed 64-bit number."""


class InvalidSpec(ValueError):
    """A value no script could run with (a programming error, raised before anything starts)."""


class InvalidSpecType(InvalidSpec, TypeError):
    """A value of the wrong type. Both a ``TypeError`` and, like every bad value, a
    ``ValueError``, so callers can catch either."""


def validate_timeout(timeout: object) -> float | None:
    """Seconds as a float, or ``None`` for no timeout (``None``, infinity, or beyond
    :data:`LONGEST_WAIT`); raise for values that cannot mean a duration."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidSpecType(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise InvalidSpec(f"timeout must be a positive number of seconds, got {timeout!r}")
    return None if timeout > LONGEST_WAIT else float(timeout)


def validate_kill_grace(kill_grace: object) -> float:
    """Seconds as a float: 0 (SIGKILL right after SIGTERM) up to :data:`LONGEST_WAIT`; a stop
    must end, so there is no "no limit" here."""
    if isinstance(kill_grace, bool) or not isinstance(kill_grace, int | float):
        raise InvalidSpecType(f"kill_grace must be a number of seconds, got {kill_grace!r}")
    if not 0 <= kill_grace <= LONGEST_WAIT:  # NaN fails this too
        raise InvalidSpec(
            f"kill_grace must be from 0 to {int(LONGEST_WAIT)} seconds, got {kill_grace!r}"
        )
    return float(kill_grace)


def default_workers() -> int:
    """How many scripts run at once when nobody says: one per CPU, at most
    :data:`DEFAULT_WORKERS_CAP`."""
    return min(os.cpu_count() or 1, DEFAULT_WORKERS_CAP)


def validate_memory_limit(memory_limit_mb: object) -> float | None:
    """Megabytes as a float, or ``None``; raise for what ``setrlimit`` cannot take."""
    if memory_limit_mb is None:
        return None
    if isinstance(memory_limit_mb, bool) or not isinstance(memory_limit_mb, int | float):
        raise InvalidSpecType(
            f"memory_limit_mb must be a number of megabytes, got {memory_limit_mb!r}"
        )
    if not math.isfinite(memory_limit_mb) or memory_limit_mb <= 0:
        raise InvalidSpec(
            f"memory_limit_mb must be a positive number of megabytes, got {memory_limit_mb!r}"
        )
    if memory_limit_mb > _LARGEST_MEMORY_MB:
        raise InvalidSpec(
            f"memory_limit_mb={memory_limit_mb!r} is larger than any address space "
            f"(at most {_LARGEST_MEMORY_MB:.4g} MB)"
        )
    return float(memory_limit_mb)


def _positive_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpecType(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidSpec(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def _text(name: str, value: object) -> str:
    """A string an OS call can take: no NUL byte (``execve`` would refuse it)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InvalidSpecType(f"{name} must be a string, got {value!r}")
    if "\0" in value:
        raise InvalidSpec(f"{name} must not contain a NUL character: {value!r}")
    return value


def _unicode(name: str, value: str) -> str:
    """Text that can be encoded: a lone surrogate (``"\\udc80"``, what a bytes value decoded
    with ``surrogateescape`` holds) cannot cross a pipe, JSON or a Dask worker."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSpec(
            f"{name} must be valid Unicode text: {value!r} holds a lone surrogate "
            f"at index {exc.start}"
        ) from None
    return value


def _path(name: str, value: object) -> str:
    return os.path.abspath(_text(name, value))


def _args(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidSpecType(f"args must be a sequence of strings, got {value!r}")
    return tuple(_unicode("args", _text("args", arg)) for arg in value)


def _env(value: object) -> dict[str, str | None]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpecType(f"env must be a mapping of str to str (or None), got {value!r}")
    checked: dict[str, str | None] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidSpecType(f"env keys must be strings, got {key!r}")
        if not key or "=" in key or "\0" in key:
            raise InvalidSpec(
                f"env key {key!r} is not a valid variable name (empty, or has '=' or NUL)"
            )
        _unicode("env key", key)
        if item is not None and not isinstance(item, str):
            raise InvalidSpecType(f"env[{key!r}] must be a string or None, got {item!r}")
        if item is not None and "\0" in item:
            raise InvalidSpec(f"env[{key!r}] must not contain a NUL character")
        if item is not None:
            _unicode(f"env[{key!r}]", item)
        checked[key] = item
    return checked


def _exit_codes(value: object) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise InvalidSpecType(f"allowed_exit_codes must be a collection of ints, got {value!r}")
    codes = frozenset(value)
    if not codes or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise InvalidSpec(f"allowed_exit_codes must be a non-empty set of ints, got {value!r}")
    return codes


def _whole(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecType(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise InvalidSpec(f"{name} must be at least {minimum}, got {value}")
    return value


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecType(f"priority must be an int, got {value!r}")
    low, high = PRIORITY_RANGE
    if not low <= value <= high:
        raise InvalidSpec(
            f"priority must be from {low} to {high} (a signed 32-bit int), got {value}"
        )
    return value


def _module(value: object, script: str) -> str:
    """A dotted module name that names the script: ``a.b.c`` for ``.../a/b/c.py`` or
    ``.../a/b/c/__main__.py``, so the folder it is found from follows from the path."""
    if not isinstance(value, str):
        raise InvalidSpecType(f"module must be a dotted module name, got {value!r}")
    parts = value.split(".")
    if not all(part.isidentifier() for part in parts):
        raise InvalidSpec(f"module must be a dotted module name like 'pkg.tool', got {value!r}")
    if module_root(script, value) is None:
        tail = "/".join(parts)
        raise InvalidSpec(
            f"module={value!r} does not name the script {script}: its path must end in "
            f"{tail}.py or {tail}/__main__.py"
        )
    return value


def module_root(script: str, module: str) -> str | None:
    """The folder ``python -m module`` finds ``script`` from, or ``None`` if ``module`` does
    not name ``script``. Works for namespace packages (no ``__init__.py``)."""
    parts = module.split(".")
    path = os.path.normpath(script)
    for tail in ([*parts[:-1], parts[-1] + ".py"], [*parts, "__main__.py"]):
        suffix = os.sep + os.path.join(*tail)
        if path.endswith(suffix):
            return path[: -len(suffix)] or os.sep
    return None


def _resources(value: object) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpecType(f"resources must be a mapping of name to amount, got {value!r}")
    checked: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidSpecType(f"resource names must be non-empty strings, got {key!r}")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise InvalidSpecType(f"resources[{key!r}] must be a number, got {amount!r}")
        if not math.isfinite(amount) or amount <= 0:
            raise InvalidSpec(f"resources[{key!r}] must be a positive amount, got {amount!r}")
        if amount > 1 and not float(amount).is_integer():
            # Up to 1 is a share of one device; more is that many whole devices.
            raise InvalidSpec(f"resources[{key!r}] above 1 must be whole, got {amount!r}")
        checked[key] = amount
    return checked


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpecType(f"{name} must be True or False, got {value!r}")
    return value


@final
@dataclass(frozen=True, slots=True)
class ScriptSpec:
    """How one script runs. Build it with keywords; every field is checked on construction.

    Paths are made absolute against the current directory when the spec is built. The value
    is plain data, so it pickles and can travel to a process pool or a Dask worker.
    """

    script: str
    """The script's path (made absolute)."""
    args: tuple[str, ...] = ()
    """Arguments after the script's path: ``sys.argv[1:]``."""
    env: Mapping[str, str | None] = field(default_factory=dict)
    """Added to the base environment; a ``None`` value removes the variable."""
    cwd: str | None = None
    """Working directory; the script's own folder when ``None``."""
    timeout: float | None = DEFAULT_TIMEOUT
    """Seconds before the script's process tree is killed; ``None`` for no limit."""
    memory_limit_mb: float | None = None
    """Address-space limit of the script (``RLIMIT_AS``), in MB; ``None`` for no limit."""
    python: str | None = None
    """The interpreter; ``sys.executable`` when ``None``. A bare name is looked up on PATH."""
    allowed_exit_codes: frozenset[int] = frozenset({0})
    """Exit codes that count as passed."""
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    """Bytes of stdout and of stderr kept (head and tail); the middle is dropped."""
    max_runs: int = 1
    """Attempts for a script that fails or times out (errors and cancels are never retried)."""
    priority: int = 0
    """Start order among scripts waiting for a slot: lower numbers first."""
    resources: Mapping[str, float] = field(default_factory=dict)
    """Scarce resources the script holds while it runs, e.g. ``{"GPU": 1}``."""
    stdin: str | None = None
    """Text fed to the script's standard input (empty input when neither this nor
    ``stdin_file`` is set)."""
    stdin_file: str | None = None
    """A file fed to the script's standard input; relative to the script's folder."""
    as_module: bool = False
    """Run as ``python -m package.module`` from the top of the script's package (its chain of
    ``__init__.py`` files)."""
    module: str | None = None
    """Run as ``python -m`` this dotted name, which must name the script (``a.b.c`` for
    ``.../a/b/c.py``), from the folder above its first part: reaches modules in namespace
    packages, which ``as_module`` cannot."""
    run_for: float | None = None
    """Smoke-test an endless script: still running after this many seconds means passed."""
    warm: bool = True
    """May start from a pre-warmed interpreter when the runner has one."""
    exclusive: bool = False
    """Runs with no other script running (the runner waits for the others, they for it)."""
    kill_grace: float = DEFAULT_KILL_GRACE
    """Seconds between SIGTERM and SIGKILL when the script is stopped (timeout, cancel,
    ``run_for``): time to clean up."""
    record: bool = False
    """Record what the script's own process read, imported, wrote and ran
    (:class:`~pytest_codomyrmex_exec.engine.results.ScriptRecord` in the result's ``record``)."""

    def __post_init__(self) -> None:
        # Frozen: normalised values are written through object.__setattr__, once, here.
        put = object.__setattr__
        put(self, "script", _path("script", self.script))
        put(self, "args", _args(self.args))
        put(self, "env", _env(self.env))
        put(self, "cwd", None if self.cwd is None else _path("cwd", self.cwd))
        put(self, "timeout", validate_timeout(self.timeout))
        put(self, "memory_limit_mb", validate_memory_limit(self.memory_limit_mb))
        put(self, "python", None if self.python is None else _text("python", self.python))
        if self.python == "":
            raise InvalidSpec("python must not be empty")
        put(self, "allowed_exit_codes", _exit_codes(self.allowed_exit_codes))
        put(self, "output_limit", _whole("output_limit", self.output_limit, 2))
        put(self, "max_runs", _whole("max_runs", self.max_runs, 1))
        put(self, "priority", _priority(self.priority))
        put(self, "resources", _resources(self.resources))
        if self.stdin is not None:
            put(self, "stdin", _unicode("stdin", _text("stdin", self.stdin)))
        if self.stdin_file is not None:
            put(self, "stdin_file", _text("stdin_file", self.stdin_file))
            if self.stdin is not None:
                raise InvalidSpec("give stdin or stdin_file, not both")
        put(self, "as_module", _flag("as_module", self.as_module))
        if self.module is not None:
            put(self, "module", _module(self.module, self.script))
            if self.as_module:
                raise InvalidSpec("give module or as_module, not both")
        put(self, "run_for", _positive_seconds("run_for", self.run_for))
        put(self, "warm", _flag("warm", self.warm))
        put(self, "exclusive", _flag("exclusive", self.exclusive))
        put(self, "kill_grace", validate_kill_grace(self.kill_grace))
        put(self, "record", _flag("record", self.record))

    def replace(self, **changes: Any) -> ScriptSpec:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, script: str | os.PathLike[str], **keywords: Any) -> ScriptSpec:
        """Build from ``run_script``-style keywords; an unknown keyword is a ``TypeError``
        that lists the known ones."""
        unknown = sorted(set(keywords) - set(RUN_KEYWORDS))
        if unknown:
            raise InvalidSpecType(
                f"unknown run setting(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(RUN_KEYWORDS)}"
            )
        return cls(script=os.fspath(script), **keywords)


RUN_KEYWORDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ScriptSpec) if f.name != "script"
)
"""Every setting of a run, in declaration order: the one list of them."""

SEED_POSITIONAL: tuple[str, ...] = ("timeout", "env", "cwd", "memory_limit_mb")
"""The fields ``run_script`` and ``run_script_async`` also take by position after the script,
in the order the library has always had: ``run_script(path, 30, {"A": "1"}, "/tmp", 512)``."""
