"""--exec-changed: after a full run only the scripts whose inputs changed run again, judged by
content (never mtimes), with the deps store in pytest's cache or a shared file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_TIMEOUT, ExecPytester, Mode

from pytest_codomyrmex_exec.deps_file import FileHasher


def write_tree(px: ExecPytester) -> None:
    """Modules, a data file, a failing script, a pure script and an ordinary test."""
    px.ini()
    px.script("lib.py", "VALUE = 1\n")
    px.script("other.py", "VALUE = 2\n")
    px.script("data.txt", "first\n")
    px.script("uses_lib_script.py", "import lib\nprint(lib.VALUE)\n")
    px.script("uses_other_script.py", "import other\nprint(other.VALUE)\n")
    px.script("reads_data_script.py", "print(open('data.txt').read())\n")
    px.script("fail_script.py", "raise SystemExit(3)\n")
    px.script("pure_script.py", "print(6 * 7)\n")
    px.script("test_plain.py", "def test_plain():\n    pass\n")


def ran(px: ExecPytester, result: pytest.RunResult) -> set[str]:
    """The names of the items that ran (junit), after checking the session ended; the junit
    file is taken away, so that the next call cannot read this session's."""
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout
    names = set(px.junit_by_name())
    px.junit_path.unlink()
    return names


def unchanged(result: pytest.RunResult) -> int:
    found = re.findall(r"(\d+) scripts? deselected as unchanged", result.stdout.str())
    assert found, result.stdout
    return int(found[-1])


@pytest.mark.modes("inline", "async", "inline-warm")
def test_only_the_scripts_whose_inputs_changed_run_again(px: ExecPytester, mode: Mode) -> None:
    write_tree(px)
    args = ("--exec-changed", "-v", *px.junit_args(), *mode)
    every = {
        "uses_lib_script",
        "uses_other_script",
        "reads_data_script",
        "fail_script",
        "pure_script",
        "test_plain",
    }

    first = px.run(*args)
    assert ran(px, first) == every
    first.assert_outcomes(passed=5, failed=1)

    # Nothing changed: the failing script runs again, and the ordinary test.
    second = px.run(*args)
    assert ran(px, second) == {"fail_script", "test_plain"}
    assert unchanged(second) == 4
    second.assert_outcomes(passed=1, failed=1, deselected=4)
    assert "runs: fail_script.py::fail_script: failed last time" in second.stdout.str()

    # A module and a data file change: only their importer and their reader run.
    (px.path / "lib.py").write_text("VALUE = 10\n")
    (px.path / "data.txt").write_text("second\n")
    third = px.run(*args)
    assert ran(px, third) == {"uses_lib_script", "reads_data_script", "fail_script", "test_plain"}
    assert "runs: uses_lib_script.py::uses_lib_script: lib.py changed" in third.stdout.str()

    # A new mark, a new script, and a module rewritten with the same bytes and a new mtime
    # (a git checkout): the marked and the new script run, the module's importer does not.
    pure = px.path / "pure_script.py"
    pure.write_text("# pytest.mark.exec(timeout=30)\n" + pure.read_text())
    px.script("new_script.py", "print('new')\n")
    other = px.path / "other.py"
    content, stat = other.read_bytes(), other.stat()
    other.unlink()
    other.write_bytes(content)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    fourth = px.run(*args)
    assert ran(px, fourth) == {"pure_script", "new_script", "fail_script", "test_plain"}
    assert "pure_script.py::pure_script: its settings changed" in fourth.stdout.str()
    assert "new_script.py::new_script: no earlier run recorded" in fourth.stdout.str()


def test_the_deps_file_is_shared_and_a_bad_one_is_ignored(px: ExecPytester) -> None:
    write_tree(px)
    deps = px.path / "ci" / "deps.json"
    deps.parent.mkdir()
    deps.write_text('{"format": "codomyrmex-exec deps", "version": 1, "scripts": {<<<<<<<')
    args = ("--exec-changed", f"--exec-deps-file={deps}", *px.junit_args())

    # Corrupt: a warning naming the file, everything runs, and the file is written anew.
    first = px.run(*args)
    assert len(ran(px, first)) == 6
    first.stdout.fnmatch_lines([f"*--exec-changed ignored {deps}: not JSON*every script ran*"])
    stored = json.loads(deps.read_text())
    assert stored["format"] == "codomyrmex-exec deps"
    assert stored["scripts"]["fail_script.py::fail_script"]["outcome"] == "failed"

    # Another checkout of the same tree (another CI machine) reads the same file: its
    # paths are from the rootdir, and no hint of this machine is in it.
    clone = px.path.parent / f"{px.path.name}-clone"
    shutil.copytree(px.path, clone, ignore=shutil.ignore_patterns(".pytest_cache", "ci"))
    clone_run = px.pytester.runpytest_subprocess(
        *args, f"--rootdir={clone}", str(clone), "-p", "no:cacheprovider"
    )
    clone_run.stdout.fnmatch_lines(["*4 scripts deselected as unchanged*"])
    assert str(px.path) not in deps.read_text()

    # Someone else's JSON, named by the ini keys: ignored with a warning, left as it was.
    foreign = px.path / "package.json"
    foreign.write_text('{"name": "site"}\n')
    px.ini(exec_changed="true", exec_deps_file="package.json")
    third = px.run(*px.junit_args())
    assert len(ran(px, third)) == 6
    third.stdout.fnmatch_lines([f"*ignored {foreign}: not a deps file*left as it is*"])
    assert foreign.read_text() == '{"name": "site"}\n'


