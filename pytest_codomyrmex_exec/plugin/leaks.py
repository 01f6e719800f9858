"""Processes a script left running when it exited, on the pytest side: what its report
carries and the run summary's lines (ini ``exec_leaks``; a failure's words are
:func:`.outcome.leak_words`).

The engine finds and kills them as the script ends, and names them in the result's
``leaked`` (the first 20) and ``leaked_count``; this module only words them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ..engine.results import ScriptResult
from .outcome import processes, visible

SHOWN_PER_SCRIPT = 5
"""Processes the run summary lists under each script; the rest are counted."""


def leak_facts(result: ScriptResult) -> dict[str, Any]:
    """The results stream's ``leaked`` and ``leaked_count`` (plain JSON values)."""
    return {
        "leaked": [dict(entry) for entry in result.get("leaked", [])],
        "leaked_count": result.get("leaked_count", 0),
    }


def write_leak_summary(
    reporter: pytest.TerminalReporter, leaky: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """The run summary's part: each script (label, facts) that left processes, and what."""
    if not leaky:
        return
    if reporter.verbosity < 0:  # -q: one line
        named = ", ".join(f"{label} ({facts['leaked_count']})" for label, facts in leaky)
        reporter.write_line(f"codomyrmex-exec: left processes running: {named}", yellow=True)
        return
    reporter.write_line("left processes running (killed when the script exited):")
    for label, facts in leaky:
        count = int(facts["leaked_count"])
        reporter.write_line(f"  {label}: {processes(count)}", yellow=True)
        shown = list(facts["leaked"])[:SHOWN_PER_SCRIPT]
        for entry in shown:
            reporter.write_line(f"    {entry['pid']:>7}  {visible(str(entry['command']))}")
        if count > len(shown):
            reporter.write_line(f"    and {count - len(shown)} more")
