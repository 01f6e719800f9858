"""Marks written in a script (``# pytest.mark.NAME(args)``) and the ``exec`` marker's keywords."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

EXEC_MARKER_HELP = (
    "exec(priority=0, timeout=None, env=None, cwd=None, memory_limit_mb=None, args=None, "
    "allowed_exit_codes=None, max_runs=1): how a *_script.py item runs; lower priority starts "
    "first"
)

_MARK_LINE = re.compile(r"# pytest\.mark\.(?P<rest>.*)$")
_MARK_CALL = re.compile(r"(?P<name>[A-Za-z_]\w*)\s*(?P<call>\(.*\))?\s*$")


class MarkError(Exception):
    """A mark in a script that cannot be used; the message names the file and line."""


@final
@dataclass(frozen=True, slots=True)
class ScriptMark:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    lineno: int


def read_script_marks(path: Path) -> list[ScriptMark]:
    """Find ``# pytest.mark.NAME`` / ``# pytest.mark.NAME(args)`` lines at column 0.

    Arguments must be Python literals; they are parsed with :mod:`ast`, never evaluated,
    because collection must not run a line of the script.
    """
    text = path.read_bytes().decode("utf-8", errors="replace")
    if "# pytest.mark." not in text:
        return []
    return list(_parse_lines(path, text))


def _parse_lines(path: Path, text: str) -> Iterator[ScriptMark]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        found = _MARK_LINE.match(line)
        if found is None:
            continue
        where = f"{path}:{lineno}"
        call = _MARK_CALL.match(found["rest"].rstrip())
        if call is None:
            raise MarkError(f"{where}: malformed mark line {line.strip()!r}")
        name = call["name"]
        if name.startswith("_"):
            # pytest.mark refuses such names with an AttributeError, not a useful message.
            raise MarkError(f"{where}: mark names must not start with '_': {line.strip()!r}")
        if call["call"] is None:
            yield ScriptMark(name, (), {}, lineno)
            continue
        try:
            node = ast.parse(f"_{call['call']}", mode="eval").body
        except SyntaxError as exc:
            raise MarkError(f"{where}: mark {name!r} has invalid arguments: {exc.msg}") from None
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            # e.g. "exec(timeout=1)(priority=2)": a call of a call, not one argument list.
            raise MarkError(f"{where}: malformed mark line {line.strip()!r}")
        try:
            args = tuple(ast.literal_eval(arg) for arg in node.args)
            kwargs = {}
            for keyword in node.keywords:
                if keyword.arg is None:
                    raise ValueError("**kwargs")
                if keyword.arg in kwargs:  # ast.parse accepts it; only the compiler objects
                    raise MarkError(f"{where}: mark {name!r} repeats keyword {keyword.arg!r}")
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        # literal_eval raises TypeError for a literal it cannot build ({[1]: 2}, {[1]}) and
        # RecursionError or MemoryError for absurd nesting: all mean "not a usable literal".
        except (ValueError, TypeError, RecursionError, MemoryError):
            raise MarkError(
                f"{where}: mark {name!r} arguments must be Python literals "
                f"(strings, numbers, lists, dicts, True/False/None): {line.strip()!r}"
            ) from None
        yield ScriptMark(name, args, kwargs, lineno)


# The exec marker's keywords and the check each value must pass.
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _is_str_map(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items()
    )


def _is_str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _is_int_list(value: object) -> bool:
    return (
        isinstance(value, list | tuple | set | frozenset)
        and bool(value)
        and all(_is_int(v) for v in value)
    )


_EXEC_KEYWORDS: dict[str, tuple[str, Any]] = {
    "priority": ("an int", _is_int),
    "timeout": (
        "a number of seconds >= 0 (0: no timeout)",
        lambda v: _is_positive_number(v) or (_is_int(v) and v == 0),
    ),
    "env": ("a dict of str to str (None unsets)", _is_str_map),
    "cwd": ("a path string", lambda v: isinstance(v, str | Path)),
    "memory_limit_mb": ("a positive number of MB", _is_positive_number),
    "args": ("a list of str", _is_str_list),
    "allowed_exit_codes": ("a non-empty list of ints", _is_int_list),
    "max_runs": ("an int >= 1", lambda v: _is_int(v) and v >= 1),
}


def check_exec_mark(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the exec mark's keywords, or raise :class:`MarkError` saying what is wrong.

    ``None`` is accepted for every keyword and means "not set here".
    """
    if args:
        raise MarkError(f"exec mark takes keyword arguments only, got positional {args!r}")
    checked: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in _EXEC_KEYWORDS:
            known = ", ".join(_EXEC_KEYWORDS)
            raise MarkError(f"exec mark: unknown keyword {key!r} (known: {known})")
        if value is None:
            continue
        expected, check = _EXEC_KEYWORDS[key]
        if not check(value):
            raise MarkError(f"exec mark: {key}={value!r} is not {expected}")
        checked[key] = value
    return checked
