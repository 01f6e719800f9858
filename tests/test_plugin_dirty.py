"""``exec_dirty``: the files scripts leave in the source tree, on a tree like pyparsing's
examples, whose scripts rewrite the ``.html`` diagrams tracked beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

DIAGRAM = """\
import os, pathlib, tempfile
import helper  # a neighbour: the import system writes its .pyc, not the script

here = pathlib.Path(__file__).parent
(here / "greet_diagram.html").write_text(helper.DIAGRAM)  # over the tracked one
os.makedirs("out", exist_ok=True)
pathlib.Path("out/result.txt").write_text("done")
pathlib.Path("scratch.tmp").write_text("x")  # created and removed: left nothing
os.remove("scratch.tmp")
with tempfile.NamedTemporaryFile("w", delete=False) as elsewhere:  # not the tree
    elsewhere.write("x")
os.remove(elsewhere.name)
"""

REGENERATED = """\
import os
print(open("helper.py").read()[:5])
tracked = open("same.html").read()
open("same.html", "w").write(tracked)  # regenerated as it was: nothing for git status
with open("same.tmp", "w") as fh:  # and again atomically, renamed onto it
    fh.write(tracked)
os.replace("same.tmp", "same.html")
"""

MANY = """\
for index in range(12):
    open(f"many{index:02}.txt", "w").close()
"""


def write_examples(px: ExecPytester) -> Path:
    examples = px.path / "examples"
    px.script("examples/greet_script.py", DIAGRAM)
    px.script("examples/many_script.py", MANY)
    px.script("examples/clean_script.py", REGENERATED)
    px.script("examples/helper.py", "DIAGRAM = '<svg>new</svg>'\n")
    (examples / "greet_diagram.html").write_text("<svg>tracked</svg>")
    (examples / "same.html").write_text("<svg>unchanged</svg>")
    return examples


def files_of(folder: Path) -> set[str]:
    return {
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def stream(px: ExecPytester) -> dict[str, object]:
    """Each script's ``dirty`` in the results file, by script file name."""
    lines = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    return {Path(line["nodeid"].split("::")[0]).name: line["dirty"] for line in lines}


@pytest.mark.modes("inline", "async", "process-warm")
def test_the_summary_and_the_results_file_list_what_scripts_wrote(
    px: ExecPytester, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # helper.py's .pyc is written
    examples = write_examples(px)
    result = px.run(*px.report_args(), *mode)
    result.assert_outcomes(passed=3)  # warn: listed, not failed
    assert list((examples / "__pycache__").glob("helper.*.pyc")), "no .pyc to leave out"
    many = ", ".join(f"examples/many{index:02}.txt" for index in range(10))
    result.stdout.fnmatch_lines(
        [
            "wrote into the source tree (ini exec_dirty):",
            "  examples/greet_script.py: examples/greet_diagram.html, examples/out/result.txt",
            f"  examples/many_script.py: {many} and 2 more",
        ]
    )
    assert "clean_script.py:" not in result.stdout.str()
    dirty = stream(px)
    assert dirty["greet_script.py"] == {
        "count": 2,
        "files": ["examples/greet_diagram.html", "examples/out/result.txt"],
    }
    assert dirty["many_script.py"] == {
        "count": 12,
        "files": [f"examples/many{index:02}.txt" for index in range(12)],
    }
    assert dirty["clean_script.py"] == {"count": 0, "files": []}


@pytest.mark.modes("inline", "async-warm")
def test_fail_names_the_files_and_a_copy_keeps_the_scripts_clean(
    px: ExecPytester, mode: Mode
) -> None:
    examples = write_examples(px)
    px.ini(exec_dirty="fail")
    before = files_of(examples)

    # From copies of their folder the same scripts write nothing that matters, and pass.
    clean = px.run("--exec-cwd", "copy", *px.report_args(), *mode)
    clean.assert_outcomes(passed=3)
    assert files_of(examples) == before
    assert (examples / "greet_diagram.html").read_text() == "<svg>tracked</svg>"
    assert all(dirty == {"count": 0, "files": []} for dirty in stream(px).values())

    result = px.run(*mode)
    result.assert_outcomes(passed=1, failed=2)
    # Each its own match: in parallel, scripts are reported in the order they finish.
    for lines in (
        [
            "FAILED examples/greet_script.py::greet_script - wrote 2 files into the source "
            "tree: examples/greet_diagram.html, examples/out/result.txt"
        ],
        [
            "FAILED examples/many_script.py::many_script - wrote 12 files into the source "
            "tree: examples/many00.txt, *"
        ],
        [
            "examples/many_script.py failed: wrote 12 files *many09.txt and 2 more (after *",
            "exec_dirty = fail: run it from a copy of its folder*",
        ],
    ):
        result.stdout.fnmatch_lines(lines)


def test_ignore_records_nothing_q_says_it_in_a_line_and_a_bad_value_names_the_key(
    px: ExecPytester,
) -> None:
    examples = write_examples(px)
    px.ini(exec_dirty="ignore")
    result = px.run(*px.report_args())
    result.assert_outcomes(passed=3)
    assert "wrote into the source tree" not in result.stdout.str()
    assert set(stream(px).values()) == {None}

    # Back as tracked: rewriting what the ignored run left, unchanged, would write nothing.
    for left in examples.glob("many*.txt"):
        left.unlink()
    (examples / "greet_diagram.html").write_text("<svg>tracked</svg>")
    px.ini(exec_dirty="warn")
    quiet = px.run("-q")
    quiet.stdout.fnmatch_lines(
        ["codomyrmex-exec: 3 scripts*(3 passed; 2 wrote into the source tree)"]
    )

    px.ini(exec_dirty="loud")
    result = px.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option 'exec_dirty': expected one of warn, fail, ignore, got 'loud'*"]
    )
