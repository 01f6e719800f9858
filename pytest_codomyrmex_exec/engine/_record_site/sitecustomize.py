"""The recorder inside a script's own process: an audit hook that writes each path once.

Not imported by the engine. A cold start finds this file as ``sitecustomize`` on the
script's ``PYTHONPATH`` (``site`` imports it before the script's first line, and CPython's
own ``main`` then runs the script, so tracebacks, exit codes and ``sys.argv`` are the
interpreter's own); the warm-start server compiles it and calls :func:`install` in each
forked child. Either way it removes its traces (the variable, the path entry, the module)
and leaves only the hook. Stdlib start-up modules only (``os``, ``sys``): a script must not
find anything else loaded. A script may run on another interpreter than ours (``python``):
annotations are strings, so that this file loads on any Python 3 (before 3.8, which has
no audit hooks, it only removes itself).

Each new path is one ``os.write`` of ``kind + path + NUL`` to a descriptor the launcher owns
(a nameless file opened with ``O_APPEND``): what was written survives ``SIGKILL`` and
``os._exit``, and a forked child of the script appends to the same file. Kinds:
``I`` interpreter, ``R`` read, ``W`` written, ``P`` a written file's prior
``size:fingerprint:path``, ``D`` a top-level entry of a site-packages
folder that was imported or read, ``U`` something not followed, ``T`` truncated.
"""

import os
import stat  # imported by os at start-up: nothing new for the script to find
import sys

RECORD_VAR = "CODOMYRMEX_EXEC_RECORD"
"""``<fd>:<PYTHONPATH as it was, or nothing>`` for a cold start; removed once read."""
RECORD_FD = 1023
"""Where the descriptor is moved: far from the low numbers the script's own ``open()`` gets."""
PATH_LIMIT = 20000
"""Paths written at most; then one ``T`` record, and nothing more."""

PRIOR_LIMIT = 1 << 20
"""Files at most this large get a fingerprint before their first write (``P``): a file
rewritten with the content it had is then no write. 2 ms for 300 KB, 0.2 s for 16 MB."""
_FINGERPRINT_MODULUS = (1 << 61) - 1

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_PYTHON_NAMES = ("python", "pypy")
_SPAWNING_MODULES = {
    "multiprocessing.popen_spawn_posix": "spawn",
    "multiprocessing.popen_forkserver": "forkserver",
}
"""What multiprocessing imports before it starts interpreters the way no audit event shows
(``_posixsubprocess.fork_exec``): the import is the only sign."""
_SYSTEM = ("/dev/", "/proc/", "/sys/")
"""Not files a script's result can depend on as data (``/dev/null``, its own ``/proc``)."""


