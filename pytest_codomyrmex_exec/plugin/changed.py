"""``--exec-changed``: deselect the scripts whose recorded inputs are unchanged since their
last passing run.

Scripts run with ``record=True``; each script's final report carries its inputs (hashed in
the process that ran it, so they travel from an xdist worker like the run's facts), and the
process that sees every report (this one, or xdist's controller) writes them to the deps
store at the end: pytest's cache, or ``--exec-deps-file``.

The selection comes before ``--exec-shard``'s split: the shard plugin's wrapper sees what is
left, so every shard that reads the same deps file splits the same remaining scripts.
Under xdist every worker decides alike from the same store and tree, as xdist requires of
collection; only the controller writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ..deps_file import (
    MACHINE_STATE,
    DepsFileError,
    Entry,
    FileHasher,
    Hint,
    Inputs,
    Interpreter,
    Unhashable,
    deps_to_plain,
    file_key,
    file_path,
    hints_from_plain,
    inputs_from_plain,
    inputs_to_plain,
    parse_deps,
    read_deps,
    why_run,
    write_deps,
)
from ..engine.spec import ScriptSpec
from .durations import file_setting
from .expected import OUTPUT_SETTINGS_KEY, PLAN_KEY
from .items import ScriptItem
from .keys import OPTIONS_KEY, RESULT_KEY
from .marks import MarkError
from .report import _outcome_word  # pytest's word for an item's outcome, as the summary says it

CACHE_KEY = "codomyrmex_exec/deps"
HINTS_CACHE_KEY = "codomyrmex_exec/file-hashes"
_CHANGED_PLUGIN = "codomyrmex-exec-changed"
_WORKER_OUTPUT_KEY = "codomyrmex_exec_changed"
INPUTS_ATTR = "codomyrmex_exec_inputs"
"""The attribute of a script's final report holding what its run depended on (plain JSON:
it travels with the report from an xdist worker)."""
_DIGEST_KEY = pytest.StashKey[str]()
"""A script item's settings digest, in ``item.stash`` once computed."""


def configure_changed(config: pytest.Config) -> None:
    """Register the plugin (``--exec-changed`` is on)."""
    named = file_setting(config, "exec_deps_file")
    path = None if named is None else named[0]
    if path is None and getattr(config, "cache", None) is None:
        raise pytest.UsageError(
            "--exec-changed: pytest's cache is disabled (-p no:cacheprovider); "
            "name a file to keep what scripts depended on with --exec-deps-file=PATH"
        )
    config.pluginmanager.register(ChangedPlugin(config, path), _CHANGED_PLUGIN)


