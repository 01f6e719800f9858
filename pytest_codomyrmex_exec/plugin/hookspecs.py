"""The plugin's own hooks: how conftest files and other plugins follow script runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..engine.results import ScriptResult
    from ..engine.spec import ScriptSpec
    from .backends import ScriptBackend


@pytest.hookspec(firstresult=True)
def pytest_exec_make_backend(config: pytest.Config) -> ScriptBackend | None:
    """Return the backend that runs script items with ``--exec-parallel``.

    Called once per session, in ``pytest_runtestloop``, before any script starts; the first
    non-``None`` result wins (like pytest-xdist's ``pytest_xdist_make_scheduler``). The
    built-in ``async``, ``process`` and ``dask`` backends (``--exec-backend``) are the
    default implementations, run last. A backend is any object with ``start``, ``cancel``,
    ``join`` and ``alive`` (see ``pytest_codomyrmex_exec.plugin.backends.ScriptBackend``).

    :param config: the pytest config; ``--exec-workers`` and the other options are on it.
    """


def pytest_exec_script_started(item: pytest.Item, settings: ScriptSpec) -> None:
    """A script item's process was started (or is about to be, when run inline).

    Called in pytest's main thread. With ``--exec-parallel`` scripts start in the
    background, so this is called as soon as the session loop sees the start: for a
    script that started while an ordinary test function ran, right after that test.

    :param item: the script's test item.
    :param settings: the :class:`ScriptSpec` it runs with (timeout, env, cwd, ...).
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
