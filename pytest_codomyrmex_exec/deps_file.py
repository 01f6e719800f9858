"""The deps store of ``--exec-changed``: what each script's last run depended on, and whether
that still holds.

For every script it keeps the outcome of its last run and, when it passed with a record, the
inputs it depended on: a digest of its resolved settings, the interpreter and its version,
the versions of the distributions it imported from, and a content hash of every file it read
(``None`` for a file that was absent). A script runs again when any of them differs now.

Content hashes, not modification times: a ``git checkout`` that restores a file's bytes is no
change. Hashing stays cheap for unchanged files through hints kept on this machine only
(:class:`FileHasher`), which are trusted only when they cannot hide a change.

This module imports neither pytest nor the plugin: ``python -m pytest_codomyrmex_exec
merge-deps`` uses it on its own.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, final

from .whole_file import write_whole

FORMAT = "codomyrmex-exec deps"
"""The ``format`` key of every deps file: what tells ours from someone else's JSON."""
FORMAT_VERSION = 1

RACY_SECONDS = 2.0
"""A file changed less than this long before it was hashed gets no hint: another write in
the same timestamp tick (coarse on some filesystems: 2 s on FAT, 1 s on HFS+ and some NFS)
could change its content and leave size, mtime and ctime as they were."""

_PROBE_TIMEOUT = 30.0
"""Seconds another interpreter may take to say what it is and which versions it has."""


@final
@dataclass(frozen=True, slots=True)
class Inputs:
    """What a passing run of a script depended on."""

    settings: str
    """Digest of its resolved settings: run settings, marks, options, expected output."""
    interpreter: str
    """The interpreter's path and version, as :func:`interpreter_identity` says them."""
    distributions: dict[str, str] = field(default_factory=dict)
    """Installed distributions it imported from: name to version."""
    files: dict[str, str | None] = field(default_factory=dict)
    """Content hash of each file it read, ``None`` if the file was absent after its run;
    keyed by the path relative to the rootdir (``/``-separated), absolute outside it."""
    always: list[str] = field(default_factory=list)
    """Why the script must run every time (what the recorder could not follow, a file it
    read that cannot be hashed); empty when its inputs are all known."""


@final
@dataclass(frozen=True, slots=True)
class Entry:
    """A script's last run: pytest's outcome word, when it ran, and its inputs if it passed."""

    outcome: str
    recorded: datetime
    inputs: Inputs | None = None


class DepsFileError(ValueError):
    """A deps file that cannot be used; the message names the file.

    ``foreign``: it is someone else's JSON (not ours), so it must not be written over."""

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign


# -- reading and writing ------------------------------------------------------------------------


def read_deps(path: Path) -> dict[str, Entry]:
    """The entries in ``path`` by node id; a missing or empty file holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise DepsFileError(f"{path}: cannot read it: {exc}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DepsFileError(f"{path}: not JSON: {exc}") from None
    return parse_deps(data, str(path))


def parse_deps(data: object, where: str) -> dict[str, Entry]:
    """Entries from the plain value a deps file holds; ``where`` names it in errors."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DepsFileError(f"{where}: not a deps file of codomyrmex-exec", foreign=True)
    if data.get("version") != FORMAT_VERSION:
        raise DepsFileError(
            f"{where}: a deps file of version {data.get('version')!r}, this plugin reads "
            f"version {FORMAT_VERSION}"
        )
    scripts = data.get("scripts")
    if not isinstance(scripts, dict):
        raise DepsFileError(f"{where}: 'scripts' must be an object of node ids")
    try:
        return {str(nodeid): _entry(plain) for nodeid, plain in scripts.items()}
    except (TypeError, ValueError, KeyError) as exc:
        raise DepsFileError(f"{where}: a malformed entry: {exc!r}") from None


def _entry(plain: Any) -> Entry:
    recorded = datetime.fromisoformat(plain["recorded"])
    if recorded.tzinfo is None:
        recorded = recorded.replace(tzinfo=UTC)
    inputs = plain.get("inputs")
    return Entry(
        outcome=_text(plain["outcome"]),
        recorded=recorded,
        inputs=None if inputs is None else inputs_from_plain(inputs),
    )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def inputs_from_plain(plain: Any) -> Inputs:
    """The :class:`Inputs` of a plain value (from a file, or from an xdist worker)."""
    files = plain["files"]
    if not isinstance(files, dict) or not all(
        isinstance(d, str) or d is None for d in files.values()
    ):
        raise TypeError(f"files must map paths to digests, got {files!r}")
    distributions = plain["distributions"]
    if not isinstance(distributions, dict):
        raise TypeError(f"distributions must map names to versions, got {distributions!r}")
    return Inputs(
        settings=_text(plain["settings"]),
        interpreter=_text(plain["interpreter"]),
        distributions={_text(k): _text(v) for k, v in distributions.items()},
        files={_text(k): v for k, v in files.items()},
        always=[_text(reason) for reason in plain["always"]],
    )