class _Recorder:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.identity = _identity(fd)
        self.seen: set[object] = set()
        self.count = 0
        self.reading_prior = False
        self.sites, self.prefixes = interpreter_folders()
        self.handlers = {
            "open": self.opened,
            "import": self.imported,
            "os.rename": self.renamed,
            "os.remove": self.removed,
            "os.truncate": self.removed,
            "os.link": self.linked,
            "os.symlink": self.linked,
            "subprocess.Popen": self.popen,
            "os.exec": self.executed,
            "os.posix_spawn": self.executed,
            "os.spawn": self.spawned,
            "os.system": self.system,
            "sqlite3.connect": self.database,
            "ctypes.dlopen": self.library,
        }
        version = sys.version_info
        self.emit(b"I", f"{sys.executable} {version.major}.{version.minor}.{version.micro}")

    def hook(self, event: str, args: "tuple[object, ...]") -> None:
        handler = self.handlers.get(event)
        if handler is None or self.fd < 0 or self.reading_prior:
            return  # the hook's own read of a file's prior content is not the script's
        # Not contextlib.suppress: contextlib is no start-up import, the script must not
        # find it loaded. An error here is never the script's: this path goes unrecorded.
        try:  # noqa: SIM105
            handler(args)
        except Exception:
            pass

    # -- events ------------------------------------------------------------------------

    def opened(self, args: "tuple[object, ...]") -> None:
        path, mode, flags = args
        if isinstance(flags, int):
            writing = bool(flags & _WRITE_FLAGS)
        else:
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writing:
            self.written(path)
        else:
            self.read(path)

    def imported(self, args: "tuple[object, ...]") -> None:
        if isinstance(args[1], str):  # an extension module's file: no "open" for dlopen
            self.read(args[1])
        elif args[0] in _SPAWNING_MODULES:
            method = _SPAWNING_MODULES[str(args[0])]
            self.emit(
                b"U", f"started Python processes with multiprocessing ({method}): not followed"
            )

    def renamed(self, args: "tuple[object, ...]") -> None:
        self.path(b"W", args[0])
        self.written(args[1])  # an atomic rewrite (a temporary file renamed onto it)

    def removed(self, args: "tuple[object, ...]") -> None:
        self.path(b"W", args[0])

    def linked(self, args: "tuple[object, ...]") -> None:
        self.path(b"W", args[1])

    def popen(self, args: "tuple[object, ...]") -> None:
        executable, argv, cwd, env = args
        words = list(argv) if isinstance(argv, (list, tuple)) else [argv]
        self.ran(executable if executable is not None else words[0], words[1:], cwd, env)

    def executed(self, args: "tuple[object, ...]") -> None:
        path, argv, env = args[:3]
        words = list(argv) if isinstance(argv, (list, tuple)) else []
        self.ran(path, words[1:], None, env)

    def spawned(self, args: "tuple[object, ...]") -> None:
        _, path, argv, env = args[:4]
        words = list(argv) if isinstance(argv, (list, tuple)) else []
        self.ran(path, words[1:], None, env)

    def database(self, args: "tuple[object, ...]") -> None:
        if args[0] in (":memory:", b":memory:", ""):  # in memory, or a temporary file
            return
        absolute = self.absolute(args[0])
        if absolute is not None:
            self.read(absolute)
            self.emit(b"U", f"opened the SQLite database {absolute}: its writes are not seen")

    def library(self, args: "tuple[object, ...]") -> None:
        if isinstance(args[0], (str, bytes)) and os.sep in _text(args[0]):
            self.read(args[0])  # a bare name is the system's library search, not a file

    def system(self, args: "tuple[object, ...]") -> None:
        self.emit(b"U", f"ran a shell command {_text(args[0])!r}: not followed")

    # -- paths -------------------------------------------------------------------------

    def read(self, path: object) -> None:
        """A file read or imported: under a site folder it is its distribution's, under the
        interpreter's prefixes the interpreter's (its version stands for it), else a read."""
        absolute = self.absolute(path)
        if absolute is None:
            return
        absolute = _source_of(absolute)
        for site in self.sites:
            if absolute.startswith(site):
                top = absolute[len(site) :].split(os.sep, 1)[0]
                if top == "__pycache__":  # a top-level module's cached code: the module
                    top = os.path.basename(absolute).split(".", 1)[0] + ".py"
                self.emit(b"D", site + top)
                return
        if absolute.startswith(self.prefixes) or absolute.startswith(_SYSTEM):
            return
        self.emit(b"R", absolute)

    def written(self, path: object) -> None:
        """A file about to be written: first its prior size and fingerprint, if it has one
        (the audit event comes before the file is opened or replaced), then the write."""
        absolute = self.absolute(path)
        if absolute is None or absolute.startswith(_SYSTEM) or (b"W", absolute) in self.seen:
            return
        prior = None  # none yet, too large, or not readable: a write like any other
        try:
            info = os.stat(absolute)
        except OSError:
            info = None
        # A regular file only: opening a FIFO to read it would wait for the very writer
        # that is waiting on this hook.
        if info is not None and stat.S_ISREG(info.st_mode) and info.st_size <= PRIOR_LIMIT:
            self.reading_prior = True
            try:
                with open(absolute, "rb") as fh:
                    prior = fh.read(PRIOR_LIMIT + 1)
            except OSError:
                pass
            finally:
                self.reading_prior = False
        if prior is not None and len(prior) <= PRIOR_LIMIT:
            self.emit(b"P", f"{len(prior)}:{fingerprint(prior)}:{absolute}")
        self.emit(b"W", absolute)

    def path(self, kind: bytes, path: object) -> None:
        absolute = self.absolute(path)
        if absolute is not None and not absolute.startswith(_SYSTEM):
            self.emit(kind, absolute)

    def absolute(self, path: object) -> "str | None":
        if isinstance(path, int) or path is None:
            return None  # a descriptor: its file was recorded when it was opened
        text = _text(path)
        if not text or text.startswith("<"):  # "<string>", "<unknown>": no file
            return None
        return os.path.normpath(text if os.path.isabs(text) else os.path.join(os.getcwd(), text))

    def ran(self, program: object, args: "list[object]", cwd: object, env: object) -> None:
        where = _program_path(_text(program), cwd, env)
        command = " ".join([where, *(_text(a) for a in args)])
        if len(command) > 300:
            command = command[:297] + "..."
        name = os.path.basename(where)
        kind = "" if name.startswith(_PYTHON_NAMES) else " (not Python)"
        self.emit(b"U", f"ran {command}: not followed{kind}")

    def emit(self, kind: bytes, text: str) -> None:
        key = (kind, text)
        if key in self.seen:
            return
        self.seen.add(key)
        self.count += 1
        if self.count > PATH_LIMIT:
            self.write(b"T" + str(PATH_LIMIT).encode() + b"\0")
            self.fd = -1
            return
        self.write(kind + os.fsencode(text) + b"\0")

    def write(self, data: bytes) -> None:
        # The script may have closed our descriptor and opened a file of its own at that
        # number: check that it is still our file before writing into it.
        if _identity(self.fd) != self.identity:
            self.fd = -1
            return
        os.write(self.fd, data)


