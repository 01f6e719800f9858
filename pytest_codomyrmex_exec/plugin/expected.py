"""Checking what scripts print: expectation files, matching, redaction and diffs.

A script's ``name_script.stdout`` / ``name_script.stderr`` (or the files an
``exec(stdout=..., stderr=...)`` mark names) hold what the stream must show. The comparison
runs in the pytest process, on the result's captured text, so every mode (inline, a backend,
warm, Dask, an xdist worker) reaches the same outcome from the same output.

Before comparing, the actual text is cleaned (line endings, ANSI escapes), then this
machine's paths become placeholders (``[ROOT]``, ``[CWD]``, ``[TMP]``, ``[PYTHON]``,
``[SCRIPT]``, the longest first) and every ``exec_redact`` match becomes ``[NAME]``. In an
expected line ``[..]`` matches any text within the line; a line that is exactly ``...``
matches any number of lines.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, final

import pytest

from ..engine.capture import TRUNCATION_MARKER
from ..engine.results import ScriptResult, ScriptStatus
from ..engine.spec import ScriptSpec
from .marks import OUTPUT_KEYWORDS, MarkError

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
GAP = "..."
"""An expected line that matches any number of actual lines, none included."""
WILDCARD = "[..]"
"""Within an expected line: any text on that line."""
PLACEHOLDERS = ("ROOT", "CWD", "TMP", "PYTHON", "SCRIPT")

UPDATE_OPTION = "--exec-update-output"
CHECK_OUTPUT_INI = "exec_check_output"
REDACT_INI = "exec_redact"

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # the other two-byte escapes
)
_TRUNCATED = re.compile(
    re.escape(TRUNCATION_MARKER).replace(re.escape("{dropped}"), r"\d+"), re.ASCII
)
_REDACTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESYNC_REACH = 60
"""Lines looked ahead on each side to realign a diff after a differing line."""


# -- configuration ---------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Redaction:
    name: str
    pattern: re.Pattern[str]


def parse_redactions(lines: Iterable[str]) -> tuple[Redaction, ...]:
    """``NAME=REGEX`` lines (blank ones skipped); a ValueError names the line at fault."""
    redactions = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        name, equals, regex = line.partition("=")
        name = name.strip()
        where = f"line {number} '{line}'"
        if not equals or not _REDACTION_NAME.fullmatch(name):
            raise ValueError(f"{where}: expected NAME=REGEX, NAME a word such as ADDR")
        if name in PLACEHOLDERS:
            raise ValueError(f"{where}: [{name}] is a built-in placeholder")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"{where}: bad regular expression: {exc}") from None
        if pattern.match(""):
            raise ValueError(f"{where}: the regular expression matches empty text")
        redactions.append(Redaction(name, pattern))
    return tuple(redactions)


def add_output_options(parser: pytest.Parser) -> None:
    parser.getgroup("codomyrmex-exec").addoption(
        UPDATE_OPTION,
        action="store_true",
        default=False,
        help="rewrite the .stdout/.stderr expectation files of the scripts that ran and "
        "printed something else, and create the missing ones that must exist",
    )
    parser.addini(
        CHECK_OUTPUT_INI,
        "every script must have a .stdout expectation file",
        type="bool",
        default=False,
    )
    parser.addini(
        REDACT_INI,
        "NAME=REGEX per line: matches in script output become [NAME] before comparing",
        type="linelist",
        default=[],
    )


@final
@dataclass(frozen=True, slots=True)
class OutputSettings:
    """The session's settings for output checks (``config.stash[OUTPUT_SETTINGS_KEY]``)."""

    update: bool
    check_output: bool
    redactions: tuple[Redaction, ...]


OUTPUT_SETTINGS_KEY = pytest.StashKey[OutputSettings]()


def resolve_output_settings(config: pytest.Config) -> OutputSettings:
    """Read the option and ini keys once; a bad one is a UsageError naming it."""
    try:
        check_output = bool(config.getini(CHECK_OUTPUT_INI))
    except (ValueError, pytest.UsageError) as exc:
        raise pytest.UsageError(f"ini option {CHECK_OUTPUT_INI!r}: {exc}") from None
    try:
        redactions = parse_redactions(str(line) for line in config.getini(REDACT_INI))
    except ValueError as exc:
        raise pytest.UsageError(f"ini option {REDACT_INI!r}: {exc}") from None
    return OutputSettings(
        update=bool(config.getoption("exec_update_output", False)),
        check_output=check_output,
        redactions=redactions,
    )


