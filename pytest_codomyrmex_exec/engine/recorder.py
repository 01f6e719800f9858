"""What a script's own process read, imported, wrote and ran: the launcher's side of it.

For a spec with ``record=True`` the run gets a nameless file opened for appending
(:func:`open_record`); its descriptor goes to the script's process, where an audit hook
(``_record_site/sitecustomize.py``) appends each path once, as it is first seen. A cold
start finds the hook as ``sitecustomize`` (:func:`cold_environment`); the warm-start server
installs it in each forked child. Once the script has ended, :func:`read_record` turns the
file into a :class:`~.results.ScriptRecord`: what was written before a ``SIGKILL`` or an
``os._exit`` is there too, since nothing waits for the script to end cleanly.

Imports from a site-packages folder become distributions (name and version, looked up here
from the folder's ``*.dist-info``, once per folder while it is unchanged); the interpreter's
own library is summed up by the interpreter and its version.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import os
import py_compile
import tempfile
import uuid
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from ._record_site.sitecustomize import PATH_LIMIT, PRIOR_LIMIT, RECORD_VAR, fingerprint
from .results import ScriptRecord

HOOK_DIR = str(Path(__file__).with_name("_record_site"))
"""The folder a cold start puts first on the script's ``PYTHONPATH``: it holds the hook."""
HOOK_SOURCE = os.path.join(HOOK_DIR, "sitecustomize.py")
"""The hook's source, which the warm-start server compiles."""

_READ_CHUNK = 1 << 20


def open_record() -> int:
    """A new file for one run's record, open read-write for appending, with no name: it is
    gone however the run ends, our process included. In memory where the system allows
    (``memfd_create``: a tenth of the cost of a file made and unlinked in the temporary
    folder)."""
    if hasattr(os, "memfd_create"):
        with suppress(OSError):  # a kernel without it: the temporary folder
            fd = os.memfd_create("codomyrmex-record", os.MFD_CLOEXEC)
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
            return fd
    path = os.path.join(tempfile.gettempdir(), f"codomyrmex-record-{uuid.uuid4().hex}")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    os.unlink(path)
    return fd


def cold_environment(env: Mapping[str, str], fd: int) -> dict[str, str]:
    """``env`` with the hook's folder first on ``PYTHONPATH`` and the descriptor named; the
    hook restores ``PYTHONPATH`` and removes the variable before the script starts."""
    _refresh_hook_bytecode()
    changed = dict(env)
    previous = env.get("PYTHONPATH")
    changed[RECORD_VAR] = f"{fd}:" + ("" if previous is None else f"={previous}")
    changed["PYTHONPATH"] = HOOK_DIR if not previous else HOOK_DIR + os.pathsep + previous
    return changed


