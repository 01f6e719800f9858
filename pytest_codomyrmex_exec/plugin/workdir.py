"""Where a script runs (``--exec-cwd``): the ``tmp`` folders, and the copies of ``copy``.

``tmp`` folders come from pytest's own ``tmp_path_factory``, under the session's basetemp,
so they are kept and cleaned like ``tmp_path``: the last three sessions' folders are kept
(``tmp_path_retention_count``), and with ``tmp_path_retention_policy = failed`` the folder of a
script that passed is removed when its report is made (``none``: pytest removes them all).

``copy`` runs each script from a fresh copy of its own folder, made when its run is handed to
the engine (inline: as it starts; in parallel: as the run starts; a rerun gets a fresh one)
and removed when its report is made; what is left (scripts never reported after ``-x`` or
Ctrl-C) goes with the session's folder of copies at the end. The item's settings keep the
real paths, so output checks and hooks see what they would without the copy; the run gets a
spec whose script is in the copy, and its result is mapped back.

What goes into a copy, breadth first from the script's folder, smaller files first:

* regular files are *copied* (``copy_file_range``: a reflink on filesystems that share blocks,
  an in-kernel copy elsewhere), never hard-linked: a hard link shares the inode, so a script
  that rewrites a neighbour in place (``open(name, "w")``, as pyparsing's examples do with
  their ``.html`` diagrams) would rewrite the original too;
* within a budget of :data:`COPY_FILES` entries and :data:`COPY_BYTES` bytes: 10-20 ms for
  pyparsing's examples on a loaded 2-core machine, under a tenth of the 250 ms one of its
  scripts takes (docs/existing-repositories.md has the numbers). Past it, files and folders are
  *symlinked* to the originals: reading them costs nothing, and a write through one reaches
  the real tree, where ``exec_dirty`` reports it like any other write;
* ``__pycache__`` is left out: its ``.pyc`` files do not match the copies' times and would
  only be rewritten.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import final

import pytest

from ..engine.results import ScriptResult
from ..engine.spec import ScriptSpec
from .options import ExecOptions

_TMP_KEY = pytest.StashKey[Path]()
_MAX_NAME = 30  # as tmp_path: long node names make unreadable folders

COPY_FILES = 256
"""Files and folders a copy holds at most; the rest are symlinks to the originals."""
COPY_BYTES = 8 * 1024 * 1024
"""Bytes of file content a copy holds at most; larger neighbours past it are symlinks."""

_WANTS_COPY_KEY = pytest.StashKey[bool]()
"""In ``item.stash``: ``--exec-cwd copy`` applies to the script (no exec(cwd=...) mark)."""
_COPY_KEY = pytest.StashKey["_Copy"]()
"""In ``item.stash``: the script's real folder and its current copy."""
_COPIES_KEY = pytest.StashKey["_Copies"]()
"""In ``config.stash``: the session's folder of copies, removed when the session ends."""
_REMOVAL_WAIT = 30.0
"""Seconds the session's end waits for the copies still being removed."""


def _factory(config: pytest.Config) -> pytest.TempPathFactory | None:
    # The tmp_path fixture's own factory, set by pytest's tmpdir plugin at configure time.
    factory = getattr(config, "_tmp_path_factory", None)
    return factory if isinstance(factory, pytest.TempPathFactory) else None


def work_folder(item: pytest.Item, options: ExecOptions) -> Path | None:
    """The folder the script runs in by ``--exec-cwd``; ``None`` for its own folder (with
    ``copy``, its own folder as the spec says: :func:`spec_for_run` moves the run)."""
    if options.cwd == "rootdir":
        return item.config.rootpath
    if options.cwd == "copy":
        item.stash[_WANTS_COPY_KEY] = True
        return None
    if options.cwd != "tmp":
        return None
    folder = item.stash.get(_TMP_KEY, None)
    if folder is None:
        name = re.sub(r"[\W]", "_", item.name)[:_MAX_NAME]
        factory = _factory(item.config)
        if factory is not None:
            folder = factory.mktemp(name, numbered=True)
        else:  # -p no:tmpdir: a plain temporary folder, left for the OS to clean
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        item.stash[_TMP_KEY] = folder
    return folder