# -- what a script's output is checked against -----------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Expectation:
    """One stream's expectation file: its text, or ``None`` when it does not exist yet."""

    stream: Stream
    path: Path
    text: str | None


@final
@dataclass(frozen=True, slots=True)
class OutputPlan:
    expectations: tuple[Expectation, ...]


PLAN_KEY = pytest.StashKey[OutputPlan]()
"""A script item's expectations, in ``item.stash`` once its settings are resolved."""
CASE_KEY = pytest.StashKey[str]()
"""The case a script item runs (``exec(cases={...})``), in ``item.stash``."""
_CASE_NAME = re.compile(r"[\w-]+")


def script_cases(file: pytest.Collector) -> list[tuple[str, dict[str, Any]]]:
    """``(name, exec keywords)`` of each case of the file's ``exec(cases={...})`` mark (the
    closest mark that has one); none without. A bad value raises :class:`MarkError`."""
    cases = next(
        (mark.kwargs["cases"] for mark in file.iter_markers("exec") if "cases" in mark.kwargs),
        None,
    )
    if cases is None:
        return []
    where = f"{file.path}: exec mark: cases"
    if not isinstance(cases, dict) or not cases:
        raise MarkError(f"{where} must be a non-empty dict of case name to keywords")
    found = []
    for name, keywords in cases.items():
        if not isinstance(name, str) or not _CASE_NAME.fullmatch(name):
            raise MarkError(f"{where}: case name {name!r} must be letters, digits, _ or -")
        if not isinstance(keywords, dict) or "cases" in keywords:
            raise MarkError(f"{where}[{name!r}] must be a dict of exec keywords (no cases)")
        found.append((name, keywords))
    return found


def default_expectation(script: str, stream: Stream, case: str | None = None) -> str:
    """``name_script.stdout`` beside ``name_script.py``; a case's ``name_script.CASE.stdout``.

    Strings, not paths: this runs twice for every script item, where pathlib's parsing
    cost more than the lookup itself."""
    stem = os.path.splitext(script)[0]
    return f"{stem}.{stream}" if case is None else f"{stem}.{case}.{stream}"


