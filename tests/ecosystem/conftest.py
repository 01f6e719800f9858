"""The frame of the ecosystem checks: which plugins an inner session loads, and the rows
that docs/ecosystem.md is generated from.

Each check module ``importorskip``s its plugin, so README's test command, whose environment
does not install the ``ecosystem`` extra, skips them. Every inner session loads only the
plugins its test names in an ``ecosystem`` mark (and those the main suite always has): a
shuffling or re-drawing plugin that the test is not about would otherwise change what every
other check sees. After its assertions passed a check calls :func:`ecosystem_check`, which
appends one row to the file named by ``EXEC_ECOSYSTEM_ROWS`` (set by ``tox -e ecosystem``);
``table.py`` turns those rows into the page.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from typing import Protocol

import pytest

from .table import ecosystem_distributions

ROWS_VARIABLE = "EXEC_ECOSYSTEM_ROWS"
"""The environment variable naming the JSON-lines file that checks append their rows to."""

_MAIN_SUITE = {"pytest-cov", "pytest-xdist", "pytest-timeout", "pytest-rerunfailures"}
"""Plugins the main suite's environment has too; tests/conftest.py decides when they load."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ecosystem(*distributions): the plugins of the ecosystem extra that this check's "
        "inner sessions load (the others are blocked with -p no:)",
    )


def missing_distributions() -> list[str]:
    """The plugins of the ``ecosystem`` extra that are not installed here."""
    missing = []
    for name in ecosystem_distributions():
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


ONLY_IN_ECOSYSTEM_ENV = pytest.mark.skipif(
    bool(missing_distributions()),
    reason="re-runs a main-suite test to record its row: only where the whole ecosystem "
    "extra is installed (tox -e ecosystem)",
)
"""For a check whose plugin the main suite has and tests already: there it would only repeat
that test, so it runs in the ecosystem env, where it also records the plugin's row."""


def _entry_points(distribution: str) -> list[str]:
    try:
        found = importlib.metadata.distribution(distribution).entry_points
    except importlib.metadata.PackageNotFoundError:
        return []
    return [entry.name for entry in found if entry.group == "pytest11"]


@pytest.fixture(autouse=True)
def _only_the_plugins_checked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block, in every inner session of this test, the ecosystem plugins it does not check."""
    marker = request.node.get_closest_marker("ecosystem")
    used = set(marker.args) if marker is not None else set()
    unknown = used - set(ecosystem_distributions())
    if unknown:
        raise ValueError(
            f"{request.node.nodeid}: ecosystem mark names {sorted(unknown)}, which the "
            "ecosystem extra in pyproject.toml does not list"
        )
    blocked = [
        f"-p no:{name}"
        for distribution in ecosystem_distributions()
        if distribution not in used and distribution not in _MAIN_SUITE
        for name in _entry_points(distribution)
    ]
    # px (tests/conftest.py) sets PYTEST_ADDOPTS for the inner sessions; this adds to it.
    request.getfixturevalue("px")
    monkeypatch.setenv("PYTEST_ADDOPTS", f"{os.environ['PYTEST_ADDOPTS']} {' '.join(blocked)}")


class EcosystemCheck(Protocol):
    def __call__(self, distribution: str, what: str, *, limit: str | None = None) -> None: ...


@pytest.fixture
def ecosystem_check(request: pytest.FixtureRequest) -> EcosystemCheck:
    """``ecosystem_check(distribution, what)``: record that ``what`` was shown to work with
    ``distribution``; call it after the assertions that show it. ``limit="why"`` records
    instead that the plugin cannot work with script items (the check showed the one line
    the run prints about it); the page then says why.

    The row carries the installed version, the check's node id and its mode (the ``mode``
    fixture's name, or None), and goes to the file ``EXEC_ECOSYSTEM_ROWS`` names; without
    that variable nothing is written.
    """
    known = ecosystem_distributions()

    def record(distribution: str, what: str, *, limit: str | None = None) -> None:
        if distribution not in known:
            raise ValueError(
                f"ecosystem_check: {distribution!r} is not in the ecosystem extra of "
                f"pyproject.toml ({', '.join(known)})"
            )
        path = os.environ.get(ROWS_VARIABLE)
        if not path:
            return
        params = getattr(request.node, "callspec", None)
        mode = params.params.get("mode") if params is not None else None
        row = {
            "distribution": distribution,
            "version": importlib.metadata.version(distribution),
            "what": what,
            "limit": limit,
            "test": request.node.nodeid,
            "mode": getattr(mode, "name", None),
            "python": platform.python_version(),
            "pytest": pytest.__version__,
            "plugin": importlib.metadata.version("pytest-codomyrmex-exec"),
        }
        # One short append per row: rows from xdist workers do not interleave.
        with open(path, "a", encoding="utf-8") as rows:
            rows.write(json.dumps(row) + "\n")

    return record
