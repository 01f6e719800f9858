"""What the parallel session does to keep its own cost per script down, seen from outside:
it must leave the process as it found it."""

from __future__ import annotations

import gc

from conftest import ExecPytester

FREEZE_RECORDER = """\
import gc

def pytest_exec_script_finished(item, result):
    with open("freeze-counts.txt", "a") as stream:
        stream.write(f"{gc.get_freeze_count()}\\n")
"""


def _run_two_scripts(px: ExecPytester) -> list[int]:
    """An in-process --exec-parallel session of two scripts; the freeze count each saw."""
    px.conftest(FREEZE_RECORDER)
    px.script("one_script.py", "print('one')")
    px.script("two_script.py", "print('two')")
    result = px.run_inprocess("--exec-parallel", "--exec-workers", "2")
    result.assert_outcomes(passed=2)
    return [int(line) for line in px.lines("freeze-counts.txt")]


def test_collected_objects_stay_out_of_gc_scans_during_the_run_only(px: ExecPytester) -> None:
    # 0 on 3.11; from 3.12 the interpreter starts with some hundreds of objects frozen.
    before = gc.get_freeze_count()
    during = _run_two_scripts(px)
    assert len(during) == 2
    assert all(count > before + 100 for count in during), (before, during)  # the tree
    assert gc.get_freeze_count() <= before  # and given back to the collector afterwards


def test_a_freeze_made_before_the_session_is_left_alone(px: ExecPytester) -> None:
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        during = _run_two_scripts(px)
        # Frozen objects may be freed meanwhile (the count drops); a freeze of the session's
        # own would have added the whole collected tree.
        assert len(during) == 2
        assert all(count <= before for count in during), (before, during)
        assert gc.get_freeze_count() > 0  # not unfrozen either: the freeze is its owner's
    finally:
        gc.unfreeze()
