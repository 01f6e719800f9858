"""The benchmark's corpora of ``*_script.py`` files, and the hand-written peer test next to each.

Every corpus is generated fresh into a work folder outside the package (a temporary folder by
default), so no script or test file of the benchmark sits in the repository at rest.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

SHORT_SLEEP: Final = 0.2
"""Seconds each script of the sleep and skewed corpora sleeps."""
LONG_SLEEP: Final = 4.0
"""Seconds the skewed corpus's one long script sleeps."""
CPU_SECONDS: Final = 0.25
"""CPU seconds each script of the cpu corpus burns."""

# A minimal ini file in each folder makes it the rootdir, so the repository's own pytest
# settings (testpaths, addopts, filterwarnings) never apply to a benchmark run.
_INI = "[pytest]\n"

_TINY = 'print("tiny script {index}")\n'
# process_time, not a wall-clock loop: the script must cost the same CPU however busy the
# machine is, so that a slower arm means more overhead, not less work done per second.
_CPU = (
    "import time\n"
    "start = time.process_time()\n"
    f"while time.process_time() - start < {CPU_SECONDS}:\n"
    "    pass\n"
)
_SLEEP = "import time\ntime.sleep({seconds})\n"
# Imports numpy and sums a small array: a cold start pays numpy's import for every script.
_NUMPY = "import numpy as np\nprint(int(np.arange({index} + 100).sum()))\n"

_PEER = '''\
"""The hand-written peer: one parametrized test that runs each script in a subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted(Path({corpus!r}).glob("*_script.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_script(script: Path) -> None:
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
'''


@final
@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """What one corpus holds and how many workers it is run with."""

    name: str
    count: int
    workers: int
    """Scripts at once for the plugin and the xargs floor."""
    xdist_workers: int
    """``-n`` for the xdist peer."""
    script: Callable[[int, int], tuple[str, str]]
    """``(index, count) -> (file name, source)`` for each script."""
    description: str


@final
@dataclass(frozen=True, slots=True)
class Corpus:
    """A generated corpus: its folder, its scripts, and the peer test's own folder."""

    spec: CorpusSpec
    folder: Path
    scripts: tuple[str, ...]
    """File names in collection (sorted) order."""
    peer_folder: Path
    file_list: Path
    """The script names, NUL-separated, for ``xargs -0``."""


def _numbered(prefix: str, source: str) -> Callable[[int, int], tuple[str, str]]:
    def make(index: int, count: int) -> tuple[str, str]:
        width = len(str(count - 1))
        return f"{prefix}_{index:0{width}d}_script.py", source.format(index=index)

    return make


def _skewed(index: int, count: int) -> tuple[str, str]:
    # The long script is the last file by name, so collection order starts it last.
    if index == count - 1:
        return "zz_long_script.py", _SLEEP.format(seconds=LONG_SLEEP)
    return f"short_{index:03d}_script.py", _SLEEP.format(seconds=SHORT_SLEEP)


def _scale(count: int) -> CorpusSpec:
    return CorpusSpec(
        name=f"scale-{count}",
        count=count,
        workers=2,
        xdist_workers=2,
        script=_numbered("scale", _TINY),
        description=f"{count} scripts that print a line",
    )


SPECS: Final[dict[str, CorpusSpec]] = {
    "tiny": CorpusSpec(
        "tiny", 200, 2, 2, _numbered("tiny", _TINY), "200 scripts that print a line"
    ),
    "cpu": CorpusSpec(
        "cpu", 40, 2, 2, _numbered("cpu", _CPU), f"40 scripts burning {CPU_SECONDS} s of CPU"
    ),
    "sleep": CorpusSpec(
        "sleep",
        60,
        16,
        8,
        _numbered("sleep", _SLEEP.format(seconds=SHORT_SLEEP)),
        f"60 scripts sleeping {SHORT_SLEEP} s",
    ),
    "skewed": CorpusSpec(
        "skewed",
        41,
        2,
        2,
        _skewed,
        f"40 scripts sleeping {SHORT_SLEEP} s, then one of {LONG_SLEEP} s sorted last by name",
    ),
    "numpy": CorpusSpec(
        "numpy",
        30,
        2,
        2,
        _numbered("numpy", _NUMPY),
        "30 scripts that import numpy and sum a small array",
    ),
    "scale-500": _scale(500),
    "scale-5000": _scale(5000),
}


def generate(spec: CorpusSpec, workdir: Path) -> Corpus:
    """Write the corpus and its peer test under ``workdir`` (replacing an older copy)."""
    folder = workdir / spec.name
    peer_folder = workdir / f"{spec.name}-peer"
    for old in (folder, peer_folder):
        if old.exists():
            shutil.rmtree(old)
    folder.mkdir(parents=True)
    peer_folder.mkdir()

    names = []
    for index in range(spec.count):
        name, source = spec.script(index, spec.count)
        (folder / name).write_text(source)
        names.append(name)
    names.sort()
    (folder / "pytest.ini").write_text(_INI)

    (peer_folder / "pytest.ini").write_text(_INI)
    (peer_folder / "test_peer.py").write_text(_PEER.format(corpus=str(folder)))

    file_list = workdir / f"{spec.name}.files"
    file_list.write_bytes(b"".join(name.encode() + b"\0" for name in names))
    return Corpus(spec, folder, tuple(names), peer_folder, file_list)
