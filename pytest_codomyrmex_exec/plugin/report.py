"""What a run of scripts leaves to read: the run summary, the JSONL results stream, junit
properties, and the failure report in the script's own words."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import IO, Any, final

import pytest

from ..engine import ScriptResult, ScriptStatus
from .options import ExecOptions
from .outcome import CrashLine, ScriptFailed, ScriptFailureRepr, crash_message, is_exit_skip

REPORT_SCHEMA_VERSION = 1
"""Version of the ``--exec-report`` line format (docs/report.md); raised on any change."""

TAIL_CHARS = 2000
"""Characters of stdout and of stderr kept, from the end, in each ``--exec-report`` line."""

SLOWEST = 5
"""Scripts listed under "slowest" in the run summary."""

JUNIT_PROPERTY_FAMILIES = ("xunit1", "legacy")
"""junit families whose schema allows ``<properties>`` in a testcase (pytest's
``record_property`` warns under ``xunit2`` for the same reason)."""

_STATUS_ORDER = ("passed", "failed", "timeout", "error", "cancelled", "skipped")


@final
@dataclass(frozen=True, slots=True)
class ScriptRecord:
    """One finished script: its result and the outcome pytest reported for it."""

    nodeid: str
    result: ScriptResult
    outcome: str
    """pytest's word: passed, failed, error, skipped, xfailed or xpassed."""
    status: str
    """The engine's status, or ``skipped`` for an ``exec_skip_exit_codes`` exit."""

    @property
    def label(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def hit_limit(self) -> bool:
        return self.result["status"] == ScriptStatus.TIMEOUT or self.result["memory_limit_exceeded"]


def _outcome_word(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and report.when != "call":
        return "error"
    return report.outcome


def _now() -> str:
    import datetime  # only with --exec-report: most runs need no timestamps

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


def _jsonable_options(options: ExecOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    values["skip_exit_codes"] = sorted(options.skip_exit_codes)
    values["timeout"] = None if options.timeout in (None, float("inf")) else options.timeout
    return values


class RunRecords:
    """Every script's result as its report comes in; the JSONL stream; the summary's numbers.

    A plugin object registered in ``pytest_configure`` (and kept in ``config.stash``).
    ``note`` is called when an item's report is made (the result is known); the record is
    taken when the report is final (after every makereport wrapper, e.g. xfail's) and logged.
    """

    def __init__(self, options: ExecOptions) -> None:
        self.options = options
        self.records: list[ScriptRecord] = []
        self._pending: dict[str, ScriptResult] = {}
        self.loop_started = time.monotonic()
        self.last_finished: float | None = None
        self._stream: IO[str] | None = None

    # -- the JSONL stream ---------------------------------------------------------------------

    def open_stream(self, path: str) -> None:
        """Start ``path`` afresh with the header line."""
        import importlib.metadata

        try:
            self._stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - open for the run
        except OSError as exc:
            raise pytest.UsageError(f"--exec-report: cannot write {path}: {exc}") from None
        header = {
            "schema": "pytest-codomyrmex-exec/report",
            "version": REPORT_SCHEMA_VERSION,
            "started": _now(),
            "pytest": pytest.__version__,
            "plugin": importlib.metadata.version("pytest-codomyrmex-exec"),
            "options": _jsonable_options(self.options),
        }
        self._write(header)

    def _write(self, line: dict[str, Any]) -> None:
        import json

        assert self._stream is not None
        self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        # Flushed per line: the kernel has it, so a SIGKILLed pytest loses no finished result.
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # -- records ------------------------------------------------------------------------------

    def note(self, nodeid: str, result: ScriptResult) -> None:
        self._pending[nodeid] = result

    def pytest_collection_finish(self) -> None:
        self.loop_started = time.monotonic()

    def pytest_unconfigure(self) -> None:
        self.close()

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.options.summary:
            self.write_summary(terminalreporter)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        final = report.when == "call" or (report.when == "setup" and not report.passed)
        if not final or report.nodeid not in self._pending:
            return
        result = self._pending.pop(report.nodeid)
        status = str(result["status"])
        if is_exit_skip(result, self.options.skip_exit_codes):
            status = "skipped"
        record = ScriptRecord(report.nodeid, result, _outcome_word(report), status)
        self.records.append(record)
        self.last_finished = time.monotonic()
        if self._stream is None:
            return
        self._write(
            {
                "nodeid": record.nodeid,
                "status": record.status,
                "outcome": record.outcome,
                "exit_code": result["exit_code"],
                "signal": result["signal"],
                "error": result["error"],
                "duration": round(result["execution_time"], 6),
                "attempts": result["attempts"],
                "worker": None,
                "finished": _now(),
                "stdout_tail": _tail(result["stdout"]),
                "stderr_tail": _tail(result["stderr"]),
            }
        )

    # -- the summary --------------------------------------------------------------------------

    def script_time(self) -> float:
        return sum(record.result["execution_time"] for record in self.records)

    def wall_time(self) -> float:
        end = self.last_finished if self.last_finished is not None else self.loop_started
        return max(end - self.loop_started, 0.0)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.status] = counts.get(record.status, 0) + 1
        return {status: counts[status] for status in _STATUS_ORDER if status in counts}

    def headline(self) -> str:
        """``41 scripts, 96.3 s of script time in 12.1 s: 8.0x``."""
        count = len(self.records)
        script, wall = self.script_time(), self.wall_time()
        line = f"{count} script{'s' if count != 1 else ''}, {script:.1f} s of script time"
        line += f" in {wall:.1f} s"
        if wall > 0:
            line += f": {script / wall:.1f}x"
        return line

    def write_summary(self, reporter: pytest.TerminalReporter) -> None:
        if not self.records:
            return
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        if reporter.verbosity < 0:  # -q: one line
            reporter.write_line(f"codomyrmex-exec: {self.headline()} ({counts})")
            return
        reporter.write_sep("=", "codomyrmex-exec: script runs")
        reporter.write_line(self.headline())
        reporter.write_line(counts)
        slowest = sorted(self.records, key=lambda r: -r.result["execution_time"])[:SLOWEST]
        if len(self.records) > 1:
            reporter.write_line("slowest:")
            for record in slowest:
                reporter.write_line(f"  {record.result['execution_time']:8.2f} s  {record.label}")
        limited = [record for record in self.records if record.hit_limit]
        if limited:
            reporter.write_line("hit their limit:")
            for record in limited:
                reporter.write_line(f"  {record.label}: {record.result['error']}", yellow=True)


RECORDS_KEY = pytest.StashKey[RunRecords]()


def junit_properties(config: pytest.Config, result: ScriptResult) -> list[tuple[str, object]]:
    """The script's facts as junit ``<properties>``, where the junit family allows them."""
    if not config.option.xmlpath or config.getini("junit_family") not in JUNIT_PROPERTY_FAMILIES:
        return []
    properties: list[tuple[str, object]] = [
        ("exec_status", str(result["status"])),
        ("exec_exit_code", "" if result["exit_code"] is None else result["exit_code"]),
        ("exec_attempts", result["attempts"]),
        ("exec_duration", f"{result['execution_time']:.3f}"),
    ]
    if result["signal"]:
        properties.append(("exec_signal", result["signal"]))
    return properties


def _stderr_shown(config: pytest.Config, report: pytest.TestReport) -> bool:
    """Will the failure section show the script's stderr as a captured section?"""
    if config.option.showcapture not in ("stderr", "all"):
        return False
    return any(title == "Captured stderr call" for title, _ in report.sections)


def shape_failure(
    config: pytest.Config,
    report: pytest.TestReport,
    call: pytest.CallInfo[None],
    result: ScriptResult,
) -> None:
    """A failed script's report: the short summary gets the script's last error line, and
    the traceback appears once.

    The failure text is a header line and the tail of stderr; pytest then shows the whole
    stderr again as "Captured stderr call". When that section is shown, the tail is dropped
    from the failure text, so the traceback appears once, in the section, next to the rest
    of the script's stderr; with ``--show-capture=no``/``stdout`` the tail stays.
    """
    if not report.failed or call.excinfo is None:
        return
    failure = call.excinfo.value
    if not isinstance(failure, ScriptFailed) or not isinstance(report.longrepr, str):
        return
    text = report.longrepr
    if failure.stderr_tail and _stderr_shown(config, report):
        text = text.replace("\n" + failure.stderr_tail, "", 1)
    report.longrepr = ScriptFailureRepr(  # type: ignore[assignment]
        text, CrashLine(str(report.location[0]), crash_message(result))
    )
