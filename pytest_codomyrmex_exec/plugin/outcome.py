"""Map an engine result to a pytest outcome: the one place that decides pass, fail, error, skip,
and what a failing script's report says.

The outcome is decided by the result's ``status`` and ``cause``, never by its ``error`` text:
messages are for people and may be reworded freely. A failure's report is built once, as
fields (:class:`ScriptFailure`), and rendered for the ``--tb`` style; nothing parses it back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, final

import pytest

from ..engine.results import FailureCause, ScriptResult, ScriptStatus
from .dirty import named
from .expected import Mismatch
from .flaky import try_sections
from .keys import OPTIONS_KEY

STDERR_TAIL_LINES = 40
"""Lines of stderr shown under the failure header when stderr has no section of its own."""
SHORT_TAIL_LINES = 6
"""The same with ``--tb=short``: the failing frame and the error."""

TIMEOUT_HINT = (
    "raise the limit with an exec(timeout=SECONDS) mark, --exec-timeout SECONDS "
    "or the ini key exec_timeout (0 = no limit)"
)


DIRTY_HINT = (
    "exec_dirty = fail: run it from a copy of its folder (--exec-cwd copy) or a fresh folder "
    "(--exec-cwd tmp), or make it write under a temporary folder"
)


def _wrote(dirty: Sequence[str]) -> list[str]:
    """``wrote 2 files into the source tree: a.html, b.txt`` (none: no words)."""
    if not dirty:
        return []
    count = len(dirty)
    return [f"wrote {count} file{'s' if count != 1 else ''} into the source tree: {named(dirty)}"]


class _LineWriter(Protocol):
    """The part of pytest's TerminalWriter a longrepr uses (the class itself is private)."""

    def line(self, s: str = "", **markup: bool) -> None: ...


@final
@dataclass
class CrashLocation:
    """Where and how a script failed. Shaped like pytest's ``ReprFileLocation`` (the same
    fields, a dataclass), so pytest-xdist carries it from a worker: ``--tb=line`` prints it,
    and ``message`` is what the short test summary (``-r``) and junit's ``message`` show."""

    path: str
    lineno: int
    """The script's line in the traceback's last frame in the script; 0 if unknown."""
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.lineno}" if self.lineno else self.path
        return f"{where}: {self.message}"


@final
@dataclass
class _TextTraceback:
    """A ``ReprTraceback`` look-alike (the same fields, a dataclass) whose ``extraline`` is
    the whole failure text: pytest prints it, and pytest-xdist carries it from a worker to
    the controller as it is, with no frame to show."""

    reprentries: list[object] = field(default_factory=list)
    extraline: str | None = None
    style: str = "native"

    def toterminal(self, tw: _LineWriter) -> None:
        if self.extraline:
            tw.line(self.extraline)


_DIFF_MARKUP = {"-": {"red": True}, "+": {"green": True}, "@": {"cyan": True}}


@final
class ScriptFailureRepr:
    """A failing script's ``longrepr``: its rendered text and its crash location.

    ``parts`` are the text's pieces, each plain or a diff; a terminal with colours shows a
    diff's ``-`` lines red and ``+`` lines green (pytest-xdist carries the plain text)."""

    def __init__(
        self, text: str, crash: CrashLocation, parts: tuple[tuple[str, bool], ...] = ()
    ) -> None:
        self.reprcrash = crash
        self.reprtraceback = _TextTraceback(extraline=text or None)
        self.sections: list[tuple[str, str, str]] = []
        self._parts = parts

    def toterminal(self, tw: _LineWriter) -> None:
        if not self._parts:
            self.reprtraceback.toterminal(tw)
            return
        for text, is_diff in self._parts:
            if not is_diff:
                tw.line(text)
                continue
            for line in text.split("\n"):
                markup = {} if line.startswith(("---", "+++")) else _DIFF_MARKUP.get(line[:1], {})
                tw.line(line, **markup)

    def __str__(self) -> str:  # junit's failure text
        return self.reprtraceback.extraline or str(self.reprcrash)


