"""``--exec-preload auto`` (issue 19): the warm server preloads what most scripts imported
on the last run; a module it refuses is dropped with a note; outcomes are those of a cold run.

Each script says whether the local module it imports was already loaded by another process
(the server) or imported in its own: that is what shows a preload at work.
"""

from __future__ import annotations

import json

import pytest
from conftest import ExecPytester, Mode

# Imported by every script: says, in where.log, which process imported it.
_HEAVY = """\
import os
IMPORTED_BY = os.getpid()
"""

_SCRIPT = """\
import os, sys
import iniconfig, mypkg
where = "preloaded" if mypkg.heavy.IMPORTED_BY != os.getpid() else "imported"
with open(os.path.join(os.path.dirname(__file__), "where.log"), "a") as log:
    log.write(where + "\\n")
print(mypkg.VALUE + 1, iniconfig.__name__)
"""


def _where(px: ExecPytester) -> list[str]:
    """What each script of the last session said, then clear it for the next."""
    log = px.path / "where.log"
    lines = sorted(log.read_text().split()) if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def _local_package_tree(px: ExecPytester) -> None:
    px.ini(pythonpath="src")
    px.script("src/mypkg/__init__.py", "from . import heavy\nVALUE = 41\n")
    px.script("src/mypkg/heavy.py", _HEAVY)
    for name in ("a", "b", "c"):
        px.script(f"{name}_script.py", _SCRIPT)
    px.script("fails_script.py", _SCRIPT + "sys.exit('wrong answer')\n")


@pytest.mark.modes("inline", "inline-warm", "async-warm")
def test_auto_preloads_what_the_scripts_imported_and_outcomes_match_cold(
    px: ExecPytester, mode: Mode
) -> None:
    _local_package_tree(px)

    first = px.run(*mode, "--exec-preload", "auto")
    first.assert_outcomes(passed=3, failed=1)
    assert _where(px) == ["imported"] * 4
    if mode.warm:
        first.stdout.fnmatch_lines(
            [
                "codomyrmex-exec: warm: --exec-preload auto knows no earlier run *: preloading "
                "nothing; this run's imports are recorded"
            ]
        )

    second = px.run(*mode, "--exec-preload", "auto")
    second.assert_outcomes(passed=3, failed=1)  # as cold, and as the first run
    second.stdout.fnmatch_lines(["*wrong answer*"])
    if not mode.warm:
        assert "warm:" not in second.stdout.str()
        assert _where(px) == ["imported"] * 4
        return
    second.stdout.fnmatch_lines(
        ["codomyrmex-exec: warm: preloading 2 modules chosen from the last run: iniconfig, mypkg"]
    )
    assert _where(px) == ["preloaded"] * 4

    # A warm run's records still name what was preloaded (its import found it loaded): the
    # choice holds on the run after, instead of falling back to nothing every other run.
    third = px.run(*mode, "--exec-preload", "auto")
    third.assert_outcomes(passed=3, failed=1)
    third.stdout.fnmatch_lines(["*preloading 2 modules chosen from the last run: iniconfig, mypkg"])
    assert _where(px) == ["preloaded"] * 4


def test_auto_drops_a_module_the_server_refuses_or_cannot_import_and_keeps_the_rest(
    px: ExecPytester,
) -> None:
    _local_package_tree(px)
    (px.path / "fails_script.py").unlink()
    # Starts a thread at import (cannot cross a fork) / reads a file from the working folder
    # at import (the scripts run in theirs; the server runs in /): both import fine in scripts.
    px.script(
        "src/threaded.py",
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n",
    )
    px.script("src/settings_reader.py", "with open('settings.txt') as f:\n    TEXT = f.read()\n")
    (px.path / "settings.txt").write_text("colour = blue\n")
    for name in ("a", "b", "c"):
        script = px.path / f"{name}_script.py"
        script.write_text("import threaded, settings_reader\n" + script.read_text())

    px.run("--exec-warm", "--exec-preload", "auto").assert_outcomes(passed=3)
    assert _where(px) == ["imported"] * 3

    result = px.run("--exec-warm", "--exec-preload", "auto")
    result.assert_outcomes(passed=3)  # a note, not an error: the user did not name them
    result.stdout.fnmatch_lines(
        [
            "*preloading 4 modules chosen from the last run: iniconfig, mypkg, "
            "settings_reader, threaded",
            "codomyrmex-exec: warm: auto preload dropped settings_reader: cannot preload "
            "'settings_reader': FileNotFoundError: *settings.txt*",
            "codomyrmex-exec: warm: auto preload dropped threaded: cannot preload 'threaded': "
            "importing it starts 1 thread(s)*",
        ]
    )
    assert _where(px) == ["preloaded"] * 3  # the rest were kept
    assert result.ret == 0

    # Under xdist each worker starts a server of its own: the controller says it, once each.
    result = px.run("--exec-warm", "--exec-preload", "auto", "-n", "2")
    result.assert_outcomes(passed=3)
    notes = [line for line in result.outlines if "auto preload dropped" in line]
    assert [note.split(":")[2] for note in notes] == [
        " auto preload dropped settings_reader",
        " auto preload dropped threaded",
    ]
    assert _where(px) == ["preloaded"] * 3