class ChangedPlugin:
    """Decides at collection, takes each script's inputs from its report, writes the store."""

    def __init__(self, config: pytest.Config, path: Path | None) -> None:
        self.config = config
        self.path = path
        self.rootdir = config.rootpath
        self.problem: str | None = None
        """Why the store was not used, for the terminal."""
        self.writable = True
        """False for a file that is someone else's JSON: it is never written over."""
        self.entries = self._load()
        cache = getattr(config, "cache", None)
        self.hasher = FileHasher(hints_from_plain(cache.get(HINTS_CACHE_KEY, {})) if cache else {})
        self.interpreters: dict[str | None, Interpreter] = {}
        self.found: dict[str, str | Unhashable | None] = {}
        """Hashes taken at collection, by store key; a script's own run is hashed afresh."""
        self.fresh: dict[str, Entry] = {}
        self.unchanged = 0
        self.reasons: dict[str, str] = {}
        """Why each remaining script runs, by node id (shown with -v)."""
        self.decided = False
        self.from_worker = False
        """True on xdist's controller, which learns the decision from a worker."""

    # -- the store -------------------------------------------------------------------------

    def _cache_value_path(self) -> Path:
        """Where pytest's cache keeps the store: cache_dir (from the rootdir), v/, the key."""
        return self.config.rootpath / str(self.config.getini("cache_dir")) / "v" / CACHE_KEY

    def _load(self) -> dict[str, Entry]:
        try:
            if self.path is not None:
                return read_deps(self.path)
            where = self._cache_value_path()
            plain = self.config.cache.get(CACHE_KEY, None)
            if plain is None and where.exists():  # pytest's get() says nothing of bad JSON
                raise DepsFileError(f"{where}: not JSON")
            return {} if plain is None else parse_deps(plain, str(where))
        except DepsFileError as exc:
            self.writable = not (exc.foreign and self.path is not None)
            left = "left as it is" if not self.writable else "to be written anew"
            self.problem = (
                f"codomyrmex-exec: --exec-changed ignored {exc} ({left}); every script ran"
            )
            return {}

    def _save(self) -> None:
        entries = {**self.entries, **self.fresh}  # scripts that did not run keep theirs
        if self.path is not None:
            if self.writable:
                try:
                    write_deps(self.path, entries)
                except OSError as exc:
                    self.problem = (
                        f"codomyrmex-exec: could not write the deps file {self.path}: {exc}"
                    )
        else:
            self.config.cache.set(CACHE_KEY, deps_to_plain(entries))
        cache = getattr(self.config, "cache", None)
        if cache is not None:
            # Only hints of files some script depends on: the table stays as big as the tree.
            wanted = {
                file_path(key, self.rootdir)
                for entry in entries.values()
                if entry.inputs is not None
                for key in entry.inputs.files
            }
            hints = {p: list(h) for p, h in self.hasher.hints.items() if p in wanted}
            cache.set(HINTS_CACHE_KEY, hints)

    # -- deciding --------------------------------------------------------------------------

    def _interpreter(self, python: str | None) -> Interpreter:
        if python not in self.interpreters:
            self.interpreters[python] = Interpreter(python)
        return self.interpreters[python]

    def _digest(self, key: str) -> str | None:
        """A file's hash as collection finds it: once per file however many scripts read it
        (a module changed a moment ago has no hint yet, and would be read for each)."""
        if key not in self.found:
            try:
                self.found[key] = self.hasher.digest(file_path(key, self.rootdir))
            except Unhashable as exc:
                self.found[key] = exc
        found = self.found[key]
        if isinstance(found, Unhashable):
            raise found
        return found

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        # Last among plain implementations (after -k, -m): only what would run is hashed; the
        # shard plugin's wrapper splits what is left.
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            if not isinstance(item, ScriptItem):
                kept.append(item)
                continue
            reason = self._why_run(item)
            if reason is None:
                dropped.append(item)
            else:
                self.reasons[item.nodeid] = reason
                kept.append(item)
        self.unchanged = len(dropped)
        self.decided = True
        if hasattr(config, "workerinput"):
            facts = {"unchanged": self.unchanged, "reasons": self.reasons}
            config.workeroutput[_WORKER_OUTPUT_KEY] = facts  # type: ignore[attr-defined]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    def _why_run(self, item: ScriptItem) -> str | None:
        try:
            spec = item.settings()
        except MarkError:
            return "its exec mark is not valid"
        return why_run(
            self.entries.get(item.nodeid),
            settings_digest(item, spec),
            self._interpreter(spec.python),
            self._digest,
        )

    # -- what ran --------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if isinstance(item, ScriptItem) and (call.when == "call" or not report.passed):
            result = item.stash.get(RESULT_KEY, None)
            taken: dict[str, Any] = {}
            if report.passed and result is not None and result["record"] is not None:
                inputs, hints = self._inputs(item, result["record"])
                taken = {"inputs": inputs_to_plain(inputs), "hints": hints}
            setattr(report, INPUTS_ATTR, taken)
        return report

    def _inputs(self, item: ScriptItem, record: Any) -> tuple[Inputs, dict[str, list[Any]]]:
        spec = item.settings()
        writes = set(record["writes"])
        files: dict[str, str | None] = {}
        always: list[str] = []
        reads = {spec.script, *record["reads"]}
        for line in record["unseen"]:
            program = _program_not_followed(line)
            if program is None:
                always.append(line)
            else:  # what it did inside is unseen, but the program itself is an input
                reads.add(program)
        used: dict[str, list[Any]] = {}
        for read in reads:
            if "__pycache__" in Path(read).parts or read.startswith(MACHINE_STATE):
                continue  # bytecode follows its source (and holds its mtime); see MACHINE_STATE
            key = file_key(read, self.rootdir)
            if read in writes and os.path.isabs(key):
                continue  # its own scratch file outside the tree (a temporary file)
            path = file_path(key, self.rootdir)  # as the decision names it: one hint per file
            try:
                files[key] = self.hasher.digest(path)
            except Unhashable as exc:
                always.append(f"read {key}: {exc}: run every time")
                continue
            hint = self.hasher.hints.get(path)
            if hint is not None:
                used[path] = list(hint)
        inputs = Inputs(
            settings=settings_digest(item, spec),
            interpreter=self._interpreter(spec.python).identity(),
            distributions=dict(record["distributions"]),
            files=files,
            always=always,
        )
        return inputs, used

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        taken = getattr(report, INPUTS_ATTR, None)
        now = datetime.now(UTC)
        if isinstance(taken, dict):
            outcome = _outcome_word(report)
            plain = taken.get("inputs")
            inputs = inputs_from_plain(plain) if outcome == "passed" and plain else None
            self.fresh[report.nodeid] = Entry(outcome, now, inputs)
            hints: dict[str, Hint] = hints_from_plain(taken.get("hints"))
            self.hasher.hints.update(hints)
        elif report.when == "teardown" and report.failed and report.nodeid in self.fresh:
            self.fresh[report.nodeid] = Entry("error", now)

    # -- the end ---------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist's controller: every worker decided alike; keep the first's facts."""
        output = getattr(node, "workeroutput", None) or {}
        facts = output.get(_WORKER_OUTPUT_KEY)
        if not self.decided and isinstance(facts, dict):
            self.unchanged = int(facts.get("unchanged", 0))
            self.reasons = dict(facts.get("reasons", {}))
            self.decided = True
            self.from_worker = True

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # the controller writes, from the reports it sees
        if self.fresh:
            self._save()
        if self.unchanged and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # nothing changed: nothing to run is a pass

    def _lines(self) -> list[str]:
        if not self.decided:
            return []
        lines = [f"codomyrmex-exec: {_scripts(self.unchanged)} deselected as unchanged"]
        if self.config.get_verbosity() > 0:
            lines += [f"  runs: {nodeid}: {why}" for nodeid, why in sorted(self.reasons.items())]
        return lines

    def pytest_report_collectionfinish(self) -> list[str]:
        return self._lines()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.from_worker:
            # xdist's controller collected nothing: the workers' decision is told here.
            for line in self._lines():
                terminalreporter.write_line(line)
        if self.problem:
            terminalreporter.write_sep("-", self.problem, yellow=True)


