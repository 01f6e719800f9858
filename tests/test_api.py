"""The public library API: importable names, and no pytest or pluggy behind them."""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_codomyrmex_exec
from pytest_codomyrmex_exec import InvalidSpec, ScriptSpec, ScriptStatus, run_script

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


def test_job_statuses_are_what_real_runs_end_with(tmp_path: Path) -> None:
    from pytest_codomyrmex_exec import (
        AsyncJob,
        AsyncJobStatus,
        AsyncScheduler,
        ScriptStatus,
        run_script_async,
    )

    script = tmp_path / "ok_script.py"
    script.write_text("print('ok')\n")

    async def boom() -> None:
        raise ValueError("boom")

    async def main() -> tuple[AsyncScheduler, dict[str, AsyncJob]]:
        scheduler = AsyncScheduler(max_concurrency=1)
        scheduler.schedule(run_script_async, name="script", args=(script,))
        scheduler.schedule(boom, name="raises")
        never = scheduler.schedule(boom, name="never", priority=10)
        job = scheduler.get_job(never)
        assert job is not None
        assert job.status == AsyncJobStatus.PENDING
        scheduler.cancel(never)
        return scheduler, await scheduler.run_all()

    scheduler, jobs = asyncio.run(main())
    by_name = {job.name: job for job in jobs.values()}
    assert by_name["script"].result["status"] == ScriptStatus.PASSED
    assert by_name["raises"].error == "ValueError: boom"
    # Statuses are plain strings to JSON and to list_jobs, and each run ended in a final one.
    statuses = json.loads(json.dumps({name: job.status for name, job in by_name.items()}))
    assert statuses == {"script": "completed", "raises": "failed", "never": "cancelled"}
    assert all(job.status.is_final for job in jobs.values())
    assert [job.name for job in scheduler.list_jobs("failed")] == ["raises"]


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


# -- ScriptSpec validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"args": ["ok", "\udc80"]}, "args"),
        ({"env": {"NAME": "\udc80"}}, "env['NAME']"),
        ({"env": {"\ud800": "1"}}, "env key"),
        ({"stdin": "line\n\udcff"}, "stdin"),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_keyword(
    tmp_path: Path, keywords: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(named) + " must be valid Unicode text"):
        ScriptSpec.build(tmp_path / "a_script.py", **keywords)


@pytest.mark.parametrize("priority", [10**30, 2**31, -(2**31) - 1])
def test_a_priority_beyond_32_bits_is_refused_naming_the_range(
    tmp_path: Path, priority: int
) -> None:
    with pytest.raises(InvalidSpec, match=r"priority must be from -2147483648 to 2147483647"):
        ScriptSpec.build(tmp_path / "a_script.py", priority=priority)


def test_the_32_bit_priority_range_is_accepted_to_its_ends(tmp_path: Path) -> None:
    for priority in (-(2**31), 2**31 - 1):
        assert ScriptSpec.build(tmp_path / "a_script.py", priority=priority).priority == priority


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), 1e9, "3", True])
def test_kill_grace_is_refused_when_no_stop_could_end_with_it(
    tmp_path: Path, grace: object
) -> None:
    with pytest.raises(ValueError, match="kill_grace must be"):
        ScriptSpec.build(tmp_path / "a_script.py", kill_grace=grace)


def test_kill_grace_defaults_to_one_second_and_may_be_zero(tmp_path: Path) -> None:
    assert ScriptSpec.build(tmp_path / "a_script.py").kill_grace == 1.0
    assert ScriptSpec.build(tmp_path / "a_script.py", kill_grace=0).kill_grace == 0.0


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("pkg..tool", "must be a dotted module name"),
        ("pkg.tool-x", "must be a dotted module name"),
        ("other.tool", "does not name the script"),
        ("tool.extra", "does not name the script"),
    ],
)
def test_module_must_be_a_dotted_name_that_names_the_script(
    tmp_path: Path, module: str, message: str
) -> None:
    with pytest.raises(InvalidSpec, match=f"module.*{message}"):
        ScriptSpec.build(tmp_path / "pkg" / "tool.py", module=module)
    with pytest.raises(InvalidSpec, match="not both"):
        ScriptSpec.build(tmp_path / "pkg" / "tool.py", module="pkg.tool", as_module=True)


def test_module_runs_a_module_of_a_namespace_package_with_python_m(tmp_path: Path) -> None:
    # No __init__.py anywhere: as_module stops at the script's own folder.
    tool = tmp_path / "examples" / "tiny" / "tiny_run.py"
    tool.parent.mkdir(parents=True)
    (tmp_path / "examples" / "helpers.py").write_text("WHO = 'helper'\n")
    tool.write_text(
        "import sys\n"
        "from examples.helpers import WHO\n"
        "print(__name__, __spec__.name, WHO, sys.argv[1:])\n"
    )
    result = run_script(tool, module="examples.tiny.tiny_run", args=["x"], timeout=60)
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    assert result["stdout"] == "__main__ examples.tiny.tiny_run helper ['x']\n"
    cold = run_script(tool, as_module=True, timeout=60)
    assert cold["status"] == ScriptStatus.FAILED  # what module= is for
    assert "No module named 'examples'" in cold["stderr"]


def test_the_api_page_documents_exactly_the_public_names() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text("utf-8")
    documented = re.findall(r"^::: pytest_codomyrmex_exec\.engine\.(\w+)\.(\w+)$", page, re.M)
    assert sorted(name for _, name in documented) == sorted(pytest_codomyrmex_exec.__all__)
    from pytest_codomyrmex_exec import engine

    for module, name in documented:  # each where it is defined, the page's link target
        home = importlib.import_module(f"pytest_codomyrmex_exec.engine.{module}")
        assert getattr(engine, name) is getattr(home, name)
