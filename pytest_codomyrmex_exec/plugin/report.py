"""What a run of scripts leaves to read: the run summary, the JSONL results stream, junit
properties, and the failure report in the script's own words."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import IO, Any, final

import pytest

from ..engine.resources import describe_assigned
from ..engine.results import ScriptResult, ScriptStatus
from .dirty import named
from .flaky import is_flaky
from .leaks import leak_facts, write_leak_summary
from .live import write_notice
from .options import UNSET, ExecOptions
from .outcome import crash_message, failure_cause, is_exit_skip

REPORT_SCHEMA_VERSION = 1
"""Version of the ``--exec-report`` line format (docs/report.md); raised on any change."""

TAIL_CHARS = 2000
"""Characters of stdout and of stderr kept, from the end, in each ``--exec-report`` line."""

SLOWEST = 5
"""Scripts listed under "slowest" in the run summary."""

JUNIT_PROPERTY_FAMILIES = ("xunit1", "legacy")
"""junit families whose schema allows ``<properties>`` in a testcase (pytest's
``record_property`` warns under ``xunit2`` for the same reason)."""

_OUTCOME_ORDER = ("passed", "failed", "xfailed", "xpassed", "skipped", "error", "rerun")
"""The run summary's counts: pytest's outcomes, so that they add up as pytest's own do
(``rerun``: an attempt that pytest-rerunfailures ran again)."""


_SEEN_FACTS = ("started_at", "ended_at")
"""Facts in transit, not in the results file: when the session saw the script start and
end (epoch seconds, on the machine that ran pytest), written as ``start`` and ``end``
relative to the run's start by the process that writes the file."""

_SEEN_KEY = pytest.StashKey[dict[str, float]]()
"""In ``item.stash``: the :data:`_SEEN_FACTS` of the script's latest run."""


FACTS_ATTR = "codomyrmex_exec"
"""The attribute of a script's final report (its call, or a failed setup) that holds the
facts of its run: plain JSON values, so they travel with the report from an xdist worker to
the controller, where the summary and the results file are made."""


