"""What a run of scripts leaves to read: the run summary, the JSONL results stream, junit
properties, and the failure report in the script's own words."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import IO, Any, final

import pytest

from ..engine.results import ScriptResult, ScriptStatus
from .options import UNSET, ExecOptions
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


FACTS_ATTR = "codomyrmex_exec"
"""The attribute of a script's final report (its call, or a failed setup) that holds the
facts of its run: plain JSON values, so they travel with the report from an xdist worker to
the controller, where the summary and the results file are made."""


def script_facts(result: ScriptResult, skip_exit_codes: frozenset[int]) -> dict[str, Any]:
    """What the summary and the results file need of a result, with bounded output tails."""
    status = "skipped" if is_exit_skip(result, skip_exit_codes) else str(result["status"])
    return {
        "status": status,
        "message": None if status == ScriptStatus.PASSED else crash_message(result),
        "exit_code": result["exit_code"],
        "signal": result["signal"],
        "error": result["error"],
        "duration": round(result["execution_time"], 6),
        "attempts": result["attempts"],
        "memory_limit_exceeded": result["memory_limit_exceeded"],
        "stdout_tail": _tail(result["stdout"]),
        "stderr_tail": _tail(result["stderr"]),
    }


@final
@dataclass(frozen=True, slots=True)
class ScriptRecord:
    """One finished script: the facts of its run and the outcome pytest reported for it."""

    nodeid: str
    facts: dict[str, Any]
    outcome: str
    """pytest's word: passed, failed, error, skipped, xfailed or xpassed."""
    worker: str | None
    """The pytest-xdist worker that ran it (``gw0``...), ``None`` in this process."""

    @property
    def label(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def status(self) -> str:
        """The engine's status, or ``skipped`` for an ``exec_skip_exit_codes`` exit."""
        return str(self.facts["status"])

    @property
    def duration(self) -> float:
        return float(self.facts["duration"])

    @property
    def hit_limit(self) -> bool:
        return self.status == ScriptStatus.TIMEOUT or bool(self.facts["memory_limit_exceeded"])


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
    values["timeout"] = None if options.timeout is UNSET else options.timeout
    return values


class RunRecords:
    """Every script's result as its report comes in; the JSONL stream; the summary's numbers.

    A plugin object registered in ``pytest_configure`` (and kept in ``config.stash``). A
    record is taken from each report that carries :data:`FACTS_ATTR`, when it is logged
    (after every makereport wrapper, e.g. xfail's), here or, under xdist, on the controller.
    """

    def __init__(self, options: ExecOptions) -> None:
        self.options = options
        self.records: list[ScriptRecord] = []
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

    def pytest_collection_finish(self) -> None:
        self.loop_started = time.monotonic()

    def pytest_unconfigure(self) -> None:
        self.close()

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.options.summary:
            self.write_summary(terminalreporter)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        facts = getattr(report, FACTS_ATTR, None)
        if not isinstance(facts, dict):
            return
        gateway = getattr(getattr(report, "node", None), "gateway", None)  # set by xdist
        worker = getattr(gateway, "id", None)
        if report.when == "call" and report.failed and isinstance(report.longrepr, str):
            # From an xdist worker the failure arrives as text: give it back its crash line.
            message = str(facts.get("message") or "")
            if message:
                crash = CrashLine(str(report.location[0]), message)
                report.longrepr = ScriptFailureRepr(report.longrepr, crash)  # type: ignore[assignment]
        record = ScriptRecord(report.nodeid, facts, _outcome_word(report), worker)
        self.records.append(record)
        self.last_finished = time.monotonic()
        if self._stream is not None:
            self._write(
                {
                    "nodeid": record.nodeid,
                    "status": record.status,
                    "outcome": record.outcome,
                    **{key: value for key, value in facts.items() if key != "status"},
                    "worker": worker,
                    "finished": _now(),
                }
            )

    # -- the summary --------------------------------------------------------------------------

    def script_time(self) -> float:
        return sum(record.duration for record in self.records)

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
        slowest = sorted(self.records, key=lambda r: -r.duration)[:SLOWEST]
        if len(self.records) > 1:
            reporter.write_line("slowest:")
            for record in slowest:
                reporter.write_line(f"  {record.duration:8.2f} s  {record.label}")
        limited = [record for record in self.records if record.hit_limit]
        if limited:
            reporter.write_line("hit their limit:")
            for record in limited:
                reporter.write_line(f"  {record.label}: {record.facts['error']}", yellow=True)


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
