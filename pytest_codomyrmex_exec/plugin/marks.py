"""Marks written in a script (``# pytest.mark.NAME(args)``) and the ``exec`` marker's keywords."""

from __future__ import annotations

import ast
import codecs
import io
import re
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from ..engine.spec import RUN_KEYWORDS

OUTPUT_KEYWORDS = ("stdout", "stderr", "exit_code", "check_output", "cases")
"""exec mark keywords of the output checks (docs/output.md), beside the spec's own."""
EXEC_KEYWORDS = RUN_KEYWORDS + OUTPUT_KEYWORDS
"""Every keyword the exec mark takes."""

EXEC_MARKER_HELP = (
    f"exec({', '.join(EXEC_KEYWORDS)}): how a script item runs (docs: the exec mark); "
    "lower priority starts first, timeout=0 means none"
)

_MARK_PREFIX = "# pytest.mark."
_MARK_BYTES = _MARK_PREFIX.encode()
_CANDIDATE = re.compile(r"^# pytest\.mark\.", re.MULTILINE)  # "^": after "\n", as tokenize
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
    """Find ``# pytest.mark.NAME`` / ``# pytest.mark.NAME(args)`` comments at column 0.

    The file is read as Python reads it: a UTF-8 BOM and a coding cookie (PEP 263) are
    honoured, and only real comments count, found with :mod:`tokenize`, so a mark-like line
    inside a docstring or string literal is not a mark. A file that stops tokenizing (an
    unterminated string, a bad dedent) keeps the marks before that point, and from the line
    where tokenizing failed on, column-0 mark lines are read as text: the script fails when
    it runs, showing its SyntaxError, unless a mark there skips it. Arguments must be Python
    literals; they are parsed with :mod:`ast`, never evaluated, because collection must not
    run a line of the script.
    """
    data = path.read_bytes()
    if _MARK_BYTES not in data:  # most scripts: no decoding, no tokenizing
        return []
    return list(_parse_lines(path, _mark_comments(_source_text(data))))


def _source_text(data: bytes) -> str:
    """The script's text, decoded as Python would decode it."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)  # "utf-8-sig" when there is a BOM: it drops it
    except (SyntaxError, LookupError, UnicodeDecodeError):
        # An unknown cookie or bytes the cookie does not fit: Python refuses to run the
        # script (a failure showing why); read its marks as well as UTF-8 allows.
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="replace")


def _mark_comments(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of every column-0 comment that starts like a mark."""
    candidates = [found.start() for found in _CANDIDATE.finditer(text)]
    if not candidates:
        return
    # Tokenizing costs about a millisecond per 50 lines: stop after the last line that could
    # be a mark (marks usually sit at the top), so a long script costs what its head costs.
    last = text.count("\n", 0, candidates[-1]) + 1
    found: list[tuple[int, str]] = []
    broken_at: int | None = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.start[0] > last:
                break
            if (
                token.type == tokenize.COMMENT
                and token.start[1] == 0
                and token.string.startswith(_MARK_PREFIX)
            ):
                found.append((token.start[0], token.string))
    except tokenize.TokenError as exc:
        broken_at = exc.args[1][0]
    except SyntaxError as exc:  # IndentationError, and a C tokenizer's complaints
        broken_at = exc.lineno or 1
    if broken_at is None:
        yield from found
        return
    yield from ((lineno, line) for lineno, line in found if lineno < broken_at)
    lines = io.StringIO(text).readlines()  # numbered as tokenize numbers them
    for lineno, line in enumerate(lines[broken_at - 1 :], start=broken_at):
        if line.startswith(_MARK_PREFIX):
            yield lineno, line.rstrip("\r\n")


def _parse_lines(path: Path, comments: Iterable[tuple[int, str]]) -> Iterator[ScriptMark]:
    for lineno, line in comments:
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
    unknown = [key for key in kwargs if key not in EXEC_KEYWORDS]
    if unknown:
        known = ", ".join(EXEC_KEYWORDS)
        raise MarkError(f"exec mark: unknown keyword {unknown[0]!r} (known: {known})")
    return {key: value for key, value in kwargs.items() if value is not None}
