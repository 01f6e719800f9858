"""Starts the plugin tests' inner pytest sessions by forking a process that has imported pytest.

Each inner session is a real ``python -m pytest`` process of its own, with its own arguments,
folder, environment and standard streams. What it skips is the interpreter's start and the
imports every session repeats (pytest and the plugins loaded in every session): about half of
a short session's CPU, and the suite starts hundreds of them.

Run as ``python session_starter.py SOCKET``: it listens on the Unix socket ``SOCKET``. Each
connection sends one JSON request (``args``, ``cwd``, ``env``) with three descriptors (stdin,
stdout, stderr) and gets two lines back: the session's pid, then its exit code (as
``subprocess`` gives it: negative for a signal). A handler process per connection forks the
session and waits for it, so the starter never blocks on a session. The starter ends when the
process that started it does.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import socket
import sys

# What every inner session imports: pytest and this plugin. Not the other plugins: pytest
# marks an installed plugin's modules for assertion rewriting as it loads them, and warns
# ("already imported") about one imported before.
import pytest  # noqa: F401

import pytest_codomyrmex_exec.plugin  # noqa: F401

STARTUP_VARIABLES = ("PYTHON", "LC_", "LANG", "COVERAGE_PROCESS_START")
"""Prefixes of the environment variables the interpreter reads as it starts (PYTHONPATH is
applied to each session's ``sys.path``): a session whose values differ is started for real."""

_BASE_PATH = sys.path[1:]
"""``sys.path`` without this file's folder: what a session's own entries go in front of."""


def _session(request: dict[str, object], fds: list[int]) -> None:
    """Become ``python -m pytest ARGS`` in the request's folder and environment (the
    interpreter's exit follows, with pytest's exit code, as in a process started anew)."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    cwd = str(request["cwd"])
    os.chdir(cwd)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    entries = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = [cwd, *entries, *_BASE_PATH]
    args = [str(arg) for arg in request["args"]]  # type: ignore[attr-defined]
    sys.argv[:] = ["-m", *args]
    sys.orig_argv[:] = [sys.executable, "-m", "pytest", *args]
    runpy.run_module("pytest", run_name="__main__", alter_sys=True)


def _handle(connection: socket.socket) -> None:
    """Start the requested session, report its pid and, once it ended, its exit code."""
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        connection.close()
        _session(request, fds)
        return  # not reached unless pytest returned without exiting
    for fd in fds:
        os.close(fd)
    connection.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def main(path: str) -> None:
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under another name first: the path appears only once it can be
    # connected to (the tests wait for it to exist).
    listener.bind(path + ".binding")
    listener.listen(16)
    os.rename(path + ".binding", path)
    listener.settimeout(0.2)
    while os.getppid() == parent:
        _reap()
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.settimeout(None)
        if os.fork() == 0:
            listener.close()
            _handle(connection)
            return
        connection.close()


def _reap() -> None:
    """Wait for the handlers that ended: waited for, their CPU time (and their session's)
    adds up into this process's, and so into the suite's (``time``, ``getrusage``)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


if __name__ == "__main__":
    main(sys.argv[1])
