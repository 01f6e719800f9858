"""The plugin's state keys in ``config.stash`` and ``item.stash``.

A leaf module: every plugin module reads the session's state through these keys without
importing the module that writes it (the warm-start module and the items once imported
each other for their keys).
"""

from __future__ import annotations

import pytest

from ..engine.launch import Launcher
from ..engine.results import ScriptResult
from .options import ExecOptions

OPTIONS_KEY = pytest.StashKey[ExecOptions]()
"""The session's resolved options, in ``config.stash``."""
SESSION_TAG_KEY = pytest.StashKey[str]()
"""This session's value of ``SESSION_TAG_VAR``, in ``config.stash``."""
LAUNCHER_KEY = pytest.StashKey[Launcher]()
"""How this session starts scripts, in ``config.stash``: cold, or warm with --exec-warm."""
RESULT_KEY = pytest.StashKey[ScriptResult]()
"""A script's result, in ``item.stash``; set by the parallel session before the item's report
is made."""
HOOK_ERROR_KEY = pytest.StashKey[Exception]()
"""What a pytest_exec_* hook raised for this item, in ``item.stash``; fails its call."""
