"""Where a script runs (``--exec-cwd``), and the temporary folders that ``tmp`` hands out.

``tmp`` folders come from pytest's own ``tmp_path_factory``, under the session's basetemp,
so they are kept and cleaned like ``tmp_path``: the last three sessions' folders are kept
(``tmp_path_retention_count``), and with ``tmp_path_retention_policy = failed`` the folder of a
script that passed is removed when its report is made (``none``: pytest removes them all).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from .options import ExecOptions

_TMP_KEY = pytest.StashKey[Path]()
_MAX_NAME = 30  # as tmp_path: long node names make unreadable folders


def _factory(config: pytest.Config) -> pytest.TempPathFactory | None:
    # The tmp_path fixture's own factory, set by pytest's tmpdir plugin at configure time.
    factory = getattr(config, "_tmp_path_factory", None)
    return factory if isinstance(factory, pytest.TempPathFactory) else None


def work_folder(item: pytest.Item, options: ExecOptions) -> Path | None:
    """The folder the script runs in by ``--exec-cwd``; ``None`` for its own folder."""
    if options.cwd == "rootdir":
        return item.config.rootpath
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
    """Remove a passed script's ``tmp`` folder when the retention policy says so."""
    folder = item.stash.get(_TMP_KEY, None)
    if folder is None or not passed:
        return
    try:
        policy = item.config.getini("tmp_path_retention_policy")
    except ValueError:
        return
    if policy in ("failed", "none"):
        shutil.rmtree(folder, ignore_errors=True)
