"""The ``mode`` fixture's own check: a mode that did not run, or ran another way, fails.

The sessions themselves are watched by ``mode_probe/exec_mode_probe.py``; these checks feed
:func:`check_mode` what it would see when a mode silently falls back.
"""

from __future__ import annotations

import pytest
from conftest import MODES, Start, check_mode


def start(way: str, *, warm: bool = False, in_worker: bool = False) -> Start:
    return Start("/project/a_script.py", way, warm, in_worker)  # type: ignore[arg-type]


def test_no_script_started_is_no_proof() -> None:
    for mode in MODES.values():
        with pytest.raises(AssertionError, match="no script started"):
            check_mode(mode, [])


@pytest.mark.parametrize(
    ("name", "seen"),
    [
        pytest.param("inline-warm", [start("inline")], id="warm-fell-back-to-cold"),
        pytest.param("inline", [start("inline", warm=True)], id="cold-started-warm"),
        pytest.param("process", [start("async")], id="process-ran-as-async"),
        pytest.param("async", [start("process")], id="async-ran-as-process"),
        pytest.param("async", [start("inline")], id="parallel-ran-inline"),
        pytest.param("inline", [start("async")], id="inline-ran-parallel"),
        pytest.param("xdist", [start("inline")], id="xdist-without-workers"),
        pytest.param("process", [start("process"), start("async")], id="one-of-two-elsewhere"),
    ],
)
def test_a_mode_that_ran_another_way_fails(name: str, seen: list[Start]) -> None:
    with pytest.raises(AssertionError, match=f"mode {name}"):
        check_mode(MODES[name], seen)


def test_a_mode_that_ran_its_way_passes() -> None:
    check_mode(MODES["inline"], [start("inline")])
    check_mode(MODES["async-warm"], [start("async", warm=True), start("inline", warm=True)])
    check_mode(MODES["process-warm"], [start("process", warm=True), start("process")], 1)
    check_mode(MODES["xdist"], [start("inline", in_worker=True)])
