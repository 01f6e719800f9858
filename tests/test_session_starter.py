"""The inner sessions forked by session_starter.py (see ``ExecPytester.run``) are what a new
``python -m pytest`` would be: same folder, environment, path, arguments and exit code, and a
session that outlives its timeout is killed."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import FRESH_SESSIONS_VAR, ExecPytester, still_alive

# Records what the session sees as pytest configures it.
SEEN = """\
import json, os, sys

def pytest_configure(config):
    with open("seen.json", "w") as out:
        json.dump({"cwd": os.getcwd(), "pid": os.getpid(), "ppid": os.getppid(),
                   "variable": os.environ.get("STARTER_CHECK"), "path": sys.path,
                   "argv": sys.argv, "executable": sys.executable,
                   "stdin": os.read(0, 16).decode()}, out)
"""


@pytest.mark.parametrize("fresh", [False, True], ids=["forked", "fresh"])
def test_a_session_sees_what_a_new_interpreter_would(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch, fresh: bool
) -> None:
    if fresh:
        monkeypatch.setenv(FRESH_SESSIONS_VAR, "1")
    else:  # as README's command runs, even where tox asks for fresh sessions everywhere
        monkeypatch.delenv(FRESH_SESSIONS_VAR, raising=False)
    monkeypatch.setenv("STARTER_CHECK", "given")
    px.conftest(SEEN)
    px.script("fail_script.py", "raise SystemExit(3)\n")
    result = px.run("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*fail_script.py failed: exit code 3*"])
    seen = json.loads((px.path / "seen.json").read_text())
    assert seen["cwd"] == str(px.path)
    assert seen["variable"] == "given"
    assert seen["path"][0] == str(px.path)
    assert seen["argv"][0].endswith(os.path.join("pytest", "__main__.py"))
    assert seen["argv"][1].startswith("--basetemp=")  # pytester's, then the test's
    assert seen["argv"][2:] == ["-p", "no:cacheprovider"]
    assert seen["executable"] == sys.executable
    assert seen["stdin"] == ""
    # Forked: the starter's handler is its parent; fresh: this test's process is.
    assert (seen["ppid"] == os.getpid()) is fresh


def test_a_session_past_its_timeout_is_killed(px: ExecPytester) -> None:
    px.conftest(SEEN)
    px.script("sleep_script.py", "import time\ntime.sleep(60)\n")
    with pytest.raises(pytest.Pytester.TimeoutExpired):
        px.run("-p", "no:cacheprovider", timeout=5)
    pid = json.loads((px.path / "seen.json").read_text())["pid"]
    assert not still_alive([pid], within=10.0)