def script_facts(
    result: ScriptResult,
    skip_exit_codes: frozenset[int],
    tries_allowed: int,
    dirty: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the summary and the results file need of a result, with bounded output tails.
    ``tries_allowed``: the most tries it could get (``max_runs``, times reruns); ``dirty``:
    the files it left in the source tree (plugin/dirty.py), ``None`` if unknown."""
    status = "skipped" if is_exit_skip(result, skip_exit_codes) else str(result["status"])
    cause = failure_cause(result)
    return {
        "status": status,
        "cause": None if cause is None else cause.value,  # a plain str travels with xdist
        "message": None if status == ScriptStatus.PASSED else crash_message(result),
        "exit_code": result["exit_code"],
        "signal": result["signal"],
        "error": result["error"],
        "duration": round(result["execution_time"], 6),
        "attempts": result["attempts"],
        "memory_limit_exceeded": result["memory_limit_exceeded"],
        "stdout_tail": _tail(result["stdout"]),
        "stderr_tail": _tail(result["stderr"]),
        # The device ids it held ({"GPU": ["0"]}; empty when none): shown with -v too.
        "resource_ids": result["resource_ids"],
        "host": result["worker"],
        "flaky": is_flaky(result),
        "tries_allowed": tries_allowed,
        "failed_tries": [
            {
                "attempt": earlier["attempt"],
                "status": str(earlier["status"]),
                "cause": None if earlier["cause"] is None else str(earlier["cause"]),
                "exit_code": earlier["exit_code"],
                "error": earlier["error"],
                "duration": round(earlier["execution_time"], 6),
                "stderr_tail": earlier["stderr_tail"],
            }
            for earlier in result.get("failed_tries", [])
        ],
        **leak_facts(result),
        "dirty": dirty,
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


def _iso(epoch: float) -> str:
    import datetime  # only with --exec-report or --exec-timeline: most runs need no timestamps

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds")


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


def _jsonable_options(options: ExecOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    values["skip_exit_codes"] = sorted(options.skip_exit_codes)
    values["timeout"] = None if options.timeout is UNSET else options.timeout
    values["resources"] = {n: getattr(a, "ids", a) for n, a in options.resources.items()}
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
        self.started_at = time.time()
        """When the run started (epoch seconds): the header's ``started``, and the zero of
        each line's ``start`` and ``end``."""
        self.loop_started = time.monotonic()
        self._workers_collected = False
        self.last_finished: float | None = None
        self.most_at_once = 1
        """The most scripts that ran at the same time in this process (--exec-parallel)."""
        self._stream: IO[str] | None = None
        self._stream_path = ""
        self._stream_failure: str | None = None
        """Why the results file stopped being written, until the terminal has shown it."""
        self._reporter: pytest.TerminalReporter | None = None
        self._timeline_lines: list[dict[str, Any]] | None = None
        """The lines of the results file, kept for ``--exec-timeline`` where it is drawn."""
        self._timeline_note: tuple[str, bool] | None = None
        """What became of the timeline (and whether that was a failure), for the terminal."""

    # -- the JSONL stream ---------------------------------------------------------------------

    def open_stream(self, path: str) -> None:
        """Start ``path`` afresh with the header line."""
        try:
            self._stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - open for the run
        except OSError as exc:
            raise pytest.UsageError(f"--exec-report: cannot write {path}: {exc}") from None
        self._stream_path = path
        self._write(self._header())

    def _header(self) -> dict[str, Any]:
        """The results file's first line, which the timeline reads too."""
        import importlib.metadata

        from ..timeline import REPORT_SCHEMA

        return {
            "schema": REPORT_SCHEMA,
            "version": REPORT_SCHEMA_VERSION,
            "started": _iso(self.started_at),
            "pytest": pytest.__version__,
            "plugin": importlib.metadata.version("pytest-codomyrmex-exec"),
            "options": _jsonable_options(self.options),
        }

    def _write(self, line: dict[str, Any]) -> None:
        import json

        if self._stream is None:
            return  # never opened, or given up on after a failed write
        try:
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
            # Flushed per line: the kernel has it, so a SIGKILLed pytest loses no result.
            self._stream.flush()
        except OSError as exc:
            # A full disk (ENOSPC, EFBIG, a reader gone) must not end the run that the file
            # is there to record: stop writing it, say so once, and let the scripts go on.
            self._stream_failure = (
                f"codomyrmex-exec: the results file {self._stream_path} could not be written "
                f"({exc}); it stops here, the run goes on"
            )
            self.close()
            self._show_stream_failure()

    def _show_stream_failure(self) -> None:
        if self._stream_failure is not None and self._reporter is not None:
            # Within an item's report, or at collection's end: between items only then.
            write_notice(self._reporter, self._stream_failure, red=True, between_items=False)
            self._stream_failure = None

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            # What a failed write left in the buffer fails again here; the fd closes anyway.
            with contextlib.suppress(OSError):
                stream.close()

    # -- records ------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # Not at configure, when the header is written: the terminal is made after that.
        self._reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if self.options.timeline_path and not hasattr(session.config, "workerinput"):
            self._timeline_lines = []  # under xdist the controller draws it, as it writes the file

    # First, both: another plugin's implementation that raises keeps those after it from
    # being called, and the script's line would lose its time.
    @pytest.hookimpl(tryfirst=True)
    def pytest_exec_script_started(self, item: pytest.Item) -> None:
        item.stash[_SEEN_KEY] = {"started_at": time.time()}

    @pytest.hookimpl(tryfirst=True)
    def pytest_exec_script_finished(self, item: pytest.Item) -> None:
        item.stash.setdefault(_SEEN_KEY, {})["ended_at"] = time.time()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        # Outermost: the plugin's own wrapper has put the facts on the report by now.
        report = yield
        facts = getattr(report, FACTS_ATTR, None)
        seen = item.stash.get(_SEEN_KEY, None)
        if isinstance(facts, dict) and seen is not None:
            facts.update(seen)
        return report

    def pytest_collection_finish(self) -> None:
        self.loop_started = time.monotonic()
        self._show_stream_failure()  # a failed header: below pytest's own header lines

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self) -> None:
        # xdist's controller collects nothing itself (no pytest_collection_finish here): its
        # scripts can start once the first worker has collected. Counted from configure, the
        # workers' start-up was the scripts' wall time (two 0.3 s scripts "in 1.8 s: 0.3x").
        if not self._workers_collected:
            self._workers_collected = True
            self.loop_started = time.monotonic()

    def pytest_unconfigure(self) -> None:
        self.close()

    def pytest_sessionfinish(self) -> None:
        """Draw the timeline (after an interrupted run too: what finished is on it)."""
        path = self.options.timeline_path
        if self._timeline_lines is None or path is None:
            return
        from ..timeline import write_timeline

        try:
            write_timeline(path, self._header(), self._timeline_lines)
        except OSError as exc:
            self._timeline_note = (f"the timeline {path} could not be written ({exc})", True)
        else:
            count = len(self._timeline_lines)
            scripts = f"{count} script{'s' if count != 1 else ''}"
            self._timeline_note = (f"the timeline of {scripts} is in {path}", False)

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        self._show_stream_failure()  # if collection never finished
        if self.options.summary:
            self.write_summary(terminalreporter)
        if self._timeline_note is not None:
            note, failed = self._timeline_note
            terminalreporter.write_line(f"codomyrmex-exec: {note}", red=failed)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        facts = getattr(report, FACTS_ATTR, None)
        if not isinstance(facts, dict):
            return
        gateway = getattr(getattr(report, "node", None), "gateway", None)  # set by xdist
        worker = getattr(gateway, "id", None)
        record = ScriptRecord(report.nodeid, facts, _outcome_word(report), worker)
        self.records.append(record)
        self.last_finished = time.monotonic()
        if self._stream is not None or self._timeline_lines is not None:
            line = self._line(record)
            self._write(line)
            if self._timeline_lines is not None:
                self._timeline_lines.append(line)

    def _line(self, record: ScriptRecord) -> dict[str, Any]:
        """The script's line in the results file (docs/report.md)."""
        now = time.time()
        facts = record.facts
        ended = facts.get("ended_at")
        return {
            "nodeid": record.nodeid,
            "status": record.status,
            "outcome": record.outcome,
            **{key: value for key, value in facts.items() if key not in ("status", *_SEEN_FACTS)},
            "worker": record.worker,
            "finished": _iso(now),
            "start": self._since_start(facts.get("started_at")),
            # Its report is made once it has ended: that bounds an end no hook saw.
            "end": self._since_start(now if ended is None else ended),
        }

    def _since_start(self, epoch: float | None) -> float | None:
        # Microseconds: a script seen to start just before another is seen to end must not
        # look as if it took that one's slot (the timeline packs lanes by these times).
        return None if epoch is None else round(epoch - self.started_at, 6)

    # -- the summary --------------------------------------------------------------------------

    def final(self) -> list[ScriptRecord]:
        """One record per script: its last attempt's (earlier ones are ``rerun``)."""
        return [record for record in self.records if record.outcome != "rerun"]

    def script_time(self) -> float:
        """Every attempt's time: reruns took their time too."""
        return sum(record.duration for record in self.records)

    def wall_time(self) -> float:
        end = self.last_finished if self.last_finished is not None else self.loop_started
        return max(end - self.loop_started, 0.0)

    def counts(self) -> dict[str, int]:
        """Scripts per pytest outcome (a timeout is one of the failed, as pytest counts it)."""
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.outcome] = counts.get(record.outcome, 0) + 1
        return {outcome: counts[outcome] for outcome in _OUTCOME_ORDER if outcome in counts}

    def concurrent(self) -> bool:
        """Did two scripts or more run at the same time? Only then is a speed-up a result:
        of one script, or of scripts run one by one, the ratio only measures the overhead."""
        workers = {record.worker for record in self.records if record.worker is not None}
        return self.most_at_once > 1 or len(workers) > 1

    def headline(self) -> str:
        """``41 scripts, 96.3 s of script time in 12.1 s: 8.0x``; no ratio when one ran at a
        time. Times keep three significant digits, so the ratio follows from what is shown."""
        count = len(self.final())
        script, wall = _seconds(self.script_time()), _seconds(self.wall_time())
        line = f"{count} script{'s' if count != 1 else ''}, {script} s of script time"
        line += f" in {wall} s"
        if float(wall) > 0 and self.concurrent():
            # Of the times as shown: a reader who divides them gets the same ratio.
            line += f": {float(script) / float(wall):.1f}x"
        return line

    def write_summary(self, reporter: pytest.TerminalReporter) -> None:
        if not self.records:
            return
        counts = ", ".join(_counted(n, outcome) for outcome, n in self.counts().items())
        final = self.final()
        # By name: the order reports came in differs from run to run in parallel.
        flaky = sorted((r for r in final if r.facts.get("flaky")), key=lambda r: r.label)
        leaky = [
            (record.label, record.facts)
            for record in final
            if record.facts.get("leaked_count") and self.options.leaks != "ignore"
        ]
        if reporter.verbosity < 0:  # -q: one line
            also = f"; {len(flaky)} flaky" if flaky else ""
            dirty = len(_dirty(final))
            also += f"; {dirty} wrote into the source tree" if dirty else ""
            reporter.write_line(f"codomyrmex-exec: {self.headline()} ({counts}{also})")
            write_leak_summary(reporter, leaky)
            return
        reporter.write_sep("=", "codomyrmex-exec: script runs")
        reporter.write_line(self.headline())
        reporter.write_line(counts)
        slowest = sorted(final, key=lambda r: -r.duration)[:SLOWEST]
        if len(final) > 1:
            reporter.write_line("slowest:")
            for record in slowest:
                reporter.write_line(f"  {record.duration:8.2f} s  {record.label}")
        if flaky:
            reporter.write_line(
                f"{len(flaky)} flaky: " + ", ".join(map(_passed_on_try, flaky)), yellow=True
            )
        limited = [record for record in final if record.hit_limit]
        if limited:
            reporter.write_line("hit their limit:")
            for record in limited:
                reporter.write_line(f"  {record.label}: {record.facts['error']}", yellow=True)
        write_leak_summary(reporter, leaky)
        self._write_dirty(reporter, final)

    def _write_dirty(self, reporter: pytest.TerminalReporter, final: list[ScriptRecord]) -> None:
        """The files scripts left in the source tree (exec_dirty), by script."""
        dirty = _dirty(final)
        if not dirty:
            return
        reporter.write_line("wrote into the source tree (ini exec_dirty):")
        for record in sorted(dirty, key=lambda record: record.label):
            files, count = record.facts["dirty"]["files"], record.facts["dirty"]["count"]
            reporter.write_line(f"  {record.label}: {named(files, count)}", yellow=True)


def _dirty(records: list[ScriptRecord]) -> list[ScriptRecord]:
    """The records of scripts that left files in the source tree."""
    return [record for record in records if (record.facts.get("dirty") or {}).get("count")]


def _seconds(value: float) -> str:
    """Three significant digits at least (``0.0821``, ``1.50``, ``96.3``, ``1234``), and
    never an exponent: a script that ended at once reads ``0.0000880``, not ``8.80e-05``."""
    if value <= 0:
        return "0.00"
    return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}"


def _passed_on_try(record: ScriptRecord) -> str:
    """``a_script.py (passed on try 3 of 3)``."""
    facts = record.facts
    return f"{record.label} (passed on try {facts['attempts']} of {facts['tries_allowed']})"


def _counted(count: int, outcome: str) -> str:
    """``3 passed``, ``2 errors``: pytest's words for its own counts."""
    return f"{count} {outcome}{'s' if outcome == 'error' and count != 1 else ''}"


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
    if is_flaky(result):
        properties.append(("flaky", result["attempts"]))  # the try it passed on
    if result["resource_ids"]:
        properties.append(("exec_resources", describe_assigned(result["resource_ids"])))
    return properties
