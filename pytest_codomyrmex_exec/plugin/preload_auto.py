"""``--exec-preload auto``: the warm server preloads what most scripts imported last time.

Where that is known from: ``--exec-changed``'s deps store when it is on (it keeps each
script's last record), else a table of this plugin's own in pytest's cache
(:data:`CACHE_KEY`), written from the records of each run (``auto`` turns recording on).

What is chosen: a module imported by at least :data:`MIN_SCRIPTS` scripts and by at least
:data:`MIN_SHARE` of the scripts recorded, the :data:`LIMIT` most imported. An installed
distribution stands for its top-level import package; a module file under the rootdir for
its dotted name from the deepest folder of the scripts' shared path that holds it: pytest's
``pythonpath`` entries, ``PYTHONPATH``, or the folder every recorded script sits in (then
added to the server's path, as it is first on each script's). Each recorded script's own
import statements add the standard modules it names and, for a distribution, the modules it
names under it instead of its top package. The chosen modules go to the
launcher as ``optional_preload``: one the server refuses is dropped with a note, not an
error, since the user did not name it.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .items import ScriptItem
from .keys import OPTIONS_KEY, RESULT_KEY

if TYPE_CHECKING:
    from ..engine.forkserver import WarmLauncher

CACHE_KEY = "codomyrmex_exec/imports"
"""Each script's imports from its last recorded run, when ``--exec-changed`` is off."""
MIN_SCRIPTS = 2
"""A module one script imports is no saving: the server would import it for that one."""
MIN_SHARE = 0.1
"""Of the scripts recorded: a module few of them use costs the server's start-up for little."""
LIMIT = 20
"""At most this many modules: each is one more import the server's start-up waits on."""
SHOWN = 6
"""Names the header line shows before "(+N more)"."""
_DROPPED_OUTPUT_KEY = "codomyrmex_exec_preload_dropped"
"""An xdist worker's dropped modules, for the controller's summary."""
_IMPORTS_ATTR = "codomyrmex_exec_imports"
"""The attribute of a script's call report with its imports (plain JSON: it travels from an
xdist worker)."""
_TOP_LEVEL_TIMEOUT = 60.0
"""Seconds another interpreter may take to list its distributions' import packages (or the
standard modules it has and has loaded at start-up)."""
_NEVER_PRELOADED = frozenset({"__future__", "__hello__", "__phello__", "antigravity", "this"})
"""Standard modules whose import is the point (they print or open a browser): preloaded, the
script's own import would do nothing."""
_RUN_IF_CALLED = (ast.FunctionDef, ast.AsyncFunctionDef)
"""Bodies whose imports run only if they are called. A class body runs where it stands
(its methods are functions: theirs do not count)."""
# An import statement's modules: `import a.b as c, d` or `from a.b import ...` (not relative).
_IMPORT = re.compile(
    r"import\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)\s*(?:#|;|$)"
    r"|from\s+(\w[\w.]*)\s+import\b"
)

# Which installed top-level import packages come from which distribution, printed as JSON.
_TOP_LEVEL_CODE = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({k: sorted(v) for k, v in m.packages_distributions().items()}))"
)

# Two lines: the modules loaded at start-up (printed before anything else is imported),
# then the top-level standard modules not found (the path finder alone: other finders on
# sys.meta_path, such as an editable install's, made the lookups 25 times slower: 4 ms
# against 105 ms of CPU for all of them, here).
_STANDARD_CODE = (
    "import sys; print(*sys.modules); from importlib.machinery import PathFinder; "
    "print(*(n for n in sys.stdlib_module_names if n not in sys.modules "
    "and n not in sys.builtin_module_names and PathFinder.find_spec(n) is None))"
)


@dataclass(frozen=True)
class Imported:
    """What one script's last recorded run imported."""

    files: tuple[str, ...]
    """Files it read under the rootdir, absolute."""
    distributions: tuple[str, ...]


