"""Marks written in a script (``# pytest.mark.NAME(args)``) and the ``exec`` marker's keywords."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from ..engine import RUN_KEYWORDS

EXEC_MARKER_HELP = (
    f"exec({', '.join(RUN_KEYWORDS)}): how a script item runs (docs: the exec mark); "
    "lower priority starts first, timeout=0 means none"
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


def check_exec_mark(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the exec mark's keywords (any :class:`ScriptSpec` field), or raise
    :class:`MarkError`. Values are checked when the spec is built; ``None`` means "not set
    here"."""
    if args:
        raise MarkError(f"exec mark takes keyword arguments only, got positional {args!r}")
    unknown = [key for key in kwargs if key not in RUN_KEYWORDS]
    if unknown:
        known = ", ".join(RUN_KEYWORDS)
        raise MarkError(f"exec mark: unknown keyword {unknown[0]!r} (known: {known})")
    return {key: value for key, value in kwargs.items() if value is not None}
