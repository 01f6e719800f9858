"""The docs stay true: library examples run, and every option and ini key is documented."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
LIBRARY = (DOCS / "library.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", LIBRARY, re.S)
EXAMPLES = re.findall(r"```python\n(.*?)```\s*Output:\s*```text\n(.*?)```", LIBRARY, re.S)
"""Each example's code and the output the page shows for it (``*``: differs per run)."""


def test_library_page_has_an_example_per_entry_point() -> None:
    assert len(EXAMPLES) == len(BLOCKS), "an example without an output block after it"
    for name in ("run_script", "ParallelRunner", "AsyncParallelRunner", "AsyncScheduler"):
        assert any(name in code for code, _ in EXAMPLES), name


@pytest.mark.parametrize(
    ("code", "shown"), EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))]
)
def test_library_example_prints_what_the_page_shows(
    code: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exec(compile(code, "docs/library.md", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    expected = shown.splitlines()
    assert len(printed) == len(expected), (printed, expected)
    for line, pattern in zip(printed, expected, strict=True):
        assert fnmatch.fnmatchcase(line, pattern), (line, pattern)


CONFIGURATION = (DOCS / "configuration.md").read_text(encoding="utf-8")


def _table(heading: str) -> list[list[str]]:
    """The body rows of the first table under ``heading`` in configuration.md, as cells."""
    section = CONFIGURATION.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _code(cell: str) -> str:
    return cell.strip("`")


def test_configuration_reference_lists_every_option_and_ini_key(
    pytestconfig: pytest.Config,
) -> None:
    group = pytestconfig._parser.getgroup("codomyrmex-exec")  # no public way to list a group
    inidict = pytestconfig._parser._inidict  # nor to list ini keys with their defaults
    rows = _table("## Options and ini keys")
    options = {_code(row[0]): row for row in rows if row[0]}
    ini_rows = {_code(row[1]): row for row in rows if row[1]}
    registered = {option.names()[0]: option for option in group.options}
    assert set(options) == set(registered), "options: documented != registered"
    assert set(ini_rows) == {key for key in inidict if key.startswith("exec_")}
    for name, option in registered.items():
        help_text = " ".join(str(option.attrs().get("help", "")).split())
        ini = _code(options[name][1])
        if ini:  # --exec-shard, --exec-update-output: one run's decision, not the project's
            assert f"ini: {ini}" in help_text, f"{name}: its help names another ini key than {ini}"
    for key, row in ini_rows.items():
        default = inidict[key][2]
        if isinstance(default, list):
            default = " ".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()
        if default:
            assert _code(row[2]) == default, f"{key}: documented default {row[2]}, code {default}"


def _shown(field: dataclasses.Field[object]) -> str:
    """A ScriptSpec field's default as the reference writes it."""
    if field.default_factory is not dataclasses.MISSING:
        value: object = field.default_factory()
    else:
        value = field.default
    if isinstance(value, frozenset):
        return repr(sorted(value))
    return repr(value)


def test_configuration_reference_lists_every_exec_mark_keyword() -> None:
    from pytest_codomyrmex_exec.engine import RUN_KEYWORDS, ScriptSpec

    rows = {_code(row[0]): _code(row[1]) for row in _table("## `exec` mark keywords")}
    assert list(rows) == list(RUN_KEYWORDS), "exec mark keywords: documented != RUN_KEYWORDS"
    for field in dataclasses.fields(ScriptSpec):
        if field.name != "script":
            assert rows[field.name] == _shown(field), f"{field.name}: documented default differs"


def test_site_builds_without_warnings(tmp_path: Path) -> None:
    """``mkdocs build --strict``: broken links, anchors, pages left out of the nav and API
    docstrings that do not resolve all fail it (the ``docs`` extra installs mkdocs)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    root = DOCS.parent
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert "WARNING" not in build.stderr, build.stderr
    pages = {path.parent.name for path in tmp_path.glob("*/index.html")}
    assert {"configuration", "api", "hooks", "troubleshooting", "report"} <= pages
    api = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    assert "Run scripts concurrently" in api, "the API page lacks ParallelRunner's docstring"
    raw = {
        f"{page.relative_to(tmp_path)}: {match.group(0)}"
        for page in tmp_path.rglob("*.html")
        for match in RAW_ROLE.finditer(page.read_text(encoding="utf-8"))
    }
    assert not raw, f"Sphinx roles printed as raw text: {sorted(raw)}"
    # A role naming a documented object becomes a link to its section.
    assert 'href="#pytest_codomyrmex_exec.engine.spec.ScriptSpec"><code>ScriptSpec' in api


RAW_ROLE = re.compile(r":(?:py:)?[a-z]+:(?:<code>[^<]*</code>|`[^`]*`)")
"""A docstring role as mkdocstrings prints it when nothing renders it: ``:class:<code>X</code>``."""