@functools.cache
def _refresh_hook_bytecode() -> None:
    """Write the hook's cached bytecode when it is missing or stale, once per process.

    Every recorded cold start imports the hook; compiling it there instead costs each script
    about a millisecond, and ``PYTHONDONTWRITEBYTECODE`` (common in CI) means the scripts
    never write the cache themselves. An unwritable install is left as it is."""
    cached = importlib.util.cache_from_source(HOOK_SOURCE)
    try:
        source = os.stat(HOOK_SOURCE)
        with open(cached, "rb") as fh:
            header = fh.read(16)
        fresh = header == (
            importlib.util.MAGIC_NUMBER
            + bytes(4)  # flags: a timestamp-checked cache, as the import system writes
            + (int(source.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
            + (source.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        )
    except OSError:
        fresh = False
    if not fresh:
        with suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(
                HOOK_SOURCE,
                cfile=cached,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
            )


def read_record(fd: int, script: str, interpreter: str) -> ScriptRecord:
    """The record the script's process (and any process it forked) wrote into ``fd``.

    ``script`` is always among the reads; ``interpreter`` names the interpreter when the hook
    never started (then ``unseen`` says so)."""
    data = _read_all(fd)
    reads = {os.path.abspath(script)}
    writes: set[str] = set()
    priors: dict[str, str] = {}
    unseen: list[str] = []
    distributions: dict[str, str] = {}
    seen_interpreter: str | None = None
    count = 0
    for entry in data.split(b"\0"):
        if not entry:
            continue
        kind, text = entry[:1], os.fsdecode(entry[1:])
        count += 1
        if count > PATH_LIMIT:  # a forked child writes its own PATH_LIMIT: keep the cap
            kind, text = b"T", str(PATH_LIMIT)
        if kind == b"R":
            reads.add(text)
        elif kind == b"W":
            writes.add(text)
        elif kind == b"P":
            size, digest, path = text.split(":", 2)
            priors.setdefault(path, f"{size}:{digest}")
        elif kind == b"D":
            found = distributions_of(text)
            if found:
                distributions.update(found)
            else:  # a module dropped into site-packages by hand: a file like any other
                reads.add(text)
        elif kind == b"U":
            if text not in unseen:
                unseen.append(text)
        elif kind == b"I":
            seen_interpreter = seen_interpreter or text
        elif kind == b"T":
            unseen.append(f"more than {text} paths: the rest were not recorded")
            break
    if seen_interpreter is None:
        unseen.append("the recorder did not start in the script's process")
    return ScriptRecord(
        reads=sorted(reads),
        writes=sorted(
            path
            for path in writes
            if not _is_cached_bytecode(path) and not _as_it_was(path, priors.get(path))
        ),
        distributions=dict(sorted(distributions.items())),
        interpreter=seen_interpreter or interpreter,
        unseen=unseen,
    )


def _is_cached_bytecode(path: str) -> bool:
    """Is ``path`` bytecode the import system caches (``__pycache__/x.cpython-312.pyc``, or
    the temporary file it renames onto that)? The interpreter writes it, not the script, and
    only where ``PYTHONDONTWRITEBYTECODE`` is unset: a record must not depend on that."""
    folder, name = os.path.split(path)
    return os.path.basename(folder) == "__pycache__" and ".pyc" in name


def _as_it_was(path: str, prior: str | None) -> bool:
    """Does ``path`` hold what it held before the script first wrote it (``prior``: its
    ``size:fingerprint`` then)? A demo that regenerates its diagram unchanged wrote nothing
    that ``git status`` would show."""
    if prior is None:
        return False
    try:
        with open(path, "rb") as fh:
            now = fh.read(PRIOR_LIMIT + 1)
    except OSError:
        return False
    return len(now) <= PRIOR_LIMIT and f"{len(now)}:{fingerprint(now)}" == prior


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, _READ_CHUNK, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def distributions_of(entry: str) -> dict[str, str]:
    """The distributions (name to version) that installed ``entry``, a top-level file or
    folder of a site-packages folder (several when a namespace package is shared)."""
    site, top = os.path.split(entry)
    try:
        stamp = os.stat(site).st_mtime_ns  # an install or upgrade changes the folder
    except OSError:
        return {}
    return dict(_site_index(site, stamp).get(top, ()))


@functools.lru_cache(maxsize=16)
def _site_index(site: str, stamp: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each top-level entry of ``site`` and the distributions that installed it.

    Read from each ``*.dist-info`` folder's ``RECORD`` and the head of its ``METADATA``:
    ``importlib.metadata`` parses each whole ``METADATA`` as mail, which took 200 ms for a
    hundred distributions, once per process and folder."""
    del stamp  # part of the cache key only
    index: dict[str, list[tuple[str, str]]] = {}
    try:
        entries = [entry.path for entry in os.scandir(site) if entry.name.endswith(".dist-info")]
    except OSError:
        return {}
    for folder in entries:
        owner = _name_and_version(folder)
        if owner is None:
            continue
        for top in {os.path.basename(folder), *_top_level_entries(folder)}:
            index.setdefault(top, []).append(owner)
    return {top: tuple(owners) for top, owners in index.items()}


def _name_and_version(dist_info: str) -> tuple[str, str] | None:
    """``Name`` and ``Version`` from the head of a ``METADATA`` file."""
    found: dict[str, str] = {}
    try:
        with open(os.path.join(dist_info, "METADATA"), encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("Name", "Version"):
                    found[key] = value.strip()
                if len(found) == 2 or not line.strip():  # the headers end at a blank line
                    break
    except (OSError, UnicodeDecodeError):
        return None
    if len(found) != 2:
        return None
    return found["Name"], found["Version"]


def _top_level_entries(dist_info: str) -> set[str]:
    """The site folder's entries a distribution installed: the first part of each path in
    its ``RECORD`` (or, without one, the names in its ``top_level.txt``)."""
    try:
        with open(os.path.join(dist_info, "RECORD"), encoding="utf-8") as fh:
            return {line.split(",", 1)[0].split("/", 1)[0] for line in fh if line.strip()}
    except (OSError, UnicodeDecodeError):
        pass
    try:
        with open(os.path.join(dist_info, "top_level.txt"), encoding="utf-8") as fh:
            names = {line.strip() for line in fh if line.strip()}
    except (OSError, UnicodeDecodeError):
        return set()
    return names | {f"{name}.py" for name in names}