def _read(path: Path, where: str) -> str:
    if path.is_dir():
        raise MarkError(f"{where}: expectation file {path} is a directory")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MarkError(f"{where}: cannot read expectation file {path}: {exc}") from None
    try:
        return data.decode("utf-8-sig")  # an editor's byte order mark is not text
    except UnicodeDecodeError as exc:
        raise MarkError(
            f"{where}: expectation file {path} is not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None


def _marked_path(item: pytest.Item, keyword: str, value: object) -> Path:
    where = f"{item.nodeid}: exec mark"
    if not isinstance(value, str) or not value:
        raise MarkError(f"{where}: {keyword}={value!r} is not valid: expected a file path")
    path = (Path(item.path).parent / value).resolve()
    root = item.config.rootpath.resolve()
    if not path.is_relative_to(root):
        raise MarkError(f"{where}: {keyword}={value!r} points outside the rootdir {root}")
    return path


def take_output_keywords(item: pytest.Item, marked: dict[str, Any]) -> dict[str, Any]:
    """Resolve the item's expectation files into ``item.stash[PLAN_KEY]``; return the exec
    mark's keywords that go to the spec (``exit_code=N`` as ``allowed_exit_codes={N}``).

    A bad expectation (a directory, not UTF-8, outside the rootdir, a marked file that is
    missing) raises :class:`MarkError` naming the file: that script errors, no other."""
    run_keywords = {key: value for key, value in marked.items() if key not in OUTPUT_KEYWORDS}
    where = f"{item.nodeid}: exec mark"
    if "exit_code" in marked:
        code = marked["exit_code"]
        if isinstance(code, bool) or not isinstance(code, int):
            raise MarkError(f"{where}: exit_code={code!r} is not valid: expected an int")
        if "allowed_exit_codes" in marked:
            raise MarkError(f"{where}: give exit_code or allowed_exit_codes, not both")
        run_keywords["allowed_exit_codes"] = {code}
    check = marked.get("check_output")
    if check is not None and not isinstance(check, bool):
        raise MarkError(f"{where}: check_output={check!r} is not valid: expected True or False")
    settings = item.config.stash[OUTPUT_SETTINGS_KEY]
    must_have_stdout = settings.check_output if check is None else check
    expectations = []
    for stream in STREAMS:
        path: Path | str
        if stream in marked:
            path = _marked_path(item, stream, marked[stream])
            if not path.exists() and not settings.update:
                raise MarkError(
                    f"{where}: {stream}={marked[stream]!r}: no such file {path} "
                    f"(create it with pytest {UPDATE_OPTION})"
                )
        else:
            path = default_expectation(str(item.path), stream, item.stash.get(CASE_KEY, None))
        # One lstat: a file, or a symlink even when dangling (reading it then says why).
        if os.path.lexists(path):
            expectations.append(Expectation(stream, Path(path), _read(Path(path), item.nodeid)))
        elif stream in marked or (stream == "stdout" and must_have_stdout):
            expectations.append(Expectation(stream, Path(path), None))
    item.stash[PLAN_KEY] = OutputPlan(tuple(expectations))
    return run_keywords


# -- normalising the actual output -----------------------------------------------------------


def clean(text: str) -> str:
    """Line endings made ``\\n``, ANSI escape sequences removed."""
    return _ANSI.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def placeholder_values(spec: ScriptSpec, rootdir: Path) -> list[tuple[str, str]]:
    """``(path, "[NAME]")`` pairs, the longest path first, each also in its resolved form.
    Two names for one path: the more specific wins (``[CWD]`` over ``[ROOT]`` and ``[TMP]``)."""
    script = Path(spec.script)
    python = spec.python or sys.executable
    if "/" not in python:
        python = shutil.which(python) or python
    values = {
        "SCRIPT": str(script),
        "PYTHON": python,
        "CWD": spec.cwd or str(script.parent),
        "ROOT": str(rootdir),
        "TMP": tempfile.gettempdir(),
    }
    pairs: dict[str, str] = {}
    for name, value in values.items():
        for form in (value, str(Path(value).resolve())):
            if len(form) > 1:  # never "/": every path would lose its first slash
                pairs.setdefault(form, f"[{name}]")
    return sorted(pairs.items(), key=lambda pair: -len(pair[0]))


def redact(
    text: str, placeholders: Sequence[tuple[str, str]], redactions: Sequence[Redaction]
) -> str:
    """``text`` cleaned, with placeholders for paths, then ``[NAME]`` for each redaction."""
    text = clean(text)
    if placeholders:
        # One pass, longest first: a path inside a longer one is never replaced on its own.
        alternatives = "|".join(re.escape(path) for path, _ in placeholders)
        names = dict(placeholders)
        text = re.sub(f"(?:{alternatives})(?![\\w])", lambda m: names[m[0]], text)
    for redaction in redactions:
        text = redaction.pattern.sub(f"[{redaction.name}]", text)
    return text


# -- matching --------------------------------------------------------------------------------


@final
class _Pattern:
    """The expected lines, each literal or a pattern with ``[..]``."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        self._regexes = [
            re.compile(".*".join(map(re.escape, line.split(WILDCARD))), re.S)
            if WILDCARD in line
            else None
            for line in self.lines
        ]

    def __len__(self) -> int:
        return len(self.lines)

    def is_gap(self, index: int) -> bool:
        return self.lines[index] == GAP

    def matches(self, index: int, actual: str) -> bool:
        if index >= len(self.lines) or self.is_gap(index):
            return False
        regex = self._regexes[index]
        return self.lines[index] == actual if regex is None else bool(regex.fullmatch(actual))

    def fits(self, actual: Sequence[str]) -> bool:
        """Does the whole of ``actual`` match? Simulated as a set of positions, so many
        ``...`` lines never cost more than one pass per line (no regex backtracking)."""
        states = self._closure({0})
        for line in actual:
            states = self._closure(
                {i + 1 for i in states if self.matches(i, line)}
                | {i for i in states if i < len(self) and self.is_gap(i)}
            )
            if not states:
                return False
        return len(self) in states

    def _closure(self, states: set[int]) -> set[int]:
        closed = set(states)
        for start in sorted(states):
            index = start
            while index < len(self) and self.is_gap(index):
                index += 1
                closed.add(index)
        return closed


@final
@dataclass(frozen=True, slots=True)
class Comparison:
    """The expected lines as compared, the actual lines as they would be written back
    (wildcard lines that still match kept as written), and whether they agree."""

    expected: list[str]
    actual: list[str]
    matched: bool
    truncated: bool
    hidden: tuple[int, int] = (0, 0)
    """Over the capture limit: the index in ``expected`` of the marker line and how many
    lines of the file it stands for."""

    def file_line(self, number: int) -> int:
        """The line of the expectation file that line ``number`` of ``expected`` shows."""
        at, count = self.hidden
        return number + count - 1 if self.truncated and number > at + 1 else number


def _lines(text: str) -> list[str]:
    """Lines without their ends; a final newline, present or not, makes no difference."""
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def compare(expected_text: str, actual_text: str) -> Comparison:
    """Compare an expectation file's text with the redacted actual text.

    Over its capture limit, the actual text is a head, a marker line and a tail: the head is
    compared with the start of the expected lines and the tail with their end, and the
    expected lines in between are shown as the marker."""
    pattern = _Pattern(_lines(clean(expected_text)))
    actual = _lines(actual_text)
    marker = next((i for i, line in enumerate(actual) if _TRUNCATED.fullmatch(line)), None)
    if marker is not None:
        # The lines on either side of the marker were cut in the middle: part of the gap.
        before = max(marker - 1, 0)
        actual = [*actual[:before], actual[marker], *actual[marker + 2 :]]
        marker = before
    normal, shown, hidden = _normalise(pattern, actual, marker)
    matched = normal == shown if marker is not None else pattern.fits(actual)
    return Comparison(shown, shown if matched else normal, matched, marker is not None, hidden)


def _normalise(
    pattern: _Pattern, actual: Sequence[str], marker: int | None
) -> tuple[list[str], list[str], tuple[int, int]]:
    """The actual lines with each line that matches its expected line replaced by it (and
    ``...`` for the lines a gap takes), the expected lines as shown beside them, and where
    the marker stands in those for how many (:attr:`Comparison.hidden`)."""
    out: list[str] = []
    shown = list(pattern.lines)
    hidden = (0, 0)
    i = j = 0
    while j < len(actual):
        if j == marker:
            k = _resume_after_marker(pattern, i, actual, j)
            shown = [*pattern.lines[:i], actual[j], *pattern.lines[k:]]
            hidden = (i, k - i)
            out.append(actual[j])
            i, j = k, j + 1
            continue
        if i < len(pattern) and pattern.is_gap(i):
            while i < len(pattern) and pattern.is_gap(i):
                out.append(pattern.lines[i])
                i += 1
            stop = marker if marker is not None and marker >= j else len(actual)
            if i == len(pattern):
                j = len(actual)  # a final gap takes the rest, the marker and tail too
                continue
            found = next((n for n in range(j, stop) if pattern.matches(i, actual[n])), None)
            if found is not None:
                j = found
            continue
        if pattern.matches(i, actual[j]):
            out.append(pattern.lines[i])
            i, j = i + 1, j + 1
            continue
        skip_expected, skip_actual = _resync(pattern, i, actual, j, marker)
        out.extend(actual[j : j + skip_actual])
        i, j = i + skip_expected, j + skip_actual
    out.extend(line for line in pattern.lines[i:] if line == GAP)
    return out, shown, hidden


def _resync(
    pattern: _Pattern, i: int, actual: Sequence[str], j: int, marker: int | None
) -> tuple[int, int]:
    """After a differing line: the fewest expected and actual lines to pass over before they
    agree again (a gap agrees with anything, the marker with as many lines replaced as
    passed over); one of each if none is near. The marker is never passed over."""
    end = marker if marker is not None and marker >= j else len(actual)
    for distance in range(1, 2 * _RESYNC_REACH):
        for skip_expected in range(max(0, distance - _RESYNC_REACH), distance + 1):
            skip_actual = distance - skip_expected
            e, a = i + skip_expected, j + skip_actual
            if a > end or e > len(pattern):
                continue
            if a == marker:
                if skip_expected == skip_actual:
                    return skip_expected, skip_actual
                continue
            if a == len(actual) and e == len(pattern):
                return skip_expected, skip_actual
            if (
                a < len(actual)
                and e < len(pattern)
                and (pattern.is_gap(e) or pattern.matches(e, actual[a]))
            ):
                return skip_expected, skip_actual
    return min(1, len(pattern) - i), 1


def _resume_after_marker(pattern: _Pattern, i: int, actual: Sequence[str], j: int) -> int:
    """Where the expected lines pick up after the marker: aligned with the tail's length
    from the end, or at the first line the tail's first line matches when gaps make the
    length unknown."""
    tail = len(actual) - j - 1
    if not any(pattern.is_gap(k) for k in range(i, len(pattern))):
        return max(i, len(pattern) - tail)
    if tail == 0:
        return len(pattern)
    return next(
        (
            k
            for k in range(i, len(pattern))
            if pattern.is_gap(k) or pattern.matches(k, actual[j + 1])
        ),
        len(pattern),
    )


def unified_diff(expected: Sequence[str], actual: Sequence[str], name: str) -> list[str]:
    """``-expected`` / ``+actual`` lines, with three lines of context."""
    return list(
        difflib.unified_diff(
            list(expected),
            list(actual),
            fromfile=f"expected ({name})",
            tofile="actual",
            lineterm="",
        )
    )


def first_difference(
    expected: Sequence[str], actual: Sequence[str]
) -> tuple[int, str | None, str | None]:
    """The first differing line: its number in the expected text, and each side's line
    there (``None`` for a line one side does not have)."""
    matcher = difflib.SequenceMatcher(None, list(expected), list(actual), autojunk=False)
    for tag, e1, e2, a1, a2 in matcher.get_opcodes():
        if tag != "equal":
            return (
                e1 + 1,
                expected[e1] if e1 < e2 else None,
                actual[a1] if a1 < a2 else None,
            )
    return 0, None, None


# -- checking one result ---------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Mismatch:
    """A stream that does not show what its expectation file says."""

    stream: Stream
    file: str
    """The expectation file as pytest shows paths (relative to the rootdir)."""
    diff: tuple[str, ...]
    """The unified diff lines; empty when the file is missing."""
    line: int
    """The first differing line in the expectation file (0: the file is missing)."""
    expected: str | None
    actual: str | None
    notes: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class OutputUpdate:
    """A file ``--exec-update-output`` writes: its path and its new text."""

    path: str
    text: str
    created: bool


UPDATES_KEY = pytest.StashKey[list[OutputUpdate]]()
"""The item's expectation files to write, set by :func:`check_output` with the update flag."""


def _shown_path(path: Path, rootdir: Path) -> str:
    try:
        return str(path.relative_to(rootdir))
    except ValueError:
        return str(path)


def check_output(item: pytest.Item, result: ScriptResult, spec: ScriptSpec) -> list[Mismatch]:
    """Compare the streams of a script that ran to its end with its expectation files.

    With ``--exec-update-output``, a run that passed by its exit code has its differing
    files recorded as updates (``item.stash[UPDATES_KEY]``) instead of mismatches; a failed
    run's output is never written, and neither is one over its capture limit."""
    plan = item.stash.get(PLAN_KEY, None)
    ended = result["status"] in (ScriptStatus.PASSED, ScriptStatus.FAILED)
    if plan is None or not plan.expectations or not ended:
        return []
    passed = result["status"] == ScriptStatus.PASSED
    config = item.config
    settings = config.stash[OUTPUT_SETTINGS_KEY]
    placeholders = placeholder_values(spec, config.rootpath)
    mismatches: list[Mismatch] = []
    updates: list[OutputUpdate] = []
    for expectation in plan.expectations:
        actual = redact(result[expectation.stream], placeholders, settings.redactions)
        shown = _shown_path(expectation.path, config.rootpath)
        if expectation.text is None:
            if settings.update and passed:
                updates.append(OutputUpdate(str(expectation.path), actual, created=True))
                continue
            mismatches.append(
                Mismatch(
                    expectation.stream,
                    shown,
                    (),
                    0,
                    None,
                    None,
                    (
                        f"{shown} is missing: this script's {expectation.stream} must be "
                        f"checked; create it with: pytest {UPDATE_OPTION} {item.nodeid}",
                    ),
                )
            )
            continue
        comparison = compare(expectation.text, actual)
        if comparison.matched:
            continue
        notes: list[str] = []
        if comparison.truncated:
            notes.append(
                f"{expectation.stream} went over its capture limit ({spec.output_limit} "
                "bytes): its head and tail were compared, the middle is the marker line; "
                "raise it with exec(output_limit=BYTES)"
            )
        elif settings.update and passed:
            text = "\n".join(comparison.actual) + "\n" if comparison.actual else ""
            updates.append(OutputUpdate(str(expectation.path), text, created=False))
            continue
        line, expected_line, actual_line = first_difference(comparison.expected, comparison.actual)
        mismatches.append(
            Mismatch(
                expectation.stream,
                shown,
                tuple(unified_diff(comparison.expected, comparison.actual, shown)),
                comparison.file_line(line),
                expected_line,
                actual_line,
                tuple(notes),
            )
        )
    if updates:
        item.stash[UPDATES_KEY] = updates
    return mismatches
