"""How a session with scripts ends: SIGTERM as Ctrl-C, and a guardian for a pytest killed outright.

Scripts run in sessions of their own, so a signal to pytest's process group never reaches
them; pytest must stop them. Ctrl-C already does (``KeyboardInterrupt``). A SIGTERM (a
cancelled CI job, ``docker stop``, ``timeout``) is turned into the same ``KeyboardInterrupt``.
A SIGKILL, the OOM killer or ``os._exit`` leave pytest no chance: on Linux a guardian process
notices that pytest has gone and kills every process carrying the session's tag.

Both are set up only once collection has found script items that will run: a session of
ordinary tests keeps pytest's own SIGTERM behaviour and starts no process.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import pytest

from ..engine import Guardian, guardian_supported, start_guardian
from .environment import SESSION_TAG_VAR
from .items import SESSION_TAG_KEY, ScriptItem

logger = logging.getLogger("pytest_codomyrmex_exec.plugin")

_GUARDIAN_KEY = pytest.StashKey[Guardian]()
_SIGTERM_KEY = pytest.StashKey[bool]()
"""Set when ours replaced SIGTERM's default handler, which is restored at the end."""


def sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the run the way Ctrl-C does: every script tree is killed first."""
    raise KeyboardInterrupt("SIGTERM")


def sigterm_is_interrupt() -> bool:
    """Is SIGTERM ours to hold back (our handler, or the default that would kill pytest)?"""
    current = signal.getsignal(signal.SIGTERM)
    return current is signal.SIG_DFL or current is sigterm_as_interrupt


def scripts_will_run(session: pytest.Session) -> bool:
    """Will this session run any script? Not with none collected, nor with --collect-only."""
    config = session.config
    if config.option.collectonly or config.getoption("setuponly", False):
        return False
    if config.getoption("setupplan", False):
        return False
    return any(isinstance(item, ScriptItem) for item in session.items)


def protect(config: pytest.Config) -> None:
    """Before the first script starts: SIGTERM as Ctrl-C, and the guardian (Linux)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, sigterm_as_interrupt)
        config.stash[_SIGTERM_KEY] = True
    if not config.getini("exec_guardian") or not guardian_supported():
        return
    try:
        guardian = start_guardian(SESSION_TAG_VAR, config.stash[SESSION_TAG_KEY])
    except OSError as exc:
        logger.warning("cannot start the guardian process: %s", exc)
        return
    config.stash[_GUARDIAN_KEY] = guardian


def unprotect(config: pytest.Config, *, swept: bool) -> None:
    """At the end: release the guardian (it sweeps once more unless ``swept``), restore SIGTERM."""
    guardian = config.stash.get(_GUARDIAN_KEY, None)
    if guardian is not None:
        del config.stash[_GUARDIAN_KEY]
        guardian.release(sweep=not swept)
    if config.stash.get(_SIGTERM_KEY, False):
        del config.stash[_SIGTERM_KEY]
        if signal.getsignal(signal.SIGTERM) is sigterm_as_interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
