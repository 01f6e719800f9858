"""A script item's ScriptSpec: exec mark > command line > ini > pytest-timeout > default."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from ..engine.spec import DEFAULT_TIMEOUT, ScriptSpec
from .expected import take_output_keywords
from .marks import MarkError, check_exec_mark
from .options import UNSET, ExecOptions, timeout_setting
from .workdir import work_folder


def pytest_pythonpath(config: pytest.Config) -> list[Path]:
    """pytest's ``pythonpath`` ini entries, absolute (pytest resolves them against the ini
    file's folder); none when its python_path plugin is disabled."""
    try:
        return [Path(entry) for entry in config.getini("pythonpath")]
    except ValueError:
        return []


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
    mark, then option, then the PYTEST_TIMEOUT variable, then ini; the engine's default if
    none is set. Its 0 means no timeout."""
    config = item.config
    if not config.pluginmanager.hasplugin("timeout"):
        return DEFAULT_TIMEOUT
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
    return DEFAULT_TIMEOUT


def resolve_settings(item: pytest.Item, options: ExecOptions) -> ScriptSpec:
    """Resolve the item's spec; raises :class:`MarkError` for a bad exec mark."""
    marked = take_output_keywords(item, _exec_mark_values(item))
    timeout: object
    if "timeout" in marked:
        timeout = marked["timeout"] = timeout_setting(marked["timeout"])
    elif options.timeout is not UNSET:
        timeout = options.timeout
    else:
        timeout = _pytest_timeout(item)

    keywords: dict[str, Any] = {
        "python": options.python,
        "memory_limit_mb": options.memory_limit_mb,
        "kill_grace": options.kill_grace,
        "record": options.record,  # what it reads, imports and writes
        **_ini_defaults(options, marked),
        **marked,
        "timeout": timeout,
    }
    if isinstance(marked.get("cwd"), str):
        keywords["cwd"] = Path(item.path).parent / marked["cwd"]
    elif "cwd" not in marked:
        keywords["cwd"] = work_folder(item, options)  # --exec-cwd; None: the script's folder
    try:
        return ScriptSpec.build(item.path, **keywords)
    except (TypeError, ValueError) as exc:
        raise MarkError(f"{item.nodeid}: exec mark: {_culprit(item, marked, exc)}") from None


def _ini_defaults(options: ExecOptions, marked: dict[str, Any]) -> dict[str, Any]:
    """ini ``exec_stdin`` and ``exec_args`` for a script whose exec mark sets neither its own
    input nor its own arguments."""
    defaults: dict[str, Any] = {}
    if options.stdin is not None and not {"stdin", "stdin_file"} & set(marked):
        defaults["stdin"] = options.stdin
    if options.args is not None:
        defaults["args"] = options.args
    return defaults


def _culprit(item: pytest.Item, marked: dict[str, Any], failure: Exception) -> str:
    """Which marked keyword the spec refused, as ``key=value is not valid: why``."""
    for key, value in marked.items():
        try:
            ScriptSpec.build(item.path, **{key: value})
        except (TypeError, ValueError) as exc:
            return f"{key}={value!r} is not valid: {exc}"
    return str(failure)  # a combination (stdin with stdin_file): the spec says which
