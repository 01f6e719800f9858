"""Map an engine result to a pytest outcome: the one place that decides pass, fail, error, skip."""

from __future__ import annotations

from typing import Protocol, final

import pytest

from ..engine import ScriptResult, ScriptStatus

STDERR_TAIL_LINES = 40
"""Lines of stderr shown under the failure header; the full output is in the sections."""


@final
class ScriptFailed(Exception):
    """The script ran and failed: a non-allowed exit code, a signal, a timeout, a memory limit."""

    def __init__(self, header: str, stderr_tail: str) -> None:
        super().__init__(header)
        self.header = header
        self.stderr_tail = stderr_tail

    def render(self) -> str:
        return f"{self.header}\n{self.stderr_tail}" if self.stderr_tail else self.header


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
    raise ScriptFailed(failure_header(label, result), _tail(result["stderr"], STDERR_TAIL_LINES))


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
