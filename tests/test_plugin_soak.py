"""Soak: scripts ending every possible way, run with --exec-parallel at once.

Every script must get exactly one report with the right outcome, the counts must add up, no
process (scripts or what they left running) may outlive the run, and pytest's own memory must
stay bounded although some scripts flood their output.

The full soak is 160 scripts; the suite runs a quarter of it (42, still five times the
workers, every kind at least twice), as each script costs a process start. Set
``EXEC_SOAK_SCALE=1`` for the full soak, or more for a longer one.
"""

from __future__ import annotations

import math
import os

import pytest
from conftest import PEAK_MEMORY_CONFTEST, ExecPytester, Mode


def _scale() -> float:
    """The share of the full soak (:data:`FULL`) that runs, from ``EXEC_SOAK_SCALE``."""
    text = os.environ.get("EXEC_SOAK_SCALE", "0.25")
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not 0 < scale < math.inf:
        raise ValueError(f"EXEC_SOAK_SCALE={text!r}: give a positive number (1: the full soak)")
    return scale


SCALE = _scale()

# How many scripts of each kind the full soak has, and the outcome each must get.
FULL: dict[str, tuple[int, str]] = {
    "pass": (75, "passed"),
    "fail": (30, "failed"),
    "timeout": (8, "failed"),
    "segv": (6, "failed"),
    "sigkill": (6, "failed"),
    "flood": (20, "passed"),
    "leftover": (15, "passed"),
}
KINDS = {kind: (math.ceil(count * SCALE), outcome) for kind, (count, outcome) in FULL.items()}

BODIES = {
    "pass": "print('all good')\n",
    "fail": "def work():\n    raise RuntimeError('soak failure')\n\nwork()\n",
    "timeout": "# pytest.mark.exec(timeout=1)\nimport time\ntime.sleep(30)\n",
    "segv": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    "sigkill": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    # 3 MB on stdout, 1 MB on stderr: far more than is kept for a report.
    "flood": (
        "import sys\n"
        "line = 'x' * 1023 + '\\n'\n"
        "sys.stdout.write(line * 3072)\n"
        "sys.stderr.write(line * 1024)\n"
    ),
    # A background child that would outlive the script if nothing killed its group.
    "leftover": (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "_track(child.pid)\n"
    ),
}

PEAK_RSS_LIMIT_MB = 300


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM in /proc")
@pytest.mark.modes("process", "async")
def test_soak(px: ExecPytester, mode: Mode) -> None:
    px.conftest(PEAK_MEMORY_CONFTEST)
    expected: dict[str, str] = {}
    for kind, (count, outcome) in KINDS.items():
        for i in range(count):
            name = f"{kind}_{i:03d}_script"
            px.script(f"soak/{kind}/{name}.py", BODIES[kind], track=True)
            expected[name] = outcome
    total = len(expected)
    assert total == sum(count for count, _ in KINDS.values())

    result = px.run(
        "-q",
        "-p",
        "no:cacheprovider",
        *mode,
        "--exec-workers",
        "8",
        *px.junit_args(),
        timeout=180,
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    passed = sum(1 for outcome in expected.values() if outcome == "passed")
    result.assert_outcomes(passed=passed, failed=total - passed)

    cases = px.junit()
    assert len(cases) == total, "each script exactly one report"
    assert {case.name: case.outcome for case in cases} == expected
    by_name = {case.name: case for case in cases}
    for name, case in by_name.items():
        if name.startswith("timeout_"):
            assert "timed out after 1 s" in case.messages[0]
            assert 0.9 <= case.time < 2.5, (name, case.time)
        elif name.startswith("segv_"):
            assert "SIGSEGV" in case.messages[0]
        elif name.startswith("sigkill_"):
            assert "SIGKILL" in case.messages[0]
        elif name.startswith("fail_"):
            assert "RuntimeError: soak failure" in case.messages[0]

    # Every script and every child a script left behind is gone.
    px.assert_no_process_left(at_least=total + KINDS["leftover"][0])
    peak_mb = float((px.path / "peak_mb.txt").read_text())
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"pytest peaked at {peak_mb:.0f} MB"
