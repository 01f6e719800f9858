"""A script item's settings, resolved: exec mark > command line > ini > pytest-timeout > default."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import pytest

from .marks import MarkError, check_exec_mark
from .options import DEFAULT_TIMEOUT, ExecOptions

# Variables pytest sets for itself; a script that runs pytest must not inherit them.
_PYTEST_ONLY_ENV = ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_VERSION")
_PYTEST_ONLY_ENV_PREFIXES = ("PYTEST_XDIST_",)


@final
@dataclass(frozen=True, slots=True)
class ScriptSettings:
    """How one script runs; the engine keywords plus scheduling."""

    timeout: float | None
    env: Mapping[str, str | None] = field(default_factory=dict)
    cwd: Path | None = None
    memory_limit_mb: float | None = None
    args: tuple[str, ...] = ()
    allowed_exit_codes: tuple[int, ...] = (0,)
    python: str | None = None
    priority: int = 0
    max_runs: int = 1

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``run_script`` / ``run_script_async``."""
        return {
            "timeout": self.timeout,
            "env": self.env,
            "cwd": self.cwd,
            "memory_limit_mb": self.memory_limit_mb,
            "args": self.args,
            "allowed_exit_codes": self.allowed_exit_codes,
            "python": self.python,
        }


SESSION_TAG_VAR = "CODOMYRMEX_EXEC_SESSION"
"""Set in every script's environment, one value per pytest session: at the end of the session
whatever still carries it (a daemon a script left behind) is found and killed."""


def child_environment(session_tag: str) -> dict[str, str]:
    """The environment scripts inherit: ours, less the variables that belong to pytest."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _PYTEST_ONLY_ENV and not key.startswith(_PYTEST_ONLY_ENV_PREFIXES)
    }
    env[SESSION_TAG_VAR] = session_tag
    return env


def _exec_mark_values(item: pytest.Item) -> dict[str, Any]:
    """Merge every exec mark on the item; the closest mark wins per keyword."""
    merged: dict[str, Any] = {}
    for mark in item.iter_markers("exec"):
        try:
            values = check_exec_mark(mark.args, mark.kwargs)
        except MarkError as exc:
            raise MarkError(f"{item.nodeid}: {exc}") from None
        for key, value in values.items():
            merged.setdefault(key, value)
    return merged


def _pytest_timeout(item: pytest.Item) -> float | None:
    """pytest-timeout's setting for this item, if it is loaded, looked up in its own order:
    mark, then option, then the PYTEST_TIMEOUT variable, then ini."""
    config = item.config
    if not config.pluginmanager.hasplugin("timeout"):
        return None
    mark = item.get_closest_marker("timeout")
    candidates: list[object] = []
    if mark is not None:
        candidates.append(mark.kwargs.get("timeout", mark.args[0] if mark.args else None))
    candidates.append(config.getoption("timeout", None))
    candidates.append(os.environ.get("PYTEST_TIMEOUT"))
    candidates.append(config.getini("timeout"))
    for value in candidates:
        if value is None or value == "":
            continue
        try:
            seconds = float(str(value))
        except ValueError:
            continue  # pytest-timeout reports its own bad values
        return None if seconds <= 0 or math.isnan(seconds) else seconds
    return None


def resolve_settings(item: pytest.Item, options: ExecOptions) -> ScriptSettings:
    """Resolve the item's settings; raises :class:`MarkError` for a bad exec mark."""
    marked = _exec_mark_values(item)

    timeout: float | None
    if "timeout" in marked:
        timeout = float(marked["timeout"]) or None
    elif options.timeout is not None:
        timeout = None if math.isinf(options.timeout) else options.timeout
    else:
        timeout = _pytest_timeout(item) or DEFAULT_TIMEOUT

    cwd = None
    if "cwd" in marked:
        cwd = Path(item.path).parent / str(marked["cwd"])

    return ScriptSettings(
        timeout=timeout,
        env=dict(marked.get("env", {})),
        cwd=cwd,
        memory_limit_mb=marked.get("memory_limit_mb", options.memory_limit_mb),
        args=tuple(marked.get("args", ())),
        allowed_exit_codes=tuple(marked.get("allowed_exit_codes", (0,))),
        python=options.python,
        priority=int(marked.get("priority", 0)),
        max_runs=int(marked.get("max_runs", 1)),
    )