@final
@dataclass(frozen=True)
class ScriptFailure:
    """Everything a failing script's report shows, as fields; built once from its result by
    :func:`describe_failure`, rendered by :meth:`render` for the ``--tb`` style.

    A new part of the report (a diff of expected output, say) is one more field here, filled
    in by :func:`describe_failure` and placed by one line of ``render``; a new way to fail is
    one more ``FailureCause`` case in ``_finding`` and :func:`crash_message`.
    """

    header: str
    """One line: the script, how it ended, how long it ran."""
    notes: tuple[str, ...]
    """Lines under the header: where it ran, how to raise a limit."""
    location: CrashLocation
    """``path:line: error (exit code N)``: all ``--tb=line`` shows."""
    summary: str
    """The script's own last word on how it failed, for the short test summary line."""
    stderr_tail: str
    """The last lines of stderr, for when stderr has no section of its own in the report
    (``--show-capture=no`` or ``stdout``); empty when it does, so it appears once."""
    output_diffs: tuple[str, ...] = ()
    """For each stream that differs from its expectation file: what differs and the
    unified diff (``-expected``, ``+actual``)."""

    def render(self, style: str) -> ScriptFailureRepr:
        """The report for pytest's ``--tb`` style: ``line`` is the location alone; ``short``
        cuts the stderr tail to :data:`SHORT_TAIL_LINES`; the others show all of it."""
        if style == "line":
            return ScriptFailureRepr("", self.location)
        tail = self.stderr_tail
        if style == "short":
            tail = _tail(tail, SHORT_TAIL_LINES)
        parts = [
            (self.header, False),
            *((note, False) for note in self.notes),
            *((diff, True) for diff in self.output_diffs),
            (tail, False),
        ]
        kept = tuple((text, is_diff) for text, is_diff in parts if text)
        text = "\n".join(text for text, _ in kept)
        return ScriptFailureRepr(text, replace(self.location, message=self.summary), kept)


@final
class ScriptFailed(Exception):
    """The script ran and failed: a non-allowed exit code, a signal, a timeout, a memory limit."""

    def __init__(self, failure: ScriptFailure) -> None:
        super().__init__(failure.header)
        self.failure = failure

    def render(self, style: str = "long") -> ScriptFailureRepr:
        return self.failure.render(style)


@final
class ScriptNotStarted(Exception):
    """The script could not be started (missing interpreter, missing cwd, bad exec mark)."""


def failure_cause(result: ScriptResult) -> FailureCause | None:
    """The result's cause; for one made without a cause (a hook that changed the status, a
    third-party backend), the cause its fields show. ``None`` for a passed result."""
    cause = result.get("cause")
    if cause is not None:
        return FailureCause(cause)
    status = result["status"]
    if status == ScriptStatus.PASSED:
        return None
    if status == ScriptStatus.TIMEOUT:
        return FailureCause.TIMEOUT
    if status == ScriptStatus.CANCELLED:
        return FailureCause.CANCELLED
    if status == ScriptStatus.ERROR:
        return FailureCause.ENGINE
    if result["memory_limit_exceeded"]:
        return FailureCause.MEMORY_LIMIT
    return FailureCause.SIGNAL if result["signal"] else FailureCause.EXIT_CODE


def _finding(result: ScriptResult, cause: FailureCause | None) -> str:
    """How it ended, in the engine's words and without the duration: ``exit code 1``,
    ``killed by signal SIGSEGV``, ``timed out after 2 s``, ``memory limit of … exceeded``."""
    if cause in (FailureCause.TIMEOUT, FailureCause.MEMORY_LIMIT):
        return result["error"] or str(cause)
    if cause == FailureCause.SIGNAL:
        return f"killed by signal {result['signal']}"
    return f"exit code {result['exit_code']}"


def _ending(result: ScriptResult, cause: FailureCause | None) -> str:
    """The finding with the duration, as the header says it: a timeout's names it already."""
    finding = _finding(result, cause)
    if cause == FailureCause.TIMEOUT:
        return finding
    return f"{finding} after {result['execution_time']:.2f} s"


def _header(label: str, result: ScriptResult, cause: FailureCause | None) -> str:
    verb = "" if cause == FailureCause.TIMEOUT else "failed: "
    return f"{label} {verb}{_ending(result, cause)}"


def _quoted(line: str | None) -> str:
    """A line for the summary: ``'text'`` (cut to 80 characters), or ``nothing``."""
    if line is None:
        return "nothing"
    return repr(visible(line if len(line) <= 80 else f"{line[:77]}..."))


def mismatch_message(mismatch: Mismatch) -> str:
    """``stdout differs from x_script.stdout at line 3: expected 'a', got 'b'``."""
    if not mismatch.line:
        return f"{mismatch.stream} not checked: {mismatch.file} is missing"
    return (
        f"{mismatch.stream} differs from {mismatch.file} at line {mismatch.line}: "
        f"expected {_quoted(mismatch.expected)}, got {_quoted(mismatch.actual)}"
    )


