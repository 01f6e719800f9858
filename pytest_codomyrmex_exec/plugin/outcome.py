"""Map an engine result to a pytest outcome: the one place that decides pass, fail, error, skip."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, final

import pytest

from ..engine.results import ScriptResult, ScriptStatus

STDERR_TAIL_LINES = 40
"""Lines of stderr shown under the failure header; the full output is in the sections."""
SHORT_TAIL_LINES = 6
"""Lines of stderr under the header with ``--tb=short``: the failing frame and the error."""

TIMEOUT_HINT = (
    "raise the limit with an exec(timeout=SECONDS) mark, --exec-timeout SECONDS "
    "or the ini key exec_timeout (0 = no limit)"
)


@final
@dataclass
class FailureLocation:
    """Where and how a script failed, for ``--tb=line``. Shaped like pytest's
    ``ReprFileLocation`` (the same fields, a dataclass), so that pytest-xdist can carry it
    from a worker; ``message`` is also what ``-r`` shows after the node id."""

    path: str
    lineno: int
    """The script's line in the traceback's last frame in the script; 0 if unknown."""
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.lineno}" if self.lineno else self.path
        return f"{where}: {self.message}"


@final
@dataclass
class _NoTraceback:
    """An empty ``ReprTraceback`` look-alike: nothing is printed above the line."""

    reprentries: list[object] = field(default_factory=list)
    extraline: str | None = None
    style: str = "line"

    def toterminal(self, tw: object) -> None:
        """Nothing."""


@final
class ScriptFailureLine:
    """``--tb=line``: pytest prints the report's body and then ``str(reprcrash)``; the body is
    empty, so each failing script is the one line ``path:line: error``."""

    def __init__(self, location: FailureLocation) -> None:
        self.reprcrash = location
        self.reprtraceback = _NoTraceback()
        self.sections: list[tuple[str, str, str]] = []

    def toterminal(self, tw: object) -> None:
        """Nothing: pytest writes the line itself, from ``reprcrash``."""

    def __str__(self) -> str:
        return str(self.reprcrash)  # junit's failure text


@final
class ScriptFailed(Exception):
    """The script ran and failed: a non-allowed exit code, a signal, a timeout, a memory limit."""

    def __init__(
        self,
        header: str,
        stderr_tail: str,
        *,
        location: FailureLocation | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(header)
        self.header = header
        self.stderr_tail = stderr_tail
        self.location = location
        self.hint = hint

    def render(self, style: str = "long") -> str | ScriptFailureLine:
        """The report for pytest's ``--tb`` style: ``line`` one line, ``short`` the header and
        the last lines of stderr, anything else (``long``, ``auto``, ``native``) all of it."""
        if style == "line" and self.location is not None:
            return ScriptFailureLine(self.location)
        tail = self.stderr_tail
        if style == "short":
            tail = _tail(tail, SHORT_TAIL_LINES) if tail else tail
        parts = [self.header, *([self.hint] if self.hint else []), *([tail] if tail else [])]
        return "\n".join(parts)


@final
class ScriptNotStarted(Exception):
    """The script could not be started (missing interpreter, missing cwd, bad exec mark)."""


def _duration(result: ScriptResult) -> str:
    return f"{result['execution_time']:.2f} s"


def failure_header(label: str, result: ScriptResult) -> str:
    """One line saying how the script ended: exit code, signal, timeout or memory limit."""
    error = result["error"] or ""
    status = result["status"]
    if status == ScriptStatus.TIMEOUT:
        return f"{label} {error}"
    if result["memory_limit_exceeded"]:
        return f"{label} failed: {error} after {_duration(result)}"
    if result["signal"]:
        return f"{label} failed: killed by signal {result['signal']} after {_duration(result)}"
    return f"{label} failed: exit code {result['exit_code']} after {_duration(result)}"


def _tail(text: str, lines: int) -> str:
    kept = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(kept)


_FRAME = re.compile(r'^\s*File "(?P<path>.+)", line (?P<line>\d+)', re.M)


def failure_location(label: str, result: ScriptResult) -> FailureLocation:
    """``path:line: error``: the last line of stderr (``ValueError: boom``) and the exit code
    for a script that exited with an error, at the script's line in the traceback's last
    frame; else how it ended (``timed out after 2 s``, ``killed by signal SIGSEGV``)."""
    header = failure_header(label, result)
    how = header.removeprefix(label).lstrip().removeprefix("failed: ")
    lineno = 0
    for frame in _FRAME.finditer(result["stderr"]):
        if frame["path"] == result["script"]:
            lineno = int(frame["line"])
    stderr_lines = [line for line in result["stderr"].splitlines() if line.strip()]
    if result["status"] != ScriptStatus.TIMEOUT and not result["signal"] and stderr_lines:
        message = f"{stderr_lines[-1].strip()} ({how.split(' after ')[0]})"
    else:
        message = how
    return FailureLocation(label, lineno, message)


def add_output_sections(item: pytest.Item, result: ScriptResult) -> None:
    """Attach the script's output the way pytest shows captured output of a test."""
    for name, text in (("stdout", result["stdout"]), ("stderr", result["stderr"])):
        if text:
            item.add_report_section("call", name, text)