def _scripts(count: int) -> str:
    return f"{count} script" if count == 1 else f"{count} scripts"


# -- a script's resolved settings, as one digest ---------------------------------------------


def _temporary_roots(config: pytest.Config) -> tuple[Path, ...]:
    factory = getattr(config, "_tmp_path_factory", None)  # pytest's, as workdir.py reads it
    roots = [Path(tempfile.gettempdir())]
    if isinstance(factory, pytest.TempPathFactory):
        roots.append(factory.getbasetemp())
    return tuple(roots)


def _where_it_runs(cwd: str | None, config: pytest.Config) -> str | None:
    """The working folder as an input: from the rootdir, and a fresh temporary folder (``tmp``,
    ``copy``) as such, not as its name, which is new every run."""
    if cwd is None:
        return None
    key = file_key(cwd, config.rootpath)
    if not os.path.isabs(key):
        return key
    if any(Path(cwd).is_relative_to(root) for root in _temporary_roots(config)):
        return "<a temporary folder>"
    return cwd


def settings_digest(item: ScriptItem, spec: ScriptSpec) -> str:
    """One digest of everything but files that decides how the script runs and is judged:
    the spec (its path from the rootdir), every mark on the item, the output it is checked
    against and the session options that judge it."""
    cached = item.stash.get(_DIGEST_KEY, None)
    if cached is not None:
        return cached
    config = item.config
    run = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "record"}
    run["script"] = file_key(spec.script, config.rootpath)
    run["cwd"] = _where_it_runs(spec.cwd, config)
    plan = item.stash.get(PLAN_KEY, None)
    expected = [
        (e.stream, file_key(str(e.path), config.rootpath), e.text)
        for e in (plan.expectations if plan is not None else ())
    ]
    options = config.stash[OPTIONS_KEY]
    settings = {
        "run": run,
        "marks": [
            (m.name, repr(m.args), repr(sorted(m.kwargs.items()))) for m in item.iter_markers()
        ],
        "expected": expected,
        "output": repr(config.stash[OUTPUT_SETTINGS_KEY]),
        "skip_exit_codes": sorted(options.skip_exit_codes),
        "missing_resources": options.missing_resources,
    }
    text = json.dumps(settings, sort_keys=True, default=_plain)
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    item.stash[_DIGEST_KEY] = digest
    return digest


def _plain(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    return repr(value)


_NOT_PYTHON = ": not followed (not Python)"
"""How the recorder ends the line of a program it ran that is not Python."""


def _program_not_followed(unseen: str) -> str | None:
    """The program of a recorder line ``ran /usr/bin/convert a.png b.jpg: not followed (not
    Python)``: hashed like a file the script read, so the script runs again when the program
    changes. ``None`` for anything else the recorder could not follow (a Python child, a shell
    command, a record cut short), which runs the script every time."""
    if not (unseen.startswith("ran ") and unseen.endswith(_NOT_PYTHON)):
        return None
    program = unseen[len("ran ") : -len(_NOT_PYTHON)].split(" ", 1)[0]
    return program if os.path.isabs(program) else None