def release_work_folder(item: pytest.Item, passed: bool) -> None:
    """Remove the script's copy, and a passed script's ``tmp`` folder when the retention
    policy says so."""
    _remove_copy(item)
    folder = item.stash.get(_TMP_KEY, None)
    if folder is None or not passed:
        return
    try:
        policy = item.config.getini("tmp_path_retention_policy")
    except ValueError:
        return
    if policy in ("failed", "none"):
        shutil.rmtree(folder, ignore_errors=True)


# -- --exec-cwd copy -------------------------------------------------------------------------


def spec_for_run(item: pytest.Item, spec: ScriptSpec) -> ScriptSpec:
    """The spec to run: ``spec`` itself, or with ``--exec-cwd copy`` the same script in a
    fresh copy of its folder (its working folder, ``__file__`` and ``sys.path[0]``).

    Scripts run as modules (``as_module``, ``module``) run in place: their package reaches
    above their folder, and a copy of the folder alone would not import.
    """
    if not item.stash.get(_WANTS_COPY_KEY, False) or spec.as_module or spec.module:
        return spec
    _remove_copy(item)  # a rerun starts from a clean copy, not the last attempt's
    script = Path(spec.script)
    copy = copy_folder(script.parent, _copies(item.config).folder)
    item.stash[_COPY_KEY] = _Copy(str(script.parent), str(copy), os.path.realpath(copy))
    return spec.replace(script=str(copy / script.name))


def copy_folder(source: Path, into: Path) -> Path:
    """A copy of ``source`` (same name) in a new folder under ``into``, as the module says."""
    copy = Path(tempfile.mkdtemp(dir=into)) / source.name
    copy.mkdir()
    files_left, bytes_left = COPY_FILES, COPY_BYTES
    pending = deque([(source, copy)])
    while pending:
        folder, target = pending.popleft()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=_smaller_files_first)
        except OSError:
            if folder == source:
                raise
            os.rmdir(target)  # a subfolder it cannot list: the original, as it is
            os.symlink(folder, target)
            continue
        for entry in entries:
            if entry.name == "__pycache__":
                continue
            where = os.path.join(target, entry.name)
            if entry.is_symlink():
                os.symlink(_link_target(entry.path, folder), where)
            elif entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                size = info.st_size
                if files_left > 0 and size <= bytes_left and _copied(entry, where, info):
                    files_left, bytes_left = files_left - 1, bytes_left - size
                else:
                    os.symlink(entry.path, where)
            elif entry.is_dir(follow_symlinks=False) and files_left > 0:
                os.mkdir(where)
                files_left -= 1
                pending.append((Path(entry.path), Path(where)))
            else:  # a folder past the budget, a FIFO, a socket: the original
                os.symlink(entry.path, where)
    return copy


def _smaller_files_first(entry: os.DirEntry[str]) -> tuple[int, int, str]:
    # A folder's files before its subfolders (what a script reads most is beside it).
    if entry.is_file(follow_symlinks=False):
        return (0, entry.stat(follow_symlinks=False).st_size, entry.name)
    return (1, 0, entry.name)


def _link_target(link: str, folder: Path) -> str:
    """A symlink's target for the copy: as it is when it stays inside ``folder`` (a link to a
    neighbour then names the neighbour's copy), else the absolute original target."""
    target = os.readlink(link)
    inside = not os.path.isabs(target) and not os.path.normpath(target).startswith("..")
    return target if inside else os.path.realpath(link)


def _copied(entry: os.DirEntry[str], target: str, info: os.stat_result) -> bool:
    """Copy one file; ``False`` if it cannot be (unreadable, a full disk): the caller links
    the original instead, which the script can still read as far as it could before."""
    try:
        _copy_file(entry.path, target, info.st_size, info.st_mode)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        return False
    return True


