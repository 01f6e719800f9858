"""The ``mode`` fixture's witness inside each inner pytest session (``-p exec_mode_probe``).

It records, as they happen, which processes are pytest and every script start this pytest
makes: a cold start (``subprocess.Popen`` of an interpreter whose environment carries a run
tag) or a warm one (a request sent to the warm-start server), with the context that made it:
pytest's main thread (inline), a thread running an event loop (the async backend) or another
thread (the process backend's pool). CPython's audit events show these as they happen,
whatever code path led there, so a mode that silently falls back to another is seen.

One line per event is appended to ``$EXEC_MODE_PROBE/<pid>.records``: a session killed
outright leaves what it saw.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

_FOLDER_VAR = "EXEC_MODE_PROBE"
_TAG_VAR = "CODOMYRMEX_EXEC_RUN"
_HOOKED = "_exec_mode_probe_hooked"
"""An attribute of ``sys``: audit hooks cannot be removed, so a process that runs several
sessions (pytester's in-process runs) installs one, which writes while the variable is set."""


def _write(**line: object) -> None:
    folder = os.environ.get(_FOLDER_VAR)
    if not folder:
        return
    with open(os.path.join(folder, f"{os.getpid()}.records"), "a", encoding="utf-8") as out:
        out.write(repr({"pid": os.getpid(), **line}) + "\n")


def _context() -> str:
    """Who is starting a process: the main thread, an event loop's thread, or another."""
    if threading.current_thread() is threading.main_thread():
        return "main"
    events = sys.modules.get("asyncio.events")
    if events is not None and events._get_running_loop() is not None:
        return "loop"
    return "thread"


def _script(argv: Any) -> str | None:
    """The script of ``python <script> ...``; ``None`` for ``python -m module``."""
    args = [str(arg) for arg in argv] if isinstance(argv, (list, tuple)) else []
    return os.path.realpath(args[1]) if len(args) > 1 and args[1] != "-m" else None


def _on_event(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        _, argv, _, env = args
        tag = (env or {}).get(_TAG_VAR, "") if isinstance(env, dict) else ""
        if tag.strip("0"):  # a script (the warm server's tag is a placeholder of zeros)
            _write(kind="start", warm=False, context=_context(), script=_script(argv))
    elif event == "socket.sendmsg":  # the only message pytest sends: a warm start request
        _write(kind="start", warm=True, context=_context(), script=None)


def pytest_configure(config: pytest.Config) -> None:
    _write(kind="pytest", ppid=os.getppid())
    if not getattr(sys, _HOOKED, False):
        setattr(sys, _HOOKED, True)
        sys.addaudithook(_on_event)