def test_with_exec_changed_auto_chooses_from_its_deps_store(px: ExecPytester) -> None:
    _local_package_tree(px)
    (px.path / "fails_script.py").unlink()
    args = ("--exec-warm", "--exec-preload", "auto", "--exec-changed")
    px.run(*args, "--exec-deps-file=deps.json").assert_outcomes(passed=3)
    assert _where(px) == ["imported"] * 3
    assert "a_script.py::a_script" in json.loads((px.path / "deps.json").read_text())["scripts"]

    (px.path / "a_script.py").write_text(_SCRIPT + "# changed\n")  # only it runs again
    result = px.run(*args, "--exec-deps-file=deps.json")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(
        ["*preloading 2 modules chosen from the last run: iniconfig, mypkg"]
    )
    assert _where(px) == ["preloaded"]
    # The deps store is where the imports were kept: no second table of this plugin's own.
    assert not list(px.path.glob(".pytest_cache/v/codomyrmex_exec/imports"))


def test_a_change_to_a_preloaded_module_reruns_the_scripts_with_exec_changed(
    px: ExecPytester,
) -> None:
    # A warm script's import of a preloaded module finds it loaded and is not seen: its
    # record must name the module all the same, or --exec-changed skips it after a change.
    _local_package_tree(px)
    (px.path / "fails_script.py").unlink()
    args = ("--exec-warm", "--exec-preload", "mypkg", "--exec-changed")
    px.run(*args).assert_outcomes(passed=3)
    assert _where(px) == ["preloaded"] * 3

    heavy = px.path / "src/mypkg/heavy.py"
    heavy.write_text(heavy.read_text() + "CHANGED = True\n")
    px.run(*args).assert_outcomes(passed=3)


# What was loaded before the script's first import (a forked script keeps what the server
# preloaded), then a doctest run under the `__main__` guard, as TheAlgorithms' scripts do.
_STATED_SCRIPT = '''\
import sys
ALREADY = [
    name for name in ("doctest", "fractions", "packaging.version", "wave") if name in sys.modules
]
import packaging
from packaging.version import Version
import calendar  # the file beside the scripts, not the standard module

try:  # an optional import, as example folders write them
    import fractions
except ImportError:
    fractions = None
if sys.platform == "win32":  # a standard module this interpreter does not have
    import winreg

assert calendar.LOCAL, "the standard calendar shadowed the one beside the script"
DIGIT = "\\d"  # an invalid escape: parsing it warns (DeprecationWarning, or SyntaxWarning)


def play():
    import wave  # runs only if play() is called, and it is not

    return wave


def double(x):
    """
    >>> double(2)
    4
    """
    return 2 * x


if __name__ == "__main__":
    import doctest

    with open(__file__ + ".log", "w") as log:
        log.write(" ".join(ALREADY) or "nothing")
    sys.exit(doctest.testmod().failed + (Version("1.0") != Version("1")))
'''


@pytest.mark.modes("async-warm")
def test_auto_preloads_standard_and_distribution_modules_the_scripts_import(
    px: ExecPytester, mode: Mode
) -> None:
    # The record sums up the standard library as the interpreter and a distribution as its
    # name: TheAlgorithms' `import doctest` (24 ms of CPU per script) was never preloaded,
    # and for rich's `from rich.console import Console` only `rich`, which imports nothing.
    # `packaging` is such a distribution: its top package loads none of its modules.
    # An import in a top-level `try:` runs with the script (a scan by indentation missed
    # it); one in a function body does not; a module the interpreter does not have (winreg
    # off Windows) the server would fail to import, and restart without, every run.
    # A folder each, so that none is the scripts' shared one: the calendar.py beside each
    # has no module name the server could import it by.
    scripts = ("one/a_script.py", "two/b_script.py", "three/c_script.py")
    for script in scripts:
        px.script(script, _STATED_SCRIPT)
        px.script(f"{script.split('/')[0]}/calendar.py", "LOCAL = True\n")
    logs = [px.path / f"{script}.log" for script in scripts]
    # A script whose source does not parse fails, and costs the choice nothing else.
    px.script("four/d_script.py", "import doctest\nprint(1 +)\n")

    px.run(*mode, "--exec-preload", "auto").assert_outcomes(passed=3, failed=1)
    assert [log.read_text() for log in logs] == ["nothing"] * 3

    # Warnings as errors turned that warning into a SyntaxError: the line scan's guess.
    strict = ("-W", "error::DeprecationWarning", "-W", "error::SyntaxWarning")
    second = px.run(*mode, "--exec-preload", "auto", *strict)
    second.assert_outcomes(passed=3, failed=1)
    second.stdout.fnmatch_lines(
        [
            "*warm: preloading 4 modules chosen from the last run: "
            "doctest, fractions, packaging, packaging.version"
        ]
    )
    assert [log.read_text() for log in logs] == ["doctest fractions packaging.version"] * 3
    assert "dropped" not in second.stdout.str()


def test_auto_sees_imports_whose_bytecode_is_cached_under_a_pycache_prefix(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With PYTHONPYCACHEPREFIX an import reads PREFIX/<source's folders>/x.cpython-311.pyc:
    # the record named those files instead of the sources, so auto found nothing to preload
    # (rich's examples under bench/: nothing of rich, or of pyparsing, was ever chosen).
    _local_package_tree(px)
    (px.path / "fails_script.py").unlink()
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(px.path / "bytecode"))
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # set by some CI images
    args = ("--exec-parallel", "--exec-warm", "--exec-preload", "auto")
    px.run(*args).assert_outcomes(passed=3)
    assert list((px.path / "bytecode").rglob("heavy.*.pyc")), "the prefix was not used"
    assert _where(px) == ["imported"] * 3

    result = px.run(*args)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*preloading 2 modules chosen from the last run: iniconfig, mypkg"]
    )
    assert _where(px) == ["preloaded"] * 3