def test_the_store_in_pytests_cache_and_a_run_where_nothing_changed(px: ExecPytester) -> None:
    px.ini()
    px.script("pure_script.py", "print(1)\n")
    refused = px.run_inprocess("--exec-changed", "-p", "no:cacheprovider")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--exec-changed: pytest's cache is disabled*--exec-deps-file*"])

    # A store in pytest's cache that is cut short: a warning naming it, and a new one.
    cached = px.path / ".pytest_cache" / "v" / "codomyrmex_exec" / "deps"
    cached.parent.mkdir(parents=True)
    cached.write_text('{"format": "codomyrmex-exec deps", "version"')
    broken = px.run("--exec-changed")
    broken.stdout.fnmatch_lines([f"*--exec-changed ignored {cached}: not JSON*every script ran*"])
    broken.assert_outcomes(passed=1)
    assert json.loads(cached.read_text())["scripts"]

    # Run by another interpreter than pytest's (a virtualenv's base: the link resolved), which
    # is asked once per session what it is and which versions it has.
    other = str(Path(sys.executable).resolve())
    args = ("--exec-changed", "-p", "no:cacheprovider", "--exec-deps-file=deps.json")
    px.run(*args, f"--exec-python={other}")
    stored = json.loads((px.path / "deps.json").read_text())["scripts"]
    assert stored["pure_script.py::pure_script"]["inputs"]["interpreter"].startswith(other + " ")
    again = px.run(*args, f"--exec-python={other}", "-q")
    assert again.ret == pytest.ExitCode.OK, "nothing to run because nothing changed is no failure"
    assert again.stdout.str().count("1 script deselected as unchanged") == 1, "-q shows it once"
    again.assert_outcomes(deselected=1)


def test_what_the_recorder_could_not_follow_runs_every_time(px: ExecPytester) -> None:
    px.ini()
    outside = px.path.parent / f"{px.path.name}-settings.txt"
    outside.write_text("a\n")
    px.script("outside_script.py", f"print(open({str(outside)!r}).read())\n")
    # A program that is not Python: what it does inside is unseen, but the program is hashed.
    tool = px.path / "tools" / "tool"
    tool.parent.mkdir()
    shutil.copy(shutil.which("true") or "/bin/true", tool)
    px.script("tool_script.py", f"import subprocess\nsubprocess.run([{str(tool)!r}])\n")
    px.script("shell_script.py", "import os\nos.system('true')\n")  # a shell: runs every time
    args = ("--exec-changed", "-v", *px.junit_args())
    px.run(*args)

    second = px.run(*args)
    assert ran(px, second) == {"shell_script"}
    second.stdout.fnmatch_lines(["*runs: shell_script.py::shell_script: ran a shell command*"])

    outside.write_text("b\n")
    shutil.copy(shutil.which("false") or "/bin/false", tool)
    third = px.run(*args)
    assert ran(px, third) == {"shell_script", "outside_script", "tool_script"}
    third.stdout.fnmatch_lines([f"*runs: outside_script.py::outside_script: {outside} changed"])
    third.stdout.fnmatch_lines(["*runs: tool_script.py::tool_script: tools/tool changed"])


def test_sharded_runs_merge_their_deps_and_share_what_is_left(px: ExecPytester) -> None:
    """The CI recipe (docs/ci.md): a full run in two shards, each writing its own deps file,
    merged; then every shard reads the merged file, and the unchanged scripts go before the
    split, so the shards share what is left. Shard 1 runs under xdist both times: its
    workers decide alike and its controller writes the file."""
    write_tree(px)
    xdist = ("-n", "2")
    for k, more in ((1, xdist), (2, ())):
        full = px.run(
            "--exec-changed", f"--exec-shard={k}/2", f"--exec-deps-file=deps{k}.json", *more
        )
        assert "created: 2/2 workers" in full.stdout.str() or not more
    merge = [sys.executable, "-m", "pytest_codomyrmex_exec", "merge-deps", "deps.json"]
    done = subprocess.run(
        [*merge, "deps1.json", "deps2.json"],
        cwd=px.path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "merge-deps: 5 scripts from 2 files in deps.json" in done.stdout
    runs: list[str] = []
    for k, more in ((1, xdist), (2, ())):
        shard = px.run(
            "--exec-changed",
            f"--exec-shard={k}/2",
            "--exec-deps-file=deps.json",
            *px.junit_args(),
            *more,
        )
        assert unchanged(shard) == 4
        runs += ran(px, shard)
    assert sorted(runs) == ["fail_script", "test_plain"]


def test_a_hint_never_hides_a_change_of_content() -> None:
    """``FileHasher``: the stat hint spares reading a file only while size, mtime, ctime and
    inode are what they were, and only for a file that had settled when it was hashed."""
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"codomyrmex-hint-{os.getpid()}.txt"
    try:
        path.write_text("aaaa")
        fresh = FileHasher()
        first = fresh.digest(str(path))
        assert fresh.digest(str(path)) == first
        assert fresh.hashed == 2, "a file changed just now must be read again"

        settled = FileHasher(settle=0)
        assert settled.digest(str(path)) == first
        assert settled.digest(str(path)) == first
        assert settled.hashed == 1, "a settled file is answered from its hint"
        # Same size, the old mtime put back: ctime moved, so the content is read again.
        before = path.stat()
        path.write_text("bbbb")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert settled.digest(str(path)) != first
        assert settled.hashed == 2
        assert settled.digest(str(path.with_suffix(".none"))) is None
    finally:
        path.unlink(missing_ok=True)