def fingerprint(data: bytes) -> int:
    """The content as a number modulo a Mersenne prime: C speed with no import (``hashlib``
    and ``zlib`` are no start-up modules), and the launcher recomputes it the same way."""
    return int.from_bytes(data, "little") % _FINGERPRINT_MODULUS


def _identity(fd: int) -> "tuple[int, int] | None":
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return _text(value.__fspath__())
    return str(value)


def _source_of(path: str) -> str:
    """The source of cached code an import read, when that exists:
    ``pkg/__pycache__/mod.cpython-311.pyc`` -> ``pkg/mod.py``, and with a
    ``PYTHONPYCACHEPREFIX`` the cache mirrors the source's folders under the prefix:
    ``PREFIX/src/pkg/mod.cpython-311.pyc`` -> ``/src/pkg/mod.py``. Else ``path``."""
    if not path.endswith(".pyc"):
        return path
    folder, name = os.path.split(path)
    prefix = sys.pycache_prefix
    if prefix and path.startswith(os.path.join(prefix, "")):
        folder = os.sep + os.path.relpath(folder, prefix)
    elif os.path.basename(folder) == "__pycache__":
        folder = os.path.dirname(folder)
    else:
        return path
    source = os.path.join(folder, name.split(".", 1)[0] + ".py")
    return source if os.path.exists(source) else path


def _program_path(program: str, cwd: object, env: object) -> str:
    if os.sep in program:
        base = _text(cwd) if cwd is not None else os.getcwd()
        return os.path.normpath(os.path.join(base, program))
    search = env.get("PATH") if isinstance(env, dict) else None
    for folder in (search or os.environ.get("PATH", os.defpath)).split(os.pathsep):
        candidate = os.path.join(folder, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return program


_FOLDERS: "dict[str, tuple[str, ...]]" = {}


def interpreter_folders() -> "tuple[tuple[str, ...], tuple[str, ...]]":
    """The interpreter's site-packages folders (longest first) and its other prefixes, each
    as written and resolved, with a trailing separator. Computed once: the warm-start server
    asks before it forks, so no script pays for the look-up."""
    if not _FOLDERS:
        found = set()
        site = sys.modules.get("site")
        if site is not None:
            try:
                found.update(site.getsitepackages())
                found.add(site.getusersitepackages())
            except Exception:
                pass
        sites = _both_forms(found)
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        _FOLDERS["sites"] = tuple(sorted(sites, key=len, reverse=True))
        _FOLDERS["prefixes"] = tuple(_both_forms(prefixes) - sites)
    return _FOLDERS["sites"], _FOLDERS["prefixes"]


def _both_forms(folders: "set[str]") -> "set[str]":
    return {
        os.path.join(form, "")
        for folder in folders
        if folder
        for form in (os.path.normpath(folder), os.path.realpath(folder))
    }


def install(fd: int) -> None:
    """Record into ``fd`` (moved to :data:`RECORD_FD`, not inherited by programs run)."""
    if fd != RECORD_FD:
        os.dup2(fd, RECORD_FD, inheritable=False)
        os.close(fd)
    else:
        os.set_inheritable(fd, False)
    sys.addaudithook(_Recorder(RECORD_FD).hook)


def _boot() -> None:
    """Cold start: install from the variable, then leave no trace but the hook."""
    value = os.environ.pop(RECORD_VAR, None)
    here = os.path.dirname(os.path.abspath(__file__))
    if value is not None:
        fd_text, _, pythonpath = value.partition(":")
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath[1:]  # "=<value>": it was set
        else:
            os.environ.pop("PYTHONPATH", None)
        if hasattr(sys, "addaudithook"):  # 3.8 and later
            install(int(fd_text))
        else:  # runs unrecorded, and without the descriptor either
            os.close(int(fd_text))
    sys.path[:] = [p for p in sys.path if p != here]
    sys.path_importer_cache.pop(here, None)
    # Now the sitecustomize this one shadows, if there is one: whatever is in sys.modules
    # when this body ends is what the import keeps. With none, its ImportError leaves this
    # body and is what ``site`` expects: it removes this module and says nothing.
    del sys.modules["sitecustomize"]
    import sitecustomize  # type: ignore[import-not-found]  # noqa: F401


if __name__ == "sitecustomize":
    _boot()
