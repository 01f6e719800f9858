"""The warm-start server: a program, run by :class:`~.forkserver.WarmLauncher`, never imported.

It is started as ``python <this file> <socket fd> <preload path> <preload...>``, the way a
script is started, so that what start-up leaves in ``sys.modules`` is what a script's cold
start sees. Stdlib only, no relative imports, no ``from __future__`` (it would stay loaded).
The server:

1. imports the preload list (nothing of its own yet), naming each module to the launcher
   before importing it; refuses a module that leaves a thread running or a descriptor open
   (neither survives into a forked script intact); notes ``sys.modules`` again: what a
   forked script may keep;
2. imports its own machinery, stays single-threaded, and waits on its socket;
3. for each request (a plan and four descriptors: stdin, stdout, stderr, exit report; a
   fifth, the record file, for a run that records) forks a child that becomes a
   fresh-looking interpreter running the script (see :func:`_become`), with the recorder's
   audit hook installed last when asked, waits until the child leads its own session, and
   answers with its pid;
4. reaps each child as it exits (a pidfd per child, or polling) and writes its return code
   to the child's exit-report pipe, then closes it;
5. ends when the socket reaches EOF (the parent closed it, or died): it kills the process
   group of every script still running, reaps them and exits.
"""

# ruff: noqa: E402 -- the order of imports is the point: preload first, machinery after.
import _thread  # all four are imported by start-up (importlib needs them): nothing a script sees
import marshal
import os
import sys

_STARTUP = frozenset(sys.modules)
"""What interpreter start-up imported: every cold start of a script has these."""
if sys.path and sys.path[0] == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]  # this file's folder: not the scripts' path, and it must shadow nothing
_MAIN = sys.modules["__main__"]  # holds our globals alive once a child replaces __main__

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is no start-up import: a forked script must not find it loaded
    from typing import Any, NoReturn

# -- 1. preload ------------------------------------------------------------------------------

_BASE_PATH = list(sys.path)
_SOCKET_FD = int(sys.argv[1])
_PRELOAD_PATH = [os.path.abspath(p) for p in sys.argv[2].split(os.pathsep) if p]
_PRELOAD = [name for name in sys.argv[3:] if name]


def _open_fds() -> "set[int]":
    """The descriptors open now (the listing's own is closed again when they are checked)."""
    try:
        candidates = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: look through the usual range
        candidates = list(range(1024))
    found = set()
    for fd in candidates:
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.add(fd)
    return found


def _describe_fd(fd: int) -> str:
    try:
        return f"{os.readlink(f'/proc/self/fd/{fd}')} (fd {fd})"
    except OSError:
        return f"fd {fd}"


def _import_preload() -> str:
    """Import the preload list; why it cannot serve, or ``""``.

    Each script's child closes every descriptor but 0-2, so a file a preloaded module keeps
    open would be a file object over a closed number, and the script's own next ``open()``
    would reuse that number: the module's writes would land in the script's file. A thread
    does not survive ``fork`` at all (its locks stay held in the child). Such a module is
    refused, by name, rather than handed to scripts broken.
    """
    for name in _PRELOAD:
        fds_before = _open_fds()
        threads_before = _thread._count()
        os.write(_SOCKET_FD, marshal.dumps(("importing", name)))
        try:
            __import__(name)
        except BaseException as exc:
            return f"cannot preload {name!r}: {type(exc).__name__}: {exc}"
        left_open = sorted(_open_fds() - fds_before)
        if left_open:
            return (
                f"cannot preload {name!r}: importing it leaves "
                f"{', '.join(_describe_fd(fd) for fd in left_open)} open, and a forked "
                "script gets only stdin, stdout and stderr: import it in the scripts instead"
            )
        started = _thread._count() - threads_before
        if started > 0:
            threading = sys.modules.get("threading")
            names = (
                [t.name for t in threading.enumerate() if t is not threading.main_thread()]
                if threading is not None
                else []
            )
            return (
                f"cannot preload {name!r}: importing it starts {started} thread(s)"
                f"{' (' + ', '.join(names) + ')' if names else ''}, and threads do not "
                "survive the fork that starts each script: import it in the scripts instead"
            )
    return ""


