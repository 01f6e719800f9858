"""The public library API: importable names, and no pytest or pluggy behind them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest_codomyrmex_exec

PACKAGE = Path(pytest_codomyrmex_exec.__file__).parent

PUBLIC = {
    "run_script",
    "run_script_async",
    "ParallelRunner",
    "ExecutionResult",
    "AsyncParallelRunner",
    "AsyncExecutionResult",
    "AsyncScheduler",
    "AsyncJob",
    "AsyncJobStatus",
    "FailureCause",
    "ScriptSpec",
    "RUN_KEYWORDS",
    "Subscription",
    "run_spec",
    "run_spec_async",
}
PLUGIN_ONLY = {"kill_tagged", "plan_launch", "COLD", "start_guardian", "make_result"}


def test_public_names_are_exported() -> None:
    missing = PUBLIC - set(pytest_codomyrmex_exec.__all__)
    assert not missing
    for name in pytest_codomyrmex_exec.__all__:
        assert getattr(pytest_codomyrmex_exec, name) is not None


def test_the_engine_exports_the_library_and_not_the_plugins_internals() -> None:
    from pytest_codomyrmex_exec import engine

    assert engine.__all__ == pytest_codomyrmex_exec.__all__
    assert set(dir(pytest_codomyrmex_exec)) >= set(engine.__all__)
    for name in PLUGIN_ONLY:
        assert not hasattr(engine, name)
        assert not hasattr(pytest_codomyrmex_exec, name)


def test_type_checkers_see_every_public_name_as_exported() -> None:
    # mypy --strict (no implicit re-export) only lets users import "from .x import Y as Y".
    tree = ast.parse((PACKAGE / "engine" / "__init__.py").read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If))
    aliases = [
        alias for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    ]
    assert sorted(alias.name for alias in aliases) == sorted(pytest_codomyrmex_exec.__all__)
    assert all(alias.asname == alias.name for alias in aliases)


def test_loading_the_plugin_imports_neither_asyncio_nor_the_pools() -> None:
    # What every pytest start-up pays: the plugin module and what it imports at the top.
    probe = (
        "import json, sys\n"
        "import pytest_codomyrmex_exec.plugin\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert "pytest_codomyrmex_exec.plugin.items" in loaded  # the probe saw the plugin load
    heavy = {
        "asyncio",
        "concurrent.futures.thread",
        "concurrent.futures.process",
        "pytest_codomyrmex_exec.engine.parallel",
        "pytest_codomyrmex_exec.engine.scheduler",
        "pytest_codomyrmex_exec.engine.forkserver",
    }
    assert loaded & heavy == set()


def test_library_import_pulls_in_neither_pytest_nor_pluggy() -> None:
    # A fresh interpreter: this one has pytest loaded already.
    probe = (
        "import json, sys\n"
        "import pytest_codomyrmex_exec as lib\n"
        "for name in lib.__all__: getattr(lib, name)\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('pytest', '_pytest', 'pluggy'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_job_status_values() -> None:
    from pytest_codomyrmex_exec import AsyncJobStatus

    assert {s.value for s in AsyncJobStatus} == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    }


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every import statement of the module, wherever it stands
    (top level, a function, a TYPE_CHECKING block), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            # "from . import hookspecs" imports a module, not a name of the package.
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            found.extend((module, []) for module in submodules)
            if len(submodules) < len(names):
                found.append((target, names))
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target, _ in _imports(name, path, modules) if target in modules} - {name}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = _import_graph()
    # The graph is real: the plugin's entry point reaches its items, items reach the engine.
    assert "pytest_codomyrmex_exec.plugin.items" in graph["pytest_codomyrmex_exec.plugin"]
    assert "pytest_codomyrmex_exec.engine.run" in graph["pytest_codomyrmex_exec.plugin.items"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_plugin_imports_no_private_engine_name() -> None:
    modules = _modules()
    private = [
        f"{name}: {target} {imported}"
        for name, path in modules.items()
        if name.startswith("pytest_codomyrmex_exec.plugin")
        for target, imported in _imports(name, path, modules)
        if target.startswith("pytest_codomyrmex_exec.engine")
        and any(part.startswith("_") for part in [*target.split("."), *imported])
    ]
    assert private == []
