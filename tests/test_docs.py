"""The docs stay true: library examples run, and every option and ini key is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
LIBRARY = (DOCS / "library.md").read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", LIBRARY, re.S)


def test_library_page_has_an_example_per_entry_point() -> None:
    for name in ("run_script", "ParallelRunner", "AsyncParallelRunner", "AsyncScheduler"):
        assert any(name in block for block in EXAMPLES), name


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_library_example_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block, "docs/library.md", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip()  # each example prints what it shows


def test_every_option_and_ini_key_is_documented(pytestconfig: pytest.Config) -> None:
    page = (DOCS / "plugin.md").read_text(encoding="utf-8")
    group = pytestconfig._parser.getgroup("codomyrmex-exec")  # no public way to list a group
    names = [name for option in group.options for name in option.names()]
    assert names, "the plugin's option group is empty"
    ini_keys = [key for key in pytestconfig._parser._inidict if key.startswith("exec_")]
    for name in [*names, *ini_keys]:
        assert f"`{name}" in page, f"{name} is not documented in docs/plugin.md"
