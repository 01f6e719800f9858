"""Which files are scripts: ``exec_script_patterns``, by file name or by path from the rootdir.

A pattern without ``/`` is a file-name glob (``*_script.py``, ``*.py``), matched against the
file's name wherever it is. A pattern with ``/`` is a path glob relative to the rootdir
(``examples/**/*.py``, ``tools/*.py``): ``*``, ``?`` and ``[...]`` stay inside one folder
level and ``**`` as a whole level matches any number of levels, none included. This is
``glob``'s recursive syntax, implemented here because ``PurePath.full_match`` needs 3.13.
Both kinds are translated here, so a pattern no file could match (a reversed range,
``[z-a].py``) is a usage error either way, never a silent "matched nothing".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import final

import pytest

NEVER_SCRIPTS = frozenset({"conftest.py", "__init__.py"})
"""pytest's and Python's own files: never scripts, whatever the patterns say."""


def _segment(text: str) -> str:
    """The regex of one folder level of a glob: no wildcard crosses a ``/``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        i += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = i
            if end < len(text) and text[end] in "!^":
                end += 1
            if end < len(text) and text[end] == "]":
                end += 1
            end = text.find("]", end)
            if end < 0:
                out.append(re.escape(char))
                continue
            # Escaped like fnmatch does: a backslash, and what a newer ``re`` would read as
            # a nested set or a set operation (a FutureWarning, an error under -W error).
            inner = re.sub(r"([\\\[&~|])", r"\\\1", text[i:end])
            i = end + 1
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            elif inner.startswith("^"):
                inner = "\\" + inner
            out.append(f"(?!/)[{inner}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def translate(pattern: str) -> str:
    """The regex matching the rootdir-relative POSIX paths that ``pattern`` selects."""
    parts = pattern.removeprefix("./").strip("/").split("/")
    out: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_segment(part) + ("" if last else "/"))
    return "(?s:" + "".join(out) + r")\Z"


def is_path_pattern(pattern: str) -> bool:
    return "/" in pattern


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(translate(pattern))
    except re.error as exc:  # a reversed range, [z-a]
        raise pytest.UsageError(
            # exc.msg: its position would count in the regex, not in the pattern.
            f"ini option 'exec_script_patterns': {pattern!r} is not a valid glob: {exc.msg}"
        ) from None


@final
class ScriptPatterns:
    """The session's script patterns; remembers which ones matched a collected file."""

    def __init__(self, patterns: tuple[str, ...], rootdir: Path) -> None:
        self.patterns = patterns
        self.rootdir = rootdir
        self._paths = [(p, _compile(p)) for p in patterns if is_path_pattern(p)]
        self._names = [(p, _compile(p)) for p in patterns if not is_path_pattern(p)]
        self.matched: set[str] = set()

    def matches(self, file_path: Path) -> bool:
        """Does any pattern select ``file_path``? Every pattern that does is remembered."""
        hit = False
        for pattern, regex in self._names:
            if regex.match(file_path.name):
                self.matched.add(pattern)
                hit = True
        if self._paths:
            try:
                relative = file_path.relative_to(self.rootdir).as_posix()
            except ValueError:
                return hit  # outside the rootdir: path patterns cannot name it
            for pattern, regex in self._paths:
                if regex.match(relative):
                    self.matched.add(pattern)
                    hit = True
        return hit

    def unmatched(self) -> list[str]:
        return [p for p in self.patterns if p not in self.matched]


PATTERNS_KEY = pytest.StashKey[ScriptPatterns]()
"""The session's :class:`ScriptPatterns`, in ``config.stash``."""