def _copy_file(source: str, target: str, size: int, mode: int) -> None:
    # Bare descriptors, the mode given at creation: a copy is a few hundred of these, and
    # file objects and a separate chmod cost a third more.
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o7777)
        try:
            _copy_content(src, dst, size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_content(src: int, dst: int, size: int) -> None:
    try:
        # cp --reflink=auto: shared blocks where the filesystem can, a kernel copy elsewhere.
        copied = 0
        while copied < size:
            step = os.copy_file_range(src, dst, size - copied)
            if step == 0:
                return
            copied += step
    except OSError:  # across filesystems on old kernels, or a filesystem without it
        os.lseek(src, 0, os.SEEK_SET)
        os.lseek(dst, 0, os.SEEK_SET)
        os.ftruncate(dst, 0)
        with open(src, "rb", closefd=False) as reading, open(dst, "wb", closefd=False) as writing:
            shutil.copyfileobj(reading, writing)


class _Copies:
    """The session's folder of copies, and the thread that removes them.

    Removing a copy of a few hundred files takes 2 ms on tmpfs but 20-30 ms on a loaded ext4
    (each unlink waits for the journal): in a thread of its own, that wait overlaps the next
    script's run instead of lengthening the run loop.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pytest-exec-copies-"))
        self._doomed: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._remover = threading.Thread(target=self._remove, name="exec-copies", daemon=True)
        self._remover.start()

    def discard(self, folder: Path) -> None:
        self._doomed.put(folder)

    def _remove(self) -> None:
        while (folder := self._doomed.get()) is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove every copy: the thread's queue first, then whatever is left."""
        self._doomed.put(None)
        self._remover.join(_REMOVAL_WAIT)
        shutil.rmtree(self.folder, ignore_errors=True)


def _copies(config: pytest.Config) -> _Copies:
    """The session's copies, made on first use; removed when the session ends, on an
    interrupt too (pytest runs its cleanups then)."""
    copies = config.stash.get(_COPIES_KEY, None)
    if copies is None:
        copies = config.stash[_COPIES_KEY] = _Copies()
        config.add_cleanup(copies.close)
    return copies


@final
@dataclass(frozen=True, slots=True)
class _Copy:
    """A script's real folder and the copy it runs in, resolved once: --exec-live names the
    real folder in every line the script prints."""

    real: str
    copy: str
    resolved: str
    """The copy's real path, as a script that resolves its own paths prints it."""

    def in_real_terms(self, text: str) -> str:
        text = text.replace(self.copy, self.real)
        return text if self.resolved == self.copy else text.replace(self.resolved, self.real)


def _remove_copy(item: pytest.Item) -> None:
    copy = item.stash.get(_COPY_KEY, None)
    if copy is not None:
        del item.stash[_COPY_KEY]
        item.config.stash[_COPIES_KEY].discard(Path(copy.copy).parent)


def real_terms(item: pytest.Item) -> Callable[[str], str] | None:
    """What turns text that names the copy of ``item``'s folder into text that names the
    real folder; ``None`` when the script runs where it is."""
    copy = item.stash.get(_COPY_KEY, None)
    return None if copy is None else copy.in_real_terms


def restore_paths(item: pytest.Item, result: ScriptResult) -> ScriptResult:
    """``result`` in the script's real terms: the copy's folder named as the real folder in
    its path, output and error; writes that stayed in the copy dropped (they went with it)."""
    copy = item.stash.get(_COPY_KEY, None)
    if copy is None:
        return result
    terms, resolved_copy = copy.in_real_terms, copy.resolved

    restored = result.copy()
    for key in ("script", "stdout", "stderr"):
        restored[key] = terms(result[key])
    if result["error"] is not None:
        restored["error"] = terms(result["error"])
    record = result["record"]
    if record is not None:
        restored["record"] = {
            **record,
            "reads": [terms(path) for path in record["reads"]],
            "writes": [
                terms(where)
                for where in map(os.path.realpath, record["writes"])
                if not where.startswith(resolved_copy + os.sep)
            ],
        }
    return restored
