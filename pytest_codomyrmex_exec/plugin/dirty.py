"""What scripts left in the source tree (ini ``exec_dirty``), from the writes each one's
recorder saw (``ScriptResult["record"]``).

A file is *dirty* when the script created or modified it, it is under the rootdir, and it is
still there when the result comes back: a file created and removed again is not, nor is a
file removed (the tree lost it, but nothing is left to list). Never dirty:

* what lies under pytest's ``--basetemp`` or the system temp folder (unless that folder holds
  the rootdir itself), and so the copies of ``--exec-cwd copy``, whose writes are dropped with
  the copy before the result gets here (a write through a copy's symlink to the real tree is
  mapped to the real file, and is dirty);
* ``__pycache__``: the import system writes ``.pyc`` files on the script's behalf, not the
  script.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ..engine.results import ScriptResult
from .keys import OPTIONS_KEY

LISTED = 10
"""Dirty files named per script in the run summary and in a failure; the rest are counted."""
STREAM_LISTED = 100
"""Dirty files named per script in the results file; ``count`` has them all."""

_DIRTY_KEY = pytest.StashKey[tuple[ScriptResult, list[str]]]()
"""In ``item.stash``: the dirty files of the result they were found for."""
_TREE_KEY = pytest.StashKey[tuple[str, tuple[str, ...]]]()
"""In ``config.stash``: the rootdir's real path and the folders that are no part of it,
resolved once per session rather than for every script's result (each ``realpath`` is a
``lstat`` per folder level)."""


def dirty_files(item: pytest.Item, result: ScriptResult) -> list[str] | None:
    """The files under the rootdir that the script created or modified, relative to the
    rootdir and sorted; ``None`` when its writes were not recorded (``exec_dirty = ignore``,
    or it never started)."""
    record = result["record"]
    if item.config.stash[OPTIONS_KEY].dirty == "ignore" or record is None:
        return None
    found = item.stash.get(_DIRTY_KEY, None)
    if found is not None and found[0] is result:
        return found[1]
    root, elsewhere = _tree(item.config)
    dirty = set()
    for written in record["writes"]:
        path = os.path.realpath(written)
        if (
            path.startswith(root + os.sep)
            and not path.startswith(elsewhere)
            and "__pycache__" not in Path(path).parts
            and os.path.isfile(path)
        ):
            dirty.add(os.path.relpath(path, root))
    listed = sorted(dirty)
    item.stash[_DIRTY_KEY] = (result, listed)
    return listed


def _tree(config: pytest.Config) -> tuple[str, tuple[str, ...]]:
    """The rootdir's real path, and the folders whose files are no part of its tree."""
    tree = config.stash.get(_TREE_KEY, None)
    if tree is None:
        root = os.path.realpath(config.rootpath)
        tree = config.stash[_TREE_KEY] = (root, _not_the_tree(config, root))
    return tree


def _not_the_tree(config: pytest.Config, root: str) -> tuple[str, ...]:
    """Folders (with a trailing separator) whose files are no part of the source tree."""
    places = [tempfile.gettempdir()]
    if config.option.basetemp:
        places.append(str(config.option.basetemp))
    folders = tuple(os.path.join(os.path.realpath(place), "") for place in places)
    # A project checked out in /tmp (or a pytester test) is still a tree to keep clean.
    return tuple(folder for folder in folders if not (root + os.sep).startswith(folder))


def dirty_to_fail(item: pytest.Item, result: ScriptResult) -> list[str]:
    """The dirty files that fail the script's item: all of them with ``exec_dirty = fail``."""
    if item.config.stash[OPTIONS_KEY].dirty != "fail":
        return []
    return dirty_files(item, result) or []


def dirty_facts(item: pytest.Item, result: ScriptResult) -> dict[str, Any] | None:
    """The results file's and the summary's ``dirty``: ``{"count": N, "files": [...]}``
    (the first :data:`STREAM_LISTED`), ``None`` when writes were not recorded."""
    files = dirty_files(item, result)
    if files is None:
        return None
    return {"count": len(files), "files": files[:STREAM_LISTED]}


def named(files: Sequence[str], count: int | None = None) -> str:
    """``a.html, b.txt and 3 more``: the first :data:`LISTED` of ``count`` files."""
    total = len(files) if count is None else count
    shown = ", ".join(files[:LISTED])
    return shown if total <= LISTED else f"{shown} and {total - LISTED} more"