def inputs_to_plain(inputs: Inputs) -> dict[str, Any]:
    return {
        "settings": inputs.settings,
        "interpreter": inputs.interpreter,
        "distributions": dict(sorted(inputs.distributions.items())),
        "files": dict(sorted(inputs.files.items())),
        "always": list(inputs.always),
    }


def deps_to_plain(entries: Mapping[str, Entry]) -> dict[str, Any]:
    """The whole store as a plain value (what pytest's cache or a file holds)."""
    scripts = {}
    for nodeid, entry in sorted(entries.items()):
        plain: dict[str, Any] = {
            "outcome": entry.outcome,
            "recorded": entry.recorded.isoformat(),
        }
        if entry.inputs is not None:
            plain["inputs"] = inputs_to_plain(entry.inputs)
        scripts[nodeid] = plain
    return {"format": FORMAT, "version": FORMAT_VERSION, "scripts": scripts}


def write_deps(path: Path, entries: Mapping[str, Entry]) -> None:
    """Write the store to ``path`` whole (a temporary file renamed over it), or leave the old
    file if that fails midway: shards or jobs reading it never see half a file."""
    write_whole(path, json.dumps(deps_to_plain(entries), indent=1, sort_keys=True) + "\n")


def merge_deps(tables: Iterable[Mapping[str, Entry]]) -> dict[str, Entry]:
    """One store from several (the shards of a run): each script's latest run wins (on a
    tie, the later table's)."""
    merged: dict[str, Entry] = {}
    for table in tables:
        for nodeid, entry in table.items():
            kept = merged.get(nodeid)
            if kept is None or entry.recorded >= kept.recorded:
                merged[nodeid] = entry
    return merged


# -- hashing ------------------------------------------------------------------------------------


class Unhashable(Exception):
    """A file that was read but whose content cannot stand for what the script saw (a
    device, a pipe, a folder, one it may not read); the message says why."""


Hint = tuple[int, int, int, int, int, str]
"""``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, digest)`` of a file hashed before."""