def processes(count: int) -> str:
    """``1 process``, ``2 processes``."""
    return f"{count} process{'es' if count != 1 else ''}"


def leak_words(result: ScriptResult) -> str:
    """``left 2 processes running: 4242 (sleep 300), 4250 (python -m http.server)``; ``""``
    for a script that left none."""
    count, leaked = result.get("leaked_count", 0), result.get("leaked", [])
    if not count:
        return ""
    named = ", ".join(f"{entry['pid']} ({visible(entry['command'])})" for entry in leaked)
    more = count - len(leaked)
    return f"left {processes(count)} running: {named}{f' and {more} more' if more else ''}"


def _output_diff(mismatch: Mismatch) -> str:
    return "\n".join([mismatch_message(mismatch), *mismatch.notes, *mismatch.diff])


_FRAME = re.compile(r'^\s*File "(?P<path>.+)", line (?P<line>\d+)', re.M)


def script_line(result: ScriptResult) -> int:
    """The script's line in the traceback's last frame in the script; 0 if there is none."""
    lineno = 0
    for frame in _FRAME.finditer(result["stderr"]):
        if frame["path"] == result["script"]:
            lineno = int(frame["line"])
    return lineno


def _location(label: str, result: ScriptResult, cause: FailureCause | None) -> CrashLocation:
    """``path:line: error``: the last line of stderr (``ValueError: boom``) and how the
    script exited, for one that said why; else how it ended (``timed out after 2 s``)."""
    # A Python script that exits says why in its last stderr line (a MemoryError too); a
    # timeout or a signal is the engine's finding alone.
    exited = cause in (FailureCause.EXIT_CODE, FailureCause.MEMORY_LIMIT) and not result["signal"]
    said = visible(last_line(result["stderr"])) if exited else ""
    message = f"{said} ({_finding(result, cause)})" if said else _ending(result, cause)
    return CrashLocation(label, script_line(result), message)


def crash_message(result: ScriptResult) -> str:
    """The script's own last word on how it failed, for the short test summary line.

    A timeout, a signal or a memory limit is the engine's finding (``timed out after 2 s``,
    ``killed by signal SIGSEGV``); for an exit code it is the last line of stderr, which for
    a Python script is the exception (``RuntimeError: boom``), else ``exit code N``; for a
    script that did not run, why (a cancel's reason, the missing path...).
    """
    cause = failure_cause(result)
    status = result["status"]
    if status == ScriptStatus.CANCELLED:
        return cancel_reason(result)
    if status == ScriptStatus.ERROR:
        return result["error"] or str(cause)
    if cause == FailureCause.EXIT_CODE:
        return visible(last_line(result["stderr"])) or _finding(result, cause)
    return _finding(result, cause)


def cancel_reason(result: ScriptResult) -> str:
    """The skip reason of a cancelled script: ``cancelled``, and why when the result says."""
    reason = result["error"] or ""
    # Wording only (the outcome was decided by the status): no "cancelled: cancelled".
    detail = reason.removeprefix("cancelled").lstrip(": ")
    return f"cancelled: {detail}" if detail else "cancelled"


