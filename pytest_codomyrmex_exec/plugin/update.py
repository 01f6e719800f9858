"""``--exec-update-output``, and the expectation files that belong to no script.

An item decides (in :func:`.expected.check_output`) what its files should now say; the text
travels on its call report, and the process that logs reports for the run writes it: pytest
itself, or under pytest-xdist the controller. So each file is written by exactly one process,
whatever ran the script (inline, a backend, warm, Dask, an xdist worker), and a file two
scripts disagree about is written by neither.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .expected import (
    OUTPUT_SETTINGS_KEY,
    PLAN_KEY,
    STREAMS,
    UPDATES_KEY,
    resolve_output_settings,
)
from .patterns import PATTERNS_KEY

OUTPUT_ATTR = "codomyrmex_exec_output"
"""The attribute of a script's call report with its expectation files and their updates:
plain JSON values, so they travel from an xdist worker to the controller."""
_PLUGIN = "codomyrmex-exec-output"


def configure_output_checks(config: pytest.Config) -> None:
    """Read the output-check settings (a UsageError for a bad one); register the writer."""
    config.stash[OUTPUT_SETTINGS_KEY] = resolve_output_settings(config)
    config.pluginmanager.register(ExpectationFiles(config), _PLUGIN)


class ExpectationFiles:
    """Writes the updates of the reports it logs; lists what it wrote and the orphans."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.written: dict[str, str] = {}
        self.created: list[str] = []
        self.updated: list[str] = []
        self.refused: dict[str, str] = {}
        self.checked: set[str] = set()
        self.folders: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        plan = item.stash.get(PLAN_KEY, None)
        if call.when == "call" and plan is not None:
            updates = item.stash.get(UPDATES_KEY, [])
            facts: dict[str, Any] = {
                "folder": str(Path(item.path).parent),
                "checked": [str(expectation.path) for expectation in plan.expectations],
                "updates": [
                    {"path": update.path, "text": update.text, "created": update.created}
                    for update in updates
                ],
            }
            setattr(report, OUTPUT_ATTR, facts)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        facts = getattr(report, OUTPUT_ATTR, None)
        if not isinstance(facts, dict) or hasattr(self.config, "workerinput"):
            return  # an xdist worker: the controller writes, from this report
        self.folders.add(facts["folder"])
        self.checked.update(facts["checked"])
        for update in facts["updates"]:
            self._write(update["path"], update["text"], update["created"])

    def _write(self, path: str, text: str, created: bool) -> None:
        if path in self.refused:
            return
        if path in self.written:
            if self.written[path] != text:
                self.refused[path] = "two scripts wrote different text to it"
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as stream:
                stream.write(text)
        except OSError as exc:
            self.refused[path] = str(exc)
            return
        self.written[path] = text
        (self.created if created else self.updated).append(path)

    def orphans(self) -> list[str]:
        """Expectation files in the folders of the scripts that ran that no script checks
        and whose own script (the same stem, ``.py``) is not a script of this run."""
        patterns = self.config.stash[PATTERNS_KEY]
        found = []
        for folder in sorted(self.folders):
            try:
                entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError:
                continue
            for entry in entries:
                path = Path(entry.path)
                if path.suffix[1:] not in STREAMS or str(path) in self.checked:
                    continue
                # name_script.stdout, or a case's name_script.CASE.stdout
                owners = (path.with_suffix(".py"), path.with_suffix("").with_suffix(".py"))
                if not any(owner.is_file() and patterns.matches(owner) for owner in owners):
                    found.append(str(path))
        return found

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if hasattr(self.config, "workerinput"):
            return
        rootdir = self.config.rootpath
        lines: list[tuple[str, bool]] = []
        for word, paths in (("updated", self.updated), ("created", self.created)):
            lines.extend((f"{word} {_shown(path, rootdir)}", False) for path in paths)
        lines.extend(
            (f"not written {_shown(path, rootdir)}: {why}", True)
            for path, why in self.refused.items()
        )
        lines.extend(
            (f"checked by no script: {_shown(path, rootdir)}", True) for path in self.orphans()
        )
        if not lines:
            return
        terminalreporter.write_sep("-", "codomyrmex-exec: expectation files")
        for line, warn in lines:
            terminalreporter.write_line(line, yellow=warn)


def _shown(path: str, rootdir: Path) -> str:
    try:
        return str(Path(path).relative_to(rootdir))
    except ValueError:
        return path
