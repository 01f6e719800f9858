"""The environment a script inherits: a leaf module without pytest, so that the Dask worker
side (:mod:`.dask_worker`) builds it exactly as pytest's side does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

SHARD_VAR = "EXEC_SHARD"
"""Picks this run's shard (``--exec-shard``'s fallback, for CI matrices)."""

# Variables meant for this pytest run (pytest's own, and the shard a CI matrix picks); a
# script that runs pytest must not inherit them.
_PYTEST_ONLY_ENV = (
    "PYTEST_CURRENT_TEST",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_VERSION",
    SHARD_VAR,
)
_PYTEST_ONLY_ENV_PREFIXES = ("PYTEST_XDIST_",)


SESSION_TAG_VAR = "CODOMYRMEX_EXEC_SESSION"
"""Set in every script's environment, one value per pytest session: at the end of the session
whatever still carries it (a daemon a script left behind) is found and killed."""


def child_environment(session_tag: str, pythonpath: Sequence[Path] = ()) -> dict[str, str]:
    """The environment scripts inherit: ours, less the variables that belong to pytest, with
    ``pythonpath`` (pytest's ini entries) on ``PYTHONPATH`` ahead of the inherited value."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _PYTEST_ONLY_ENV and not key.startswith(_PYTEST_ONLY_ENV_PREFIXES)
    }
    env[SESSION_TAG_VAR] = session_tag
    entries = [str(path) for path in pythonpath]
    if env.get("PYTHONPATH"):
        entries.append(env["PYTHONPATH"])
    if entries:
        env["PYTHONPATH"] = os.pathsep.join(entries)
    return env
