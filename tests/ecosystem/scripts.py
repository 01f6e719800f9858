"""The scripts several checks run: one that passes and prints, one that prints and fails."""

from __future__ import annotations

from conftest import ExecPytester

PASSING = "print('hello from ok')\n"

# The traceback's last frame is compute(), on line 2: what a user looks for in a report.
FAILING = """\
def compute():
    raise RuntimeError("boom here")

print("before the boom")
compute()
"""


def write_pass_and_fail(px: ExecPytester) -> None:
    """``ok_script.py`` passes printing ``hello from ok``; ``boom_script.py`` prints ``before
    the boom`` and fails with ``RuntimeError: boom here`` raised on its line 2."""
    px.script("ok_script.py", PASSING)
    px.script("boom_script.py", FAILING)
