"""Flaky scripts: a script that failed and then passed on a later try, made by the engine
(``exec(max_runs=N)``) or by a rerun plugin (pytest-rerunfailures' ``--reruns``, its
``flaky`` mark). The result of the last try counts every try before it, so the summary, the
results stream, junit and the outcome all read it from the result alone."""

from __future__ import annotations

from typing import Any

import pytest

from ..engine.results import FailedTry, ScriptResult, ScriptStatus, failed_try
from ..engine.spec import ScriptSpec


def is_flaky(result: ScriptResult) -> bool:
    """It passed, and an earlier try of it failed."""
    return result["status"] == ScriptStatus.PASSED and bool(result.get("failed_tries"))


def fails_as_flaky(result: ScriptResult, setting: str) -> bool:
    """Does ``exec_flaky`` (``setting``) fail this result, which would pass otherwise?"""
    return setting == "fail" and is_flaky(result)


def after_earlier_tries(earlier: ScriptResult, result: ScriptResult) -> ScriptResult:
    """``result`` of a rerun of the item, counting ``earlier``: the result of the tries
    before it, the last of which failed (a rerun plugin reruns only a failure)."""
    done = earlier["attempts"]
    tries = list(earlier.get("failed_tries", []))
    if done:  # it ran (one that could not start has nothing to show)
        tries.append(failed_try(earlier, done))
    for later in result.get("failed_tries", []):
        moved = later.copy()
        moved["attempt"] += done
        tries.append(moved)
    combined = result.copy()
    combined["attempts"] = done + result["attempts"]
    combined["failed_tries"] = tries
    return combined


def tries_allowed(item: pytest.Item, spec: ScriptSpec) -> int:
    """How many tries the script may get: its ``max_runs`` for each run of the item, which a
    rerun plugin repeats up to its rerun count."""
    rerunfailures: Any = item.config.pluginmanager.get_plugin("rerunfailures")
    reruns = None
    if rerunfailures is not None and hasattr(rerunfailures, "get_reruns_count"):
        reruns = rerunfailures.get_reruns_count(item)
    return spec.max_runs * (1 + int(reruns or 0))


def flaky_verdict(result: ScriptResult, allowed: int) -> str:
    """What the report of a flaky script says under ``exec_flaky = fail``."""
    return f"flaky: passed only on try {result['attempts']} of {allowed} (exec_flaky = fail)"


def try_sections(tries: list[FailedTry]) -> list[tuple[str, str]]:
    """The report sections of the failed tries: how each ended, and its output's end."""
    sections = []
    for earlier in tries:
        # Its error, or "passed" for a try that failed the test only (exec_flaky = fail).
        ended = f"try {earlier['attempt']} ({earlier['error'] or earlier['status']})"
        streams = [("stdout", earlier["stdout_tail"]), ("stderr", earlier["stderr_tail"])]
        printed = [(f"{stream} of {ended}", text) for stream, text in streams if text]
        sections.extend(printed or [(ended, "(no output)")])
    return sections