def describe_failure(
    label: str,
    result: ScriptResult,
    *,
    stderr_shown: bool,
    worker_shown: bool = False,
    mismatches: Sequence[Mismatch] = (),
    flaky: str | None = None,
    leaks_fail: bool = False,
    dirty: Sequence[str] = (),
) -> ScriptFailure:
    """A failed or timed-out script's report, as fields. ``stderr_shown``: its stderr has a
    section of its own in the report, so the failure text leaves it out. ``mismatches``:
    the streams that differ from their expectation files, and ``dirty``: the files it left
    in the source tree (``exec_dirty = fail``), for a script that passed by its exit code
    (then they are the failure) or failed by it (then both are shown). ``flaky``: why a
    script that passed only on a later try fails (``exec_flaky = fail``). ``leaks_fail``:
    the processes it left running fail it (``exec_leaks = fail``), said as mismatches are."""
    cause = failure_cause(result)
    notes = []
    if worker_shown and result.get("worker"):
        notes.append(f"ran on worker {result['worker']}")
    if cause == FailureCause.TIMEOUT:
        notes.append(TIMEOUT_HINT)
    problems = [mismatch_message(mismatch) for mismatch in mismatches]
    if dirty:
        notes.append(DIRTY_HINT)
        problems.extend(_wrote(dirty))
    left = leak_words(result) if leaks_fail else ""
    if left:
        problems.append(left)
        if cause is not None:  # under a header about how it ended, its own line
            notes.append(f"it also {left}")
    if flaky:
        problems.append(flaky)
    reasons = "; ".join(problems)
    if cause is None:  # passed by its exit code: what it printed, wrote, left, or its tries fail it
        header = f"{label} failed: {reasons} (after {result['execution_time']:.2f} s)"
        location = CrashLocation(label, 0, reasons)
        summary = reasons
    else:
        header = _header(label, result, cause)
        location = _location(label, result, cause)
        summary = crash_message(result)
        if reasons:
            location = replace(location, message=f"{location.message}; {reasons}")
            summary = f"{summary}; {reasons}"
    return ScriptFailure(
        header=header,
        notes=tuple(notes),
        location=location,
        summary=summary,
        stderr_tail="" if stderr_shown else _tail(result["stderr"], STDERR_TAIL_LINES),
        output_diffs=tuple(_output_diff(mismatch) for mismatch in mismatches),
    )


def add_output_sections(item: pytest.Item, result: ScriptResult) -> None:
    """Attach the script's output the way pytest shows captured output of a test: that of
    its failed tries first (``max_runs``, reruns), so a flaky script's failures are seen."""
    # .get: a result a third-party backend made without make_result has no failed tries.
    for name, text in try_sections(result.get("failed_tries", [])):
        item.add_report_section("call", name, text)
    for name, text in (("stdout", result["stdout"]), ("stderr", result["stderr"])):
        if text:
            item.add_report_section("call", name, text)


def raise_for_result(
    item: pytest.Item,
    label: str,
    result: ScriptResult,
    skip_exit_codes: frozenset[int] = frozenset(),
    mismatches: Sequence[Mismatch] = (),
    flaky: str | None = None,
    dirty: Sequence[str] = (),
) -> None:
    """Return for a passed script; raise the exception that gives the table's outcome.
    ``mismatches``: its streams that differ from their expectation files; ``flaky``: why a
    script that passed only on a later try fails; ``dirty``: the files it left in the source
    tree that fail it."""
    status = result["status"]
    line_style = item.config.getoption("tbstyle", "auto") == "line"
    leaks_fail = item.config.stash[OPTIONS_KEY].leaks == "fail" and bool(leak_words(result))
    passed = (
        status == ScriptStatus.PASSED
        and not mismatches
        and flaky is None
        and not leaks_fail
        and not dirty
    )
    if passed or not line_style:
        # --tb=line: a failing script is one line, not followed by its captured output.
        add_output_sections(item, result)
    if passed:
        return
    if is_exit_skip(result, skip_exit_codes):
        # The script decided at run time that it does not apply (exec_skip_exit_codes).
        pytest.skip(last_line(result["stderr"]) or f"exit code {result['exit_code']}")
    if status == ScriptStatus.CANCELLED:
        pytest.skip(cancel_reason(result))
    if status == ScriptStatus.ERROR:
        raise ScriptNotStarted(f"{label} could not run: {result['error']}")
    stderr_shown = (
        not line_style
        and bool(result["stderr"])
        and item.config.getoption("showcapture", "all") in ("stderr", "all")
    )
    raise ScriptFailed(
        describe_failure(
            label,
            result,
            stderr_shown=stderr_shown,
            worker_shown=item.config.get_verbosity() > 0,
            mismatches=mismatches,
            flaky=flaky,
            leaks_fail=leaks_fail,
            dirty=dirty,
        )
    )


def is_exit_skip(result: ScriptResult, skip_exit_codes: frozenset[int]) -> bool:
    """Did the script exit with one of ``exec_skip_exit_codes`` (a skip, not a failure)?"""
    return (
        result["status"] == ScriptStatus.FAILED
        and failure_cause(result) == FailureCause.EXIT_CODE
        and result["exit_code"] in skip_exit_codes
    )


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank, stripped ('' if there is none)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F] if chr(code) not in "\t"}


def visible(text: str) -> str:
    """``text`` with control characters (escape sequences, NUL, CR...) shown as ``\\xNN``,
    so what a script writes cannot move the cursor or recolour the terminal."""
    return text.translate(_CONTROL)