def _stated_imports(script: str) -> set[str]:
    """The modules ``script``'s source imports when it runs: at its top level, in the blocks
    that run with it (``try``/``except``, ``if``, ``with``, loops, a class body; the
    ``__main__`` guard, where ``import doctest`` is common), not in a function (that import
    runs only if it is called). The record cannot tell them, since it sums up the standard
    library as the interpreter and a distribution as its name."""
    try:
        source = Path(script).read_bytes()
    except OSError:
        return set()
    try:
        # Bytes, so that a coding declaration is honoured. A script this interpreter cannot
        # parse (null bytes, a newer --exec-python's syntax, nesting too deep) gets the line
        # scan instead: the choice is a guess, never a reason to fail the run.
        with warnings.catch_warnings():
            # An invalid escape ("\d") warns as it is parsed: shown before the run (3.12's
            # SyntaxWarning), or a SyntaxError under -W error. The script's own run warns.
            warnings.simplefilter("ignore")
            statements = ast.parse(source).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _scanned_imports(source.decode("utf-8", errors="replace"))
    names: set[str] = set()
    pending: list[ast.AST] = list(statements)
    while pending:  # not recursive: a deeply nested script must not exhaust the stack
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if not node.level and node.module:  # `from . import x` names no module
                names.add(node.module)
        elif not isinstance(node, _RUN_IF_CALLED):
            pending.extend(
                child
                for child in ast.iter_child_nodes(node)
                if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case))
            )
    return names


def _scanned_imports(text: str) -> set[str]:
    """:func:`_stated_imports` by lines, for a script that does not parse: the import
    statements at the top level (not indented) or under the ``__main__`` guard."""
    names: set[str] = set()
    under_main = False
    for line in text.splitlines():
        statement = line.lstrip()
        if not statement or statement.startswith("#"):
            continue
        if line[0] not in " \t":
            under_main = statement.startswith("if __name__")
        elif not under_main:
            continue
        found = _IMPORT.match(statement)
        if found is None:
            continue
        if found.group(2):
            names.add(found.group(2))
        else:
            names.update(part.split()[0] for part in found.group(1).split(","))
    return names


def _beside(script: Path, name: str) -> bool:
    return (script.parent / f"{name}.py").exists() or (script.parent / name).is_dir()


def _ask(python: str, code: str) -> str | None:
    """What ``python -c code`` prints; ``None`` if it cannot start, fails or takes too long
    (what is asked is only a hint for the choice)."""
    try:
        done = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            timeout=_TOP_LEVEL_TIMEOUT,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _standard_not_worth_preloading(python: str) -> tuple[frozenset[str], frozenset[str]]:
    """The modules ``python``'s start-up imports (every script, cold or warm, has them
    already), and the top-level standard modules it does not have (``winreg`` off Windows,
    one left out of its build): a script names those under a test of the platform, and the
    server would fail to import them and start again without."""
    loaded, _, missing = (_ask(python, _STANDARD_CODE) or "").partition("\n")
    return frozenset(loaded.split()), frozenset(missing.split())


@dataclass
class Choice:
    """What ``auto`` chose and why, for the header."""

    modules: tuple[str, ...] = ()
    source: str = ""
    """Where the last run's imports are kept; empty when nowhere (no pytest cache)."""
    scripts: int = 0
    """Scripts whose imports were known."""
    needed: int = 0
    """How many scripts had to import a module for it to be chosen."""
    shared_folder: Path | None = None
    """The folder every recorded script sits in, put on the server's path."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _script_path(nodeid: str, rootdir: Path) -> Path:
    return rootdir / nodeid.split("::", 1)[0]


def _from_deps_store(config: pytest.Config) -> dict[str, Imported]:
    """Each script's files and distributions as ``--exec-changed`` keeps them (a store it
    cannot read gives nothing: it says so itself)."""
    from ..deps_file import DepsFileError, file_path, parse_deps, read_deps
    from .changed import CACHE_KEY as DEPS_KEY
    from .durations import file_setting

    named = file_setting(config, "exec_deps_file")
    try:
        if named is not None:
            entries = read_deps(named[0]) if named[0].is_file() else {}
        else:
            cache = getattr(config, "cache", None)  # none with -p no:cacheprovider
            plain = cache.get(DEPS_KEY, None) if cache is not None else None
            entries = {} if plain is None else parse_deps(plain, DEPS_KEY)
    except DepsFileError:
        return {}
    rootdir = config.rootpath
    return {
        nodeid: Imported(
            tuple(file_path(key, rootdir) for key in entry.inputs.files),
            tuple(entry.inputs.distributions),
        )
        for nodeid, entry in entries.items()
        if entry.inputs is not None
    }


def _from_cache(config: pytest.Config) -> dict[str, Imported]:
    cache = getattr(config, "cache", None)
    plain = cache.get(CACHE_KEY, {}) if cache is not None else {}
    rootdir = config.rootpath
    known: dict[str, Imported] = {}
    if not isinstance(plain, dict):
        return known
    for nodeid, value in plain.items():
        if isinstance(value, dict):
            files = [str(rootdir / f) for f in value.get("files", []) if isinstance(f, str)]
            dists = [d for d in value.get("distributions", []) if isinstance(d, str)]
            known[str(nodeid)] = Imported(tuple(files), tuple(dists))
    return known


def _top_levels(python: str, wanted: Iterable[str]) -> dict[str, str | None]:
    """Each wanted distribution's import package in ``python``: its one public top-level
    package, else the one named like it; ``None`` when neither tells."""
    wanted = {_normal(name) for name in wanted}
    if not wanted:
        return {}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        import importlib.metadata

        packages = importlib.metadata.packages_distributions()
    else:
        answer = _ask(python, _TOP_LEVEL_CODE)
        try:
            packages = json.loads(answer) if answer is not None else {}
        except ValueError:
            packages = {}
    tops: dict[str, list[str]] = {}
    for top, distributions in packages.items():
        for distribution in distributions:
            tops.setdefault(_normal(distribution), []).append(top)
    chosen: dict[str, str | None] = {}
    for name in wanted:
        public = sorted({t for t in tops.get(name, []) if not t.startswith("_")})
        alike = [t for t in public if _normal(t) == name]
        chosen[name] = public[0] if len(public) == 1 else (alike[0] if alike else None)
    return chosen


def _dotted(path: str, folders: list[Path]) -> str | None:
    """The module name ``path`` is imported by from the deepest folder that holds it."""
    if not path.endswith(".py"):
        return None
    file = Path(path)
    for folder in folders:  # deepest first
        try:
            parts = list(file.relative_to(folder).with_suffix("").parts)
        except ValueError:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(part.isidentifier() for part in parts) and parts[-1] != "__main__":
            return ".".join(parts)
        return None
    return None


def _dots(name: str) -> list[int]:
    """Where ``name``'s parent packages end (``a.b.c``: after ``a`` and ``a.b``)."""
    return [i for i, char in enumerate(name) if char == "."]


