"""pytest-codomyrmex-exec: run Python scripts as tests, in parallel, in real subprocesses.

This package's top level is the execution library: the public names of
:mod:`pytest_codomyrmex_exec.engine`, which keeps the one list of them. It imports neither
pytest nor pluggy. The pytest plugin lives in :mod:`pytest_codomyrmex_exec.plugin` and is
loaded by pytest.

Names are imported on first use: pytest loads this package at every start-up through the
plugin, and most runs need neither asyncio nor the pools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import *  # noqa: F403 (the engine's public names: its list is the one list)


def __getattr__(name: str) -> Any:
    # Not "from . import engine": that asks this function for "engine" first, endlessly.
    engine = importlib.import_module(f"{__name__}.engine")  # lazy itself, like this one
    if name != "__all__" and name not in engine.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(engine, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    engine = importlib.import_module(f"{__name__}.engine")
    return sorted({*globals(), *engine.__all__})