sys.path[:0] = _PRELOAD_PATH  # the launcher's PYTHONPATH, for finding the preload list only
_preload_error = _import_preload()
del sys.path[: len(_PRELOAD_PATH)]
_KEEP: frozenset[str] = frozenset(sys.modules) | _STARTUP
"""What a forked script keeps in ``sys.modules``: start-up imports and the preload list."""
_PRELOADED_FILES = [
    file
    for name in sorted(_KEEP - _STARTUP)
    for file in [getattr(sys.modules[name], "__file__", None)]
    if isinstance(file, str)
]
"""The preload list's files. A script's import of one finds it loaded and raises no audit
event, so a recorded run lists them all as read: they are what the script ran with."""

import runpy

_KEEP_FOR_MODULE: frozenset[str] = frozenset(sys.modules)
"""``python -m`` imports runpy at start-up: a module run keeps what runpy brought."""

# -- 2. the server's own machinery ---------------------------------------------------------

import atexit
import builtins
import contextlib
import ctypes
import resource
import select
import signal
import socket

_SIGNALS_AT_START: "dict[int, Any]" = {}
"""The handlers as start-up and the preload list left them (a cold import sets the same)."""
for _number in range(1, signal.NSIG):
    try:
        _SIGNALS_AT_START[_number] = signal.getsignal(_number)
    except (OSError, ValueError):
        continue

_MAX_MESSAGE = 1 << 20
_RECORDER: "dict[str, Any]" = {}
"""The recorder's hook (``_record_site/sitecustomize.py``) once a run has asked for a record."""


def _load_recorder() -> None:
    """Define the hook here, in the server, on the first run that records (a server whose
    runs never do pays nothing), and look up the interpreter's folders once, so that no
    forked child does either."""
    if _RECORDER:
        return
    namespace: dict[str, Any] = {"__name__": "_codomyrmex_recorder", "__builtins__": builtins}
    path = os.path.join(os.path.dirname(__file__), "_record_site", "sitecustomize.py")
    with open(path) as fh:
        exec(compile(fh.read(), path, "exec"), namespace)
    namespace["interpreter_folders"]()
    _RECORDER.update(namespace)


_LONG_BITS = 8 * ctypes.sizeof(ctypes.c_long)
_SOURCE_LOADER = sys.modules["_frozen_importlib_external"].SourceFileLoader
_RUN_TAG_VAR = "CODOMYRMEX_EXEC_RUN"
_TAG_PLACEHOLDER = os.environ.get(_RUN_TAG_VAR, "")


def _send(sock: socket.socket, message: tuple[str, str | int]) -> None:
    sock.send(marshal.dumps(message))


# -- 3. the child ------------------------------------------------------------------------------


def _close_other_fds(keep: int) -> None:
    """Close every descriptor but 0-2 and ``keep`` (-1: none)."""
    try:
        end = os.sysconf("SC_OPEN_MAX")
        if keep > 2:  # close_range(2) where there is one
            os.closerange(3, keep)
            os.closerange(keep + 1, end)
        else:
            os.closerange(3, end)
    except OSError:
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2 and int(name) != keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))


