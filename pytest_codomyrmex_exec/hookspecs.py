"""The plugin's own hooks: how conftest files and other plugins follow script runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .results import ScriptResult
    from .settings import ScriptSettings


def pytest_exec_script_started(item: pytest.Item, settings: ScriptSettings) -> None:
    """A script item's process was started (or is about to be, when run inline).

    Called in pytest's main thread. With ``--exec-parallel`` scripts start in the
    background, so this is called as soon as the session loop sees the start: for a
    script that started while an ordinary test function ran, right after that test.

    :param item: the script's test item.
    :param settings: the resolved settings it runs with (timeout, env, cwd, ...).
    """


def pytest_exec_script_finished(item: pytest.Item, result: ScriptResult) -> None:
    """A script item's run finished, before its test report is made.

    Called in pytest's main thread, once per run that produced a result (a script retried
    with ``max_runs`` calls it once, with the last attempt). ``result`` is the engine's
    result dict; an implementation may change it (for example its ``status`` or
    ``stdout``) to reshape the report that follows.

    :param item: the script's test item.
    :param result: the result: status, exit code, output, duration, error.
    """
