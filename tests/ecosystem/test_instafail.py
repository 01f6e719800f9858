"""pytest-instafail: a script's failure is printed when it fails, not at the end of the run."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from conftest import AFTER_THE_RUN, RUN_TIMEOUT, ExecPytester, Mode

from .conftest import EcosystemCheck
from .scripts import FAILING

pytest.importorskip("pytest_instafail")
pytestmark = pytest.mark.ecosystem("pytest-instafail")

# Passes once the run has printed the other script's failure (the test touches SEEN when it
# reads it), fails after 30 s without: the end-of-run summary comes only after this ends.
WAIT_FOR_THE_FAILURE = """\
import os, pathlib, sys, time
pathlib.Path(STARTED).touch()
deadline = time.monotonic() + 30
while not os.path.exists(SEEN) and time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(0 if os.path.exists(SEEN) else 1)
"""

# In parallel the failing script fails only once the waiting one runs (20 s at most).
WAIT_FOR_THE_WAITER = """\
import os, time
deadline = time.monotonic() + 20
while not os.path.exists(STARTED) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


@AFTER_THE_RUN
def test_instafail_prints_a_script_failure_while_the_run_goes_on(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    seen, started = px.path / "failure-seen", px.path / "waiter-started"
    names = f"SEEN = {str(seen)!r}\nSTARTED = {str(started)!r}\n"
    # Inline, pytest runs the scripts in name order: the failure comes first.
    waits = WAIT_FOR_THE_WAITER if mode.parallel else ""
    px.script("a_boom_script.py", names + waits + FAILING)
    px.script("b_waits_script.py", names + WAIT_FOR_THE_FAILURE)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--instafail", *mode]
    lines: list[str] = []

    def read(stream: subprocess.Popen[str]) -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("RuntimeError: boom here"):
                seen.touch()

    with subprocess.Popen(
        command, cwd=px.path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    ) as process:
        reader = threading.Thread(target=read, args=(process,), daemon=True)
        reader.start()
        try:
            process.wait(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=10)
    output = "\n".join(lines)
    assert process.returncode == pytest.ExitCode.TESTS_FAILED, output
    # b_waits passed: the failure was printed while it still ran.
    assert "1 failed, 1 passed" in lines[-1], output
    traceback = lines.index("RuntimeError: boom here")
    summary = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    assert traceback < summary, output
    ecosystem_check(
        "pytest-instafail",
        "a failing script's traceback is printed as it fails, while other scripts still run",
    )