def _block_span(index: int) -> "tuple[int, int] | None":
    """Where a block of this process's memory starts and ends, from ``/proc/self/stat``:
    ``index`` counts the fields after the name's closing parenthesis."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[index]), int(fields[index + 1])
    except (OSError, IndexError, ValueError):
        return None


def _find_tag_placeholder() -> int:
    """The address of the run tag's placeholder in this process's environment block, or 0.

    ``/proc/<pid>/environ`` shows the block the process was started with (the server's),
    not ``os.environ``. The server was started with a placeholder of the tag's length at a
    place a forked child shares, so the server finds it once, for every child."""
    if not _TAG_PLACEHOLDER:
        return 0
    span = _block_span(47)  # env_start, env_end: fields 50 and 51
    if span is None:
        return 0
    try:
        with open("/proc/self/environ", "rb") as fh:
            block = fh.read()
    except OSError:
        return 0
    start, end = span
    needle = f"{_RUN_TAG_VAR}={_TAG_PLACEHOLDER}".encode()
    offset = block.find(needle)
    if offset < 0 or start + offset + len(needle) > end:
        return 0
    return start + offset + len(needle) - len(_TAG_PLACEHOLDER)


_TAG_ADDRESS = _find_tag_placeholder()
"""Where each child writes its run tag (0: nowhere, the block has no placeholder)."""


def _write_tag_into_environ_block(tag: str) -> None:
    """Make ``/proc/<pid>/environ`` carry this run's tag, as a fresh interpreter's would:
    overwrite the placeholder in place (our copy-on-write copy of the server's stack), so
    that what the script leaves outside its group, forked without ``exec``, is found by the
    run's tag."""
    if _TAG_ADDRESS and len(tag) == len(_TAG_PLACEHOLDER):
        ctypes.memmove(_TAG_ADDRESS, tag.encode(), len(tag))


def _take_environment(env: "dict[str, str]") -> None:
    """Make ``os.environ`` (and the C ``environ`` children inherit) ``env``, in its order.

    A cold start builds both from the block it was given, in that order. When the names are
    the server's, in the same order (the usual case: a script's environment is the server's
    with its own run tag), only the values that differ are set: ``clear`` and ``update``
    would ``unsetenv`` and ``putenv`` every variable, a third of a script's set-up."""
    if list(os.environ) == list(env):
        for key, value in env.items():
            if os.environ[key] != value:
                os.environ[key] = value
        return
    os.environ.clear()
    os.environ.update(env)


def _write_command_line(argv: "list[str]") -> None:
    """Make ``/proc/<pid>/cmdline`` read ``argv`` (cut to fit), not the server's command:
    what ``ps`` shows, and what names a process the script leaves running."""
    span = _block_span(45)  # arg_start, arg_end: fields 48 and 49
    if span is None:
        return
    start, end = span
    room = end - start - 1  # the block's last byte stays NUL: the kernel reads up to it
    if room <= 0:
        return
    text = "\0".join(argv).encode(errors="surrogateescape")[:room]
    ctypes.memmove(start, text.ljust(room + 1, b"\0"), room + 1)


def _sys_path(request: dict[str, object]) -> list[str]:
    """``sys.path`` as a cold start computes it: the script's real folder (the cwd for
    ``-m``), then PYTHONPATH entries made absolute, then the interpreter's own entries."""
    target = str(request["target"])
    first = os.getcwd() if request["module"] else os.path.dirname(os.path.realpath(target))
    rest: list[str] = []
    pythonpath = os.environ.get("PYTHONPATH", "")
    entries = pythonpath.split(os.pathsep) if pythonpath else []
    for entry in [*entries, *_BASE_PATH]:
        absolute = os.path.abspath(entry)
        if absolute not in rest:
            rest.append(absolute)
    return [first, *rest]


def _finish(code: int, by_signal: int = 0) -> "NoReturn":
    """Leave as ``Py_FinalizeEx`` would: join threads, atexit callbacks, flush the streams;
    then exit with ``code`` (0-255), or end by the signal ``by_signal`` when it is set."""
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            if code == 0:
                code = 120  # what CPython exits with when flushing stdout fails
    if by_signal:
        # CPython's exit_sigint: after finalizing, end by the signal itself, so that the
        # parent (a shell, a runner) sees the interrupt; 130 only if that fails.
        signal.signal(by_signal, signal.SIG_DFL)
        os.kill(os.getpid(), by_signal)
    os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    """CPython's ``handle_system_exit``: ``None`` is 0; an int (``True`` and ``False`` too)
    goes through a C ``long``, which makes one out of its range -1, and ``exit()`` keeps
    the low 8 bits; anything else is printed to stderr, and is 1."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        fits_long = -(1 << (_LONG_BITS - 1)) <= code < 1 << (_LONG_BITS - 1)
        if not fits_long:
            _say_what_cpython_says_on_overflow(code)
        return (code if fits_long else -1) & 0xFF
    with contextlib.suppress(BaseException):
        print(code, file=sys.stderr)
    return 1


def _say_what_cpython_says_on_overflow(code: int) -> None:
    """Write to stderr what this interpreter prints when a script exits with a code beyond a C
    ``long``. That differs by release (nothing in 3.11, an ``OverflowError`` line in 3.12, an
    "Exception ignored" report in 3.13.0), so the interpreter is asked, with the same code,
    instead of keeping a table of releases: rare enough to pay for one more start."""
    import subprocess  # only here, as the script ends: nothing it ran could see it

    with contextlib.suppress(BaseException):
        said = subprocess.run(
            [sys.executable, "-I", "-S", "-c", f"import sys; sys.exit({code})"],
            capture_output=True,
            timeout=30,
            check=False,
        ).stderr
        sys.stderr.write(said.decode(errors="replace"))


def _report(exc: BaseException, target: str, module: bool) -> None:
    """The traceback a cold start prints: from the script's frame (or runpy's, for ``-m``)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if module and code.co_name == "_run_module_as_main":
            break
        if not module and code.co_filename == target and code.co_name == "<module>":
            break
        tb = tb.tb_next
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def _run_path(target: str) -> None:
    """What ``python script.py`` does: a fresh ``__main__`` module runs the file's code."""
    main = type(sys)("__main__")
    main.__dict__.update(
        __file__=target,
        __cached__=None,
        __builtins__=builtins,
        __loader__=_SOURCE_LOADER("__main__", target),
    )
    sys.modules["__main__"] = main
    with open(target, "rb") as fh:
        source = fh.read()
    code = compile(source, target, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _become(request: dict[str, object], fds: list[int], sync_write: int) -> None:
    """In the forked child: turn into the script's own fresh-looking interpreter and run it."""
    os.setsid()
    try:
        os.chdir(str(request["cwd"]))
    except OSError as exc:
        os.write(sync_write, f"cannot enter {request['cwd']}: {exc}".encode())
        os._exit(127)
    os.close(sync_write)  # the server now knows the group exists: killpg works from here on
    for target_fd, fd in enumerate(fds[:3]):
        os.dup2(fd, target_fd)
    record_fd = -1
    if len(fds) > 4:  # the run's record file: kept where the hook wants it
        record_fd = os.dup2(fds[4], _RECORDER["RECORD_FD"], inheritable=False)
    _close_other_fds(record_fd)
    try:
        module, target = _prepare(request)
    except BaseException as exc:  # say why on the script's stderr, as a cold start would
        sys.excepthook(type(exc), exc, exc.__traceback__)
        _finish(1)
    if record_fd >= 0:  # last: what made this process look fresh is not the script's doing
        _RECORDER["install"](record_fd)
        for file in _PRELOADED_FILES:
            sys.audit("open", file, "r", os.O_RDONLY)
    _run(module, target)


def _prepare(request: dict[str, object]) -> tuple[bool, str]:
    """Signals, environment, limits, argv, path, modules and seeds as a cold start has them."""
    for number, handler in _SIGNALS_AT_START.items():
        try:
            if signal.getsignal(number) is not handler:
                signal.signal(number, handler)
        except (OSError, ValueError, TypeError):
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, ())

    env = request["env"]
    assert isinstance(env, dict)
    _take_environment(env)
    # The time module read TZ when the server started; a fresh interpreter reads the
    # script's. (Scripts that import it later read it themselves.)
    time = sys.modules.get("time")
    if time is not None:
        time.tzset()
    _write_tag_into_environ_block(str(env.get(_RUN_TAG_VAR, "")))
    limit = request["memory"]
    if isinstance(limit, int):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    module = bool(request["module"])
    target = str(request["target"])
    args = [str(a) for a in request["args"]]  # type: ignore[attr-defined]
    sys.argv[:] = [target if not module else "-m", *args]
    sys.orig_argv[:] = [sys.executable, *(["-m"] if module else []), target, *args]
    _write_command_line(sys.orig_argv)
    sys.path[:] = _sys_path(request)
    for finder in list(sys.path_importer_cache.values()):
        if finder is not None and hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()
    keep = _KEEP_FOR_MODULE if module else _KEEP
    for name in [n for n in sys.modules if n not in keep or n == "__main__"]:
        del sys.modules[name]
    # The fork duplicated the generators' state: draw fresh seeds, as a new process would.
    random = sys.modules.get("random")
    if random is not None:
        random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    return module, target


def _run(module: bool, target: str) -> None:
    """Run the script as ``__main__`` and leave with CPython's exit code for how it ended."""
    code = 0
    try:
        if module:
            main = type(sys)("__main__")
            main.__dict__["__builtins__"] = builtins
            sys.modules["__main__"] = main  # runpy runs the module in __main__'s namespace
            runpy._run_module_as_main(target)  # type: ignore[attr-defined]
        else:
            _run_path(target)
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt as exc:
        _report(exc, target, module)
        _finish(130, by_signal=signal.SIGINT)
    except BaseException as exc:
        _report(exc, target, module)
        code = 1
    _finish(code)


# -- 4. the server loop -------------------------------------------------------------------------


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.children: dict[int, int] = {}  # pid -> exit report write end
        self.pidfds: dict[int, int] = {}  # pidfd -> pid
        self.use_pidfd = hasattr(os, "pidfd_open")

    def serve(self) -> None:
        while True:
            timeout = None if self.use_pidfd or not self.children else 20
            for fd, _ in self.poller.poll(timeout):
                if fd == self.sock.fileno():
                    if not self.handle_request():
                        self.shutdown()
                        return
                else:
                    self.reap(self.pidfds[fd])
            if not self.use_pidfd:
                self.reap_any()

    def handle_request(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 5)
        except ConnectionError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            request = marshal.loads(data)
            reply = self.spawn(request, fds)
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        finally:
            for fd in fds[:3]:
                os.close(fd)
        try:
            _send(self.sock, reply)
        except OSError:
            return False
        return True

    def spawn(self, request: dict[str, object], fds: list[int]) -> tuple[str, str | int]:
        if len(fds) not in (4, 5):
            for fd in fds[3:]:
                os.close(fd)
            return ("error", f"expected 4 or 5 descriptors, got {len(fds)}")
        exit_write, record = fds[3], fds[4:]  # record: the run's record file, if it asked
        if record:
            _load_recorder()
        sync_read, sync_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (exit_write, sync_read, sync_write, *record):
                os.close(fd)
            raise
        if pid == 0:  # the child: never returns
            try:
                os.close(sync_read)
                _become(request, fds, sync_write)
            finally:
                os._exit(127)
        os.close(sync_write)
        for fd in record:  # the child has its copy
            os.close(fd)
        problem = b""
        while True:  # EOF once the child leads its session (or an error first)
            chunk = os.read(sync_read, 4096)
            if not chunk:
                break
            problem += chunk
        os.close(sync_read)
        self.track(pid, exit_write)
        if problem:
            return ("error", problem.decode(errors="replace"))
        return ("ok", pid)

    def track(self, pid: int, exit_write: int) -> None:
        self.children[pid] = exit_write
        if self.use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                self.use_pidfd = False
            else:
                self.pidfds[pidfd] = pid
                self.poller.register(pidfd, select.POLLIN)
                return
        self.reap_any()

    def reap(self, pid: int) -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return
        self.report(pid, os.waitstatus_to_exitcode(status))

    def reap_any(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                self.report(pid, os.waitstatus_to_exitcode(status))

    def report(self, pid: int, code: int) -> None:
        exit_write = self.children.pop(pid)
        for pidfd, owner in list(self.pidfds.items()):
            if owner == pid:
                self.poller.unregister(pidfd)
                os.close(pidfd)
                del self.pidfds[pidfd]
        with contextlib.suppress(OSError):  # the launcher gave up on this script
            os.write(exit_write, f"{code}\n".encode())
        os.close(exit_write)

    def shutdown(self) -> None:
        """The launcher is gone: leave nothing running behind it."""
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for pid in list(self.children):
            self.reap(pid)


def _main() -> None:
    sock = socket.socket(fileno=_SOCKET_FD)
    if _preload_error:
        _send(sock, ("error", _preload_error))
        return
    # The compiler's first use sets up what every later compile shares: done here, once,
    # instead of in every child, where it cost a tiny script a millisecond (a third of its
    # CPU). A cold start compiles its script too, so nothing here is a script can notice.
    compile("print('warm')\n", "<warm>", "exec", dont_inherit=True)
    _send(sock, ("ready", os.getpid()))
    _Server(sock).serve()


_main()