def _stat_key(info: os.stat_result) -> tuple[int, int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class FileHasher:
    """Content hashes (BLAKE2b) of files, with hints that spare reading unchanged ones.

    A hint is the ``stat`` of a file when it was hashed: device, inode, size, mtime *and*
    ctime. A write changes mtime and ctime; putting the old mtime back (``touch -d``,
    ``os.utime``, an archive tool) changes ctime, which no program can set; a new file
    made in its place has a new inode or ctime. What remains is a write in the same
    timestamp tick as the hashing: a hint is kept only for a file whose last change is
    :data:`RACY_SECONDS` older than the hash, and a file whose ``stat`` moved while it was
    read gets none. Hints are of this machine (inodes), so they live in pytest's cache,
    never in the deps file."""

    def __init__(
        self, hints: Mapping[str, Hint] | None = None, settle: float = RACY_SECONDS
    ) -> None:
        self.hints: dict[str, Hint] = dict(hints or {})
        self.settle_ns = settle * 1e9
        self.hashed = 0
        """Files read and hashed (not answered from a hint): for tests and the benchmark."""

    def digest(self, path: str) -> str | None:
        """The hash of the file's content, ``None`` if there is no file; raises
        :class:`Unhashable` for what is there but not a readable regular file."""
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unhashable(f"cannot stat it: {exc.strerror}") from None
        if not stat.S_ISREG(before.st_mode):
            raise Unhashable("not a regular file")
        key = _stat_key(before)
        hint = self.hints.get(path)
        if hint is not None and hint[:5] == key:
            return hint[5]
        try:
            with open(path, "rb") as stream:
                digest = hashlib.file_digest(stream, lambda: hashlib.blake2b(digest_size=16))
                after = os.fstat(stream.fileno())
        except OSError as exc:
            raise Unhashable(f"cannot read it: {exc.strerror}") from None
        self.hashed += 1
        text = digest.hexdigest()
        changed_last = max(after.st_mtime_ns, after.st_ctime_ns)
        settled = time.time_ns() - changed_last > self.settle_ns
        if _stat_key(after) == key and settled:
            self.hints[path] = (*key, text)
        else:
            self.hints.pop(path, None)
        return text


def hints_from_plain(plain: object) -> dict[str, Hint]:
    """Hints from pytest's cache; anything malformed is dropped (they are only hints)."""
    if not isinstance(plain, dict):
        return {}
    hints: dict[str, Hint] = {}
    for path, hint in plain.items():
        if (
            isinstance(hint, list)
            and len(hint) == 6
            and all(isinstance(n, int) for n in hint[:5])
            and isinstance(hint[5], str)
        ):
            hints[str(path)] = (hint[0], hint[1], hint[2], hint[3], hint[4], hint[5])
    return hints


MACHINE_STATE = ("/dev/", "/proc/", "/sys/")
"""Files whose content is the machine's state, not an input (``/dev/null``, ``/proc/...``,
which libraries read all the time): left out of a script's inputs."""


def file_key(path: str, rootdir: Path) -> str:
    """How a file is named in the store: from the rootdir when under it (so a store can be
    shared by checkouts in different places), else absolute."""
    inside = _relative(path, str(rootdir))
    if inside is None:  # through links, perhaps (a rootdir under a linked folder)
        inside = _relative(os.path.realpath(path), os.path.realpath(rootdir))
    return path if inside is None else inside


def _relative(path: str, root: str) -> str | None:
    relative = os.path.relpath(path, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return relative.replace(os.sep, "/")


def file_path(key: str, rootdir: Path) -> str:
    return key if os.path.isabs(key) else str(rootdir / key)


# -- the interpreter and the installed distributions ---------------------------------------------

_IDENTITY = "import platform, sys; print(sys.executable, platform.python_version())"


def interpreter_identity() -> str:
    """This interpreter's path and version: ``/usr/bin/python3 3.11.7``."""
    return f"{sys.executable} {platform.python_version()}"


def _version_here(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_OTHER_PROBE = """\
import importlib.metadata, json, platform, sys
versions = {}
for name in json.loads(sys.argv[1]):
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
print(json.dumps([f"{sys.executable} {platform.python_version()}", versions]))
"""


@final
class Interpreter:
    """What a script's interpreter is now, and its distributions' versions, asked once.

    The interpreter running pytest answers in this process; another one (``--exec-python``,
    ``exec(python=...)``) is asked in one child process for every name at once."""

    def __init__(self, python: str | None) -> None:
        self.python = python
        self._identity: str | None = None
        self._versions: dict[str, str | None] = {}

    def _is_this_one(self) -> bool:
        # By path, not by realpath: a virtualenv's python is a link to the base interpreter,
        # which has other distributions installed.
        return self.python is None or os.path.abspath(self.python) == sys.executable

    def identity(self) -> str:
        if self._identity is None:
            self._identity = interpreter_identity() if self._is_this_one() else self._ask([])
        return self._identity

    def version(self, name: str, also: Iterable[str] = ()) -> str | None:
        """The installed version of ``name``; ``also``: names to ask in the same probe."""
        if name not in self._versions:
            if self._is_this_one():
                self._versions[name] = _version_here(name)
            else:
                self._ask([name, *also])
        return self._versions.get(name)

    def _ask(self, names: list[str]) -> str:
        assert self.python is not None  # only another interpreter is asked
        try:
            done = subprocess.run(
                [self.python, "-c", _OTHER_PROBE, json.dumps(names)],
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT,
                check=True,
            )
            identity, versions = json.loads(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            # Not answered: nothing about it can be taken as unchanged.
            identity, versions = f"{self.python} (did not answer: {exc})", {}
        self._identity = str(identity)
        for name in names:
            found = versions.get(name) if isinstance(versions, dict) else None
            self._versions[name] = found if isinstance(found, str) else None
        return self._identity


# -- the decision ------------------------------------------------------------------------------


def why_run(
    entry: Entry | None,
    settings: str,
    interpreter: Interpreter,
    digest: Callable[[str], str | None],
) -> str | None:
    """Why the script must run, or ``None`` when nothing it depended on changed since its
    last run, which passed. ``digest`` hashes a file by its store key (raises
    :class:`Unhashable`)."""
    if entry is None:
        return "no earlier run recorded"
    if entry.outcome != "passed":
        return f"{entry.outcome} last time"
    inputs = entry.inputs
    if inputs is None:
        return "its inputs were not recorded"
    if inputs.always:
        return inputs.always[0]
    if inputs.settings != settings:
        return "its settings changed (marks, options, environment or expected output)"
    now = interpreter.identity()
    if inputs.interpreter != now:
        return f"the interpreter changed: {inputs.interpreter} -> {now}"
    names = sorted(inputs.distributions)
    for name in names:
        version = interpreter.version(name, also=names)
        if version != inputs.distributions[name]:
            return f"{name} changed: {inputs.distributions[name]} -> {version or 'not installed'}"
    for key, recorded in sorted(inputs.files.items()):
        try:
            current = digest(key)
        except Unhashable as exc:
            return f"{key}: {exc}"
        if current != recorded:
            if recorded is None:
                return f"{key} appeared"
            return f"{key} was removed" if current is None else f"{key} changed"
    return None
