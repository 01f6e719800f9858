"""Command-line options and ini keys, and their resolution into one validated value."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Literal, cast, final

import pytest

from ..engine import parse_capacities

DEFAULT_TIMEOUT = 60.0
DEFAULT_PATTERNS = ["*_script.py"]
BACKENDS = ("process", "async", "dask")
# Chosen by bench/run.py (docs/performance.md): equal on CPU-bound scripts, 5% slower on 200
# tiny ones, 12% faster with 16 workers on sleeping ones, where "process" misses its target.
DEFAULT_BACKEND: Literal["process", "async"] = "async"
ORDERS = ("duration", "collection")

Backend = Literal["process", "async", "dask"]
Order = Literal["duration", "collection"]


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("codomyrmex-exec", "running *_script.py files as tests")
    group.addoption(
        "--exec-parallel",
        action="store_true",
        default=None,
        help="run script items in the background, in parallel (ini: exec_parallel)",
    )
    group.addoption(
        "--exec-workers",
        metavar="N|auto",
        default=None,
        help="scripts run at once with --exec-parallel; auto = min(cpus, 8) (ini: exec_workers)",
    )
    group.addoption(
        "--exec-backend",
        default=None,
        help=f"parallel engine: {' or '.join(BACKENDS)} (default {DEFAULT_BACKEND}; "
        "ini: exec_backend)",
    )
    group.addoption(
        "--exec-timeout",
        metavar="SECONDS",
        default=None,
        help=f"per-script timeout, 0 for none (default {DEFAULT_TIMEOUT:g}; ini: exec_timeout)",
    )
    group.addoption(
        "--exec-memory-limit",
        metavar="MB",
        default=None,
        help="per-script address-space limit in MB (Unix; ini: exec_memory_limit)",
    )
    group.addoption(
        "--exec-python",
        metavar="PATH",
        default=None,
        help="interpreter the scripts run with (default: pytest's own; ini: exec_python)",
    )
    group.addoption(
        "--exec-order",
        default=None,
        help="start order among equal priorities: duration (longest first, remembered from "
        "the last run) or collection (default duration; ini: exec_order)",
    )
    group.addoption(
        "--exec-dask-scheduler",
        metavar="ADDRESS",
        default=None,
        help="with --exec-backend dask: the scheduler to connect to (default: "
        "$DASK_SCHEDULER_ADDRESS, else a local cluster of --exec-workers processes; "
        "ini: exec_dask_scheduler)",
    )
    parser.addini(
        "exec_script_patterns",
        "glob patterns of script files",
        type="args",
        default=DEFAULT_PATTERNS,
    )
    parser.addini("exec_parallel", "run script items in parallel", type="bool", default=False)
    parser.addini("exec_workers", "scripts run at once (N or auto)", default="auto")
    parser.addini(
        "exec_backend", "parallel engine: process, async or dask", default=DEFAULT_BACKEND
    )
    parser.addini("exec_timeout", "per-script timeout in seconds", default="")
    parser.addini("exec_memory_limit", "per-script memory limit in MB", default="")
    parser.addini("exec_python", "interpreter the scripts run with", default="")
    parser.addini("exec_order", "start order: duration or collection", default="duration")
    parser.addini("exec_dask_scheduler", "address of the Dask scheduler to use", default="")
    parser.addini(
        "exec_resources",
        "capacities of scarce resources scripts ask for with exec(resources=...), "
        "e.g. 'GPU=1 db=2'",
        default="",
    )


@final
@dataclass(frozen=True, slots=True)
class ExecOptions:
    """The session-wide settings, from the command line or else the ini file."""

    patterns: tuple[str, ...]
    parallel: bool
    workers: int
    backend: Backend
    timeout: float | None
    """``None`` when neither the command line nor the ini file set one."""
    memory_limit_mb: float | None
    python: str | None
    order: Order
    dask_scheduler: str | None = None
    """The Dask scheduler's address; ``None``: start a local cluster (``--exec-backend dask``)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Capacities of scarce resources (ini ``exec_resources``)."""


def _pick(config: pytest.Config, option: str, ini: str) -> tuple[str, str] | None:
    """Return ``(value, where)`` from the command line, else the ini file, else ``None``."""
    value = config.getoption(option)
    if value is not None:
        return str(value), "--" + option.replace("_", "-")
    raw = config.getini(ini)
    if isinstance(raw, str) and raw.strip():
        return raw.strip(), f"ini option {ini!r}"
    return None


