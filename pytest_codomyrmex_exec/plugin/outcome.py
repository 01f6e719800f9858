"""Map an engine result to a pytest outcome: the one place that decides pass, fail, error, skip."""

from __future__ import annotations

from typing import final

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


def raise_for_result(item: pytest.Item, label: str, result: ScriptResult) -> None:
    """Return for a passed script; raise the exception that gives the table's outcome."""
    status = result["status"]
    add_output_sections(item, result)
    if status == ScriptStatus.PASSED:
        return
    if status == ScriptStatus.CANCELLED:
        reason = result["error"] or "cancelled"
        pytest.skip(reason if reason.startswith("cancelled") else f"cancelled: {reason}")
    if status == ScriptStatus.ERROR:
        raise ScriptNotStarted(f"{label} could not run: {result['error']}")
    header = failure_header(label, result)
    if result.get("worker") and item.config.get_verbosity() > 0:
        header += f"\nran on worker {result['worker']}"
    raise ScriptFailed(header, _tail(result["stderr"], STDERR_TAIL_LINES))