def choose(config: pytest.Config) -> Choice:
    """What to preload, from the last run's records."""
    options = config.stash[OPTIONS_KEY]
    if options.changed:
        known, source = _from_deps_store(config), "--exec-changed's deps store"
    else:
        known, source = _from_cache(config), "pytest's cache"
        if getattr(config, "cache", None) is None:
            source = ""
    rootdir = config.rootpath
    scripts = {str(_script_path(nodeid, rootdir)) for nodeid in known}
    folders = {Path(script).parent for script in scripts}
    shared = folders.pop() if len(folders) == 1 else None
    from .settings import pytest_pythonpath

    entries = [*pytest_pythonpath(config)]
    entries += [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if shared is not None:
        entries.append(shared)
    entries = sorted({e.resolve() for e in entries}, key=lambda e: len(e.parts), reverse=True)
    needed = max(MIN_SCRIPTS, math.ceil(MIN_SHARE * len(known)))
    choice = Choice(source=source, scripts=len(known), needed=needed)
    by_distribution = Counter(_normal(d) for i in known.values() for d in set(i.distributions))
    tops = _top_levels(
        options.python or sys.executable,
        [d for d, count in by_distribution.items() if count >= needed],
    )

    under_rootdir = str(rootdir) + os.sep

    def importable(file: str) -> bool:  # never a script: importing it would run it
        name = os.path.basename(file)
        return (
            file.startswith(under_rootdir)
            and file not in scripts
            and not any(fnmatch(name, p) for p in options.patterns)
        )

    needless: tuple[frozenset[str], frozenset[str]] | None = None

    def standard(name: str) -> bool:  # one a fresh interpreter has, and has not loaded
        nonlocal needless
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names or name in _NEVER_PRELOADED:
            return False
        if needless is None:
            needless = _standard_not_worth_preloading(options.python or sys.executable)
        loaded, missing = needless
        return name not in loaded and top not in missing

    counts: Counter[str] = Counter()
    named_under: set[str] = set()  # modules of distributions, as the scripts name them
    for nodeid, imported in known.items():
        names = {_dotted(f, entries) for f in imported.files if importable(f)}
        script = _script_path(nodeid, rootdir)
        stated = _stated_imports(str(script))
        # A file or folder beside the script named like a standard module is what its import
        # finds (its folder is first on its path): the server's would shadow it.
        names.update(
            name
            for name in stated
            if standard(name) and not _beside(script, name.partition(".")[0])
        )
        for distribution in set(imported.distributions):
            top = tops.get(_normal(distribution))
            # What the script names of it (`rich.console`): its top package may import
            # little of it (rich's imports nothing heavy).
            under = {n for n in stated if top is not None and n.partition(".")[0] == top}
            names.update(under or {top})
            named_under.update(under)
        counts.update(name for name in names if name is not None)
    often = {name: count for name, count in counts.items() if count >= needed}
    # A package stands for its modules that as many scripts import: importing it usually
    # imports them, and a module it does not is still found by the script (only not warm).
    # Not so a distribution's module a script names: its package often imports none of them
    # (rich's: `rich.panel`, `rich.table` and the rest were left to each script).
    standing = {
        name: count
        for name, count in often.items()
        if name in named_under or not any(often.get(name[:i], 0) >= count for i in _dots(name))
    }
    ranked = sorted(standing, key=lambda name: (-standing[name], name))
    choice.modules = tuple(ranked[:LIMIT])
    uses_shared = shared is not None and any(
        _dotted(f, [shared.resolve()]) in choice.modules
        for imported in known.values()
        for f in imported.files
    )
    choice.shared_folder = shared if uses_shared else None
    return choice


class AutoPreload:
    """Says what ``auto`` chose and dropped; keeps each run's imports for the next."""

    def __init__(self, config: pytest.Config, choice: Choice, launcher: WarmLauncher) -> None:
        self.config = config
        self.choice = choice
        self.launcher = launcher
        self.keeps_own = not config.stash[OPTIONS_KEY].changed
        """Without ``--exec-changed`` the imports go to this plugin's own table."""
        self.fresh: dict[str, dict[str, list[str]]] = {}
        self.dropped_by_workers: dict[str, str] = {}
        """xdist's controller: what the workers' servers dropped (each starts its own)."""

    def pytest_report_header(self) -> str:
        choice = self.choice
        named = self.config.stash[OPTIONS_KEY].preload
        besides = f"only {', '.join(named)}" if named else "nothing"
        if not choice.source:
            return (
                "codomyrmex-exec: warm: --exec-preload auto cannot keep what scripts import: "
                f"pytest's cache is disabled (-p no:cacheprovider); preloading {besides}"
            )
        if not choice.scripts:
            return (
                f"codomyrmex-exec: warm: --exec-preload auto knows no earlier run "
                f"(in {choice.source}): preloading {besides}; this run's imports are recorded"
            )
        if not choice.modules:
            return (
                f"codomyrmex-exec: warm: no module was imported by at least {choice.needed} "
                f"scripts (of {choice.scripts} recorded last time): preloading {besides}"
            )
        shown = ", ".join(choice.modules[:SHOWN])
        more = len(choice.modules) - SHOWN
        count = len(choice.modules)
        return (
            f"codomyrmex-exec: warm: preloading {count} module{'s' if count != 1 else ''} "
            f"chosen from the last run: {shown}{f' (+{more} more)' if more > 0 else ''}"
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if self.keeps_own and isinstance(item, ScriptItem) and call.when == "call":
            result = item.stash.get(RESULT_KEY, None)
            record = result["record"] if result is not None else None
            if record is not None:
                rootdir = str(self.config.rootpath) + os.sep
                files = sorted(
                    r[len(rootdir) :]
                    for r in record["reads"]
                    if r.startswith(rootdir) and r.endswith(".py")
                )
                imports = {"files": files, "distributions": sorted(record["distributions"])}
                setattr(report, _IMPORTS_ATTR, imports)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        imports = getattr(report, _IMPORTS_ATTR, None)
        if isinstance(imports, dict):
            self.fresh[report.nodeid] = imports

    def pytest_sessionfinish(self) -> None:
        if hasattr(self.config, "workerinput"):  # the controller keeps them and tells
            output = self.config.workeroutput  # type: ignore[attr-defined]
            output[_DROPPED_OUTPUT_KEY] = dict(self.launcher.dropped)
            return
        cache = getattr(self.config, "cache", None)
        if not self.fresh or cache is None:
            return
        kept: Any = cache.get(CACHE_KEY, {})
        cache.set(CACHE_KEY, {**(kept if isinstance(kept, dict) else {}), **self.fresh})

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        dropped = (getattr(node, "workeroutput", None) or {}).get(_DROPPED_OUTPUT_KEY)
        if isinstance(dropped, dict):
            self.dropped_by_workers.update(dropped)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for name, why in {**self.dropped_by_workers, **self.launcher.dropped}.items():
            line = f"codomyrmex-exec: warm: auto preload dropped {name}: {why}"
            terminalreporter.write_line(line)