def _number(text: str, where: str, *, allow_zero: bool, allow_inf: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"{where}: expected a number, got {text!r}") from None
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise pytest.UsageError(f"{where}: expected a positive number, got {text!r}")
    if math.isinf(value) and not allow_inf:
        raise pytest.UsageError(f"{where}: expected a finite number, got {text!r}")
    return value


def _parallel(config: pytest.Config) -> bool:
    if config.getoption("exec_parallel"):
        return True
    try:
        return bool(config.getini("exec_parallel"))
    except (ValueError, pytest.UsageError) as exc:
        # pytest's own bool parsing says "invalid truth value 'maybe'" (as a ValueError
        # before pytest 9.2, a UsageError since) without naming the key: name it.
        raise pytest.UsageError(f"ini option 'exec_parallel': {exc}") from None


def _choice(config: pytest.Config, name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` from the command line or ini file, else ``default``."""
    picked = _pick(config, name, name)
    if picked is None:
        return default
    text, where = picked
    if text not in choices:
        raise pytest.UsageError(f"{where}: expected one of {', '.join(choices)}, got {text!r}")
    return text


def resolve_options(config: pytest.Config) -> ExecOptions:
    """Validate every option once, at configure time; a bad value is a UsageError naming it."""
    parallel = _parallel(config)

    workers = default_workers()
    picked = _pick(config, "exec_workers", "exec_workers")
    if picked and picked[0] != "auto":
        text, where = picked
        if not text.isdigit() or int(text) < 1:
            raise pytest.UsageError(
                f"{where}: expected a whole number >= 1 or 'auto', got {text!r}"
            )
        workers = int(text)

    backend = cast(Backend, _choice(config, "exec_backend", BACKENDS, DEFAULT_BACKEND))

    timeout: float | None = None
    picked = _pick(config, "exec_timeout", "exec_timeout")
    if picked:
        seconds = _number(*picked, allow_zero=True, allow_inf=True)  # inf, like 0: none
        timeout = math.inf if seconds == 0 else seconds

    memory: float | None = None
    picked = _pick(config, "exec_memory_limit", "exec_memory_limit")
    if picked:
        # An infinite limit would pass here and then break every launch: refuse it now.
        memory = _number(*picked, allow_zero=False, allow_inf=False)

    python: str | None = None
    picked = _pick(config, "exec_python", "exec_python")
    if picked:
        text, where = picked
        if not (os.path.isfile(text) and os.access(text, os.X_OK)):
            raise pytest.UsageError(f"{where}: no executable interpreter at {text!r}")
        python = os.path.abspath(text)

    order = cast(Order, _choice(config, "exec_order", ORDERS, "duration"))

    patterns = tuple(str(p) for p in config.getini("exec_script_patterns"))
    dask_scheduler = _dask_scheduler(config) if backend == "dask" else None
    resources = _resources(config)
    return ExecOptions(
        patterns=patterns,
        parallel=parallel,
        workers=workers,
        backend=backend,
        timeout=timeout,
        memory_limit_mb=memory,
        python=python,
        order=order,
        dask_scheduler=dask_scheduler,
        resources=resources,
    )


def _dask_scheduler(config: pytest.Config) -> str | None:
    """The scheduler address (option, ini, ``DASK_SCHEDULER_ADDRESS``); refuse the dask
    backend when ``distributed`` is missing."""
    try:
        found = importlib.util.find_spec("distributed") is not None
    except ValueError:  # sys.modules["distributed"] is None: blocked on purpose
        found = False
    if not found:
        raise pytest.UsageError(
            "--exec-backend dask needs the distributed package: "
            "pip install 'pytest-codomyrmex-exec[dask]'"
        )
    picked = _pick(config, "exec_dask_scheduler", "exec_dask_scheduler")
    if picked:
        return picked[0]
    return os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip() or None


def _resources(config: pytest.Config) -> dict[str, float]:
    raw = config.getini("exec_resources")
    try:
        return parse_capacities(raw if isinstance(raw, str) else "")
    except ValueError as exc:
        raise pytest.UsageError(f"ini option 'exec_resources': {exc}") from None