def raise_for_result(
    item: pytest.Item,
    label: str,
    result: ScriptResult,
    skip_exit_codes: frozenset[int] = frozenset(),
) -> None:
    """Return for a passed script; raise the exception that gives the table's outcome."""
    status = result["status"]
    line_style = item.config.getoption("tbstyle", "auto") == "line"
    if status == ScriptStatus.PASSED or not line_style:
        # --tb=line: a failing script is one line, not followed by its captured output.
        add_output_sections(item, result)
    if status == ScriptStatus.PASSED:
        return
    if is_exit_skip(result, skip_exit_codes):
        # The script decided at run time that it does not apply (exec_skip_exit_codes).
        pytest.skip(last_line(result["stderr"]) or f"exit code {result['exit_code']}")
    if status == ScriptStatus.CANCELLED:
        reason = result["error"] or "cancelled"
        pytest.skip(reason if reason.startswith("cancelled") else f"cancelled: {reason}")
    if status == ScriptStatus.ERROR:
        raise ScriptNotStarted(f"{label} could not run: {result['error']}")
    header = failure_header(label, result)
    if result.get("worker") and item.config.get_verbosity() > 0:
        header += f"\nran on worker {result['worker']}"
    raise ScriptFailed(
        header,
        _tail(result["stderr"], STDERR_TAIL_LINES),
        location=failure_location(label, result),
        hint=TIMEOUT_HINT if status == ScriptStatus.TIMEOUT else None,
    )


def is_exit_skip(result: ScriptResult, skip_exit_codes: frozenset[int]) -> bool:
    """Did the script exit with one of ``exec_skip_exit_codes`` (a skip, not a failure)?"""
    return (
        result["status"] == ScriptStatus.FAILED
        and result["signal"] is None
        and result["exit_code"] in skip_exit_codes
    )


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


def crash_message(result: ScriptResult) -> str:
    """The script's own last word on how it failed, for the short test summary line.

    A timeout, a signal or a memory limit is the engine's finding (``timed out after 2 s``,
    ``killed by signal SIGSEGV``); for an exit code it is the last line of stderr, which for
    a Python script is the exception (``RuntimeError: boom``), else ``exit code N``.
    """
    status = result["status"]
    error = result["error"] or ""
    if status == ScriptStatus.TIMEOUT or result["memory_limit_exceeded"]:
        return error
    if result["signal"]:
        return f"killed by signal {result['signal']}"
    return visible(last_line(result["stderr"])) or error or f"exit code {result['exit_code']}"


class _LineWriter(Protocol):
    """The part of pytest's TerminalWriter a longrepr uses (the class itself is private)."""

    def line(self, s: str = "", **markup: bool) -> None: ...


@final
class CrashLine:
    """Where and how a script failed, in the shape pytest reads from ``longrepr.reprcrash``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.lineno = 0
        self.message = message

    def __str__(self) -> str:  # what --tb=line prints
        return f"{self.path}: {self.message}"


@final
class ScriptFailureRepr:
    """A script failure's ``longrepr``: the rendered text, plus the crash line that pytest's
    short test summary (``-rA``), ``--tb=line`` and junit's ``message`` show."""

    def __init__(self, text: str, crash: CrashLine) -> None:
        self.text = text
        self.reprcrash = crash

    def toterminal(self, tw: _LineWriter) -> None:
        for line in self.text.split("\n"):
            tw.line(line)

    def __str__(self) -> str:
        return self.text
