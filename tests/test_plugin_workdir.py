"""``--exec-cwd copy``: each script runs from a throwaway copy of its folder.

Real sessions on a small example tree that reads data beside itself and rewrites a tracked
file in place, as pyparsing's examples do with their ``.html`` diagrams.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode
from test_plugin_shutdown import NO_GUARDIAN, Session

from pytest_codomyrmex_exec.plugin import workdir

COPIES = "pytest-exec-copies-*"

READER = """\
import os, pathlib
here = pathlib.Path(__file__).parent
table = (here / "sub" / "table.csv").read_text()
data = pathlib.Path("data.txt").read_text()
with open("diagram.html", "w") as out:  # in place, over the tracked file
    out.write("<new/>")
pathlib.Path("made.txt").write_text(data + table)
with open(os.environ["SEEN"], "a") as seen:
    seen.write(f"{os.getcwd()}\\n{__file__}\\n")
"""

BOOM = """\
def parse():
    raise ValueError("bad grammar")

parse()
"""


def write_tree(px: ExecPytester) -> Path:
    examples = px.path / "examples"
    px.script("examples/reader_script.py", READER)
    px.script("examples/boom_script.py", BOOM)
    (examples / "data.txt").write_text("42\n")
    (examples / "diagram.html").write_text("<old/>")
    (examples / "sub").mkdir()
    (examples / "sub" / "table.csv").write_text("a,b\n")
    return examples


def add_pinned_script(examples: Path) -> None:
    """A script whose expectation file pins the paths it prints as placeholders."""
    pinned = "import os\nprint(__file__)\nprint(os.path.join(os.getcwd(), 'data.txt'))\n"
    (examples / "where_script.py").write_text(pinned)
    (examples / "where_script.stdout").write_text("[SCRIPT]\n[CWD]/data.txt\n")


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture
def tmpdir_env(px: ExecPytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The inner sessions' system temp folder, to see what they leave in it."""
    folder = px.path / "systemp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


@pytest.mark.modes("inline", "process", "async-warm")
def test_copy_keeps_the_tree_clean_and_shows_real_paths(
    px: ExecPytester, mode: Mode, tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEN", str(px.path / "seen.txt"))
    examples = write_tree(px)
    add_pinned_script(examples)
    before = snapshot(examples)
    junit_output = ("-o", "junit_logging=all")
    args = ("--exec-cwd", "copy", "--exec-live", *px.junit_args(), *junit_output)
    result = px.run(*args, *px.report_args(), *mode)
    result.assert_outcomes(passed=2, failed=1)  # where_script: its output check passed

    # The reader read its neighbours (data beside it, a subfolder's file) and wrote in place,
    # but into its copy: the tree is as it was.
    assert snapshot(examples) == before
    cwd, file = px.lines("seen.txt")
    assert Path(cwd).name == "examples"
    assert Path(cwd) != examples
    assert Path(cwd).is_relative_to(tmpdir_env), cwd
    assert file == str(Path(cwd) / "reader_script.py")

    # What the user reads names the real script: traceback, live lines, junit, results file,
    # and the output check above.
    frame = f'File "{examples / "boom_script.py"}", line 2, in parse'
    assert frame in result.stdout.str()
    result.stdout.fnmatch_lines([f"*boom_script.py] *{frame}"])  # --exec-live's line
    result.stdout.fnmatch_lines([f"*where_script.py] {examples / 'where_script.py'}"])
    junit = px.junit_path.read_text()
    assert str(examples / "boom_script.py") in junit
    report = px.results_path.read_text()
    assert str(examples / "boom_script.py") in report
    for text in (result.stdout.str(), junit, report):
        assert str(tmpdir_env) not in text

    # Every copy is gone with the session.
    assert not list(tmpdir_env.glob(COPIES))


def test_an_exec_cwd_mark_wins_over_copy(
    px: ExecPytester, tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEN", str(px.path / "seen.txt"))
    examples = write_tree(px)
    (examples / "boom_script.py").unlink()
    marked = "# pytest.mark.exec(cwd='.')\n" + READER
    (examples / "reader_script.py").write_text(marked)
    px.ini(exec_cwd="copy")
    px.run().assert_outcomes(passed=1)
    assert (examples / "diagram.html").read_text() == "<new/>"
    assert px.lines("seen.txt") == [str(examples), str(examples / "reader_script.py")]


@pytest.mark.modes("async")
def test_copies_are_removed_after_x_and_ctrl_c(
    px: ExecPytester, mode: Mode, tmpdir_env: Path
) -> None:
    px.script("fail_script.py", "raise SystemExit(1)\n")
    px.script("slow_script.py", "import time\ntime.sleep(30)\n", track=True)
    result = px.run("--exec-cwd", "copy", "-x", *mode)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not list(tmpdir_env.glob(COPIES))

    started = len(px.pids())  # -x may have stopped the slow script before it said so
    session = Session(px, ["--exec-cwd", "copy", *mode, *NO_GUARDIAN])
    px.wait_for_pids(started + 1)  # the slow script of this session runs, from its copy
    assert list(tmpdir_env.glob(COPIES)), "the copies exist while scripts run"
    session.end(signal.SIGINT)
    assert session.proc.returncode == pytest.ExitCode.INTERRUPTED, session.output
    assert not list(tmpdir_env.glob(COPIES))
    px.assert_no_process_left(at_least=started + 1)


def test_a_copy_copies_within_its_budget_and_links_the_rest(tmp_path: Path) -> None:
    source = tmp_path / "examples"
    (source / "deep" / "deeper").mkdir(parents=True)
    for index in range(workdir.COPY_FILES + 20):
        (source / f"f{index:03}.txt").write_text("original")
    with open(source / "big.bin", "wb") as big:  # sparse: past the byte budget, on no disk
        big.truncate(workdir.COPY_BYTES + 1)
    (source / "deep" / "deeper" / "far.txt").write_text("far")
    (source / "__pycache__").mkdir()
    (tmp_path / "copies").mkdir()

    copy = workdir.copy_folder(source, tmp_path / "copies")
    assert copy.name == "examples"
    entries = list(copy.iterdir())
    real = [entry for entry in entries if not entry.is_symlink()]
    linked = [entry for entry in entries if entry.is_symlink()]
    assert len(real) == workdir.COPY_FILES  # small files first, up to the budget
    assert copy / "big.bin" in linked
    assert copy / "deep" in linked
    assert not (copy / "__pycache__").exists()
    assert (copy / "deep" / "deeper" / "far.txt").read_text() == "far"  # through the link

    # A copied file is the script's own: rewriting it in place (what a hard link would pass
    # on to the original) leaves the original alone.
    copied = real[0]
    with open(copied, "r+") as stream:
        stream.write("CHANGED!")
    assert (source / copied.name).read_text() == "original"
    assert os.stat(copied).st_ino != os.stat(source / copied.name).st_ino
