"""--exec-parallel: start order, completion-order reports, honest durations; both backends."""

from __future__ import annotations

import re

import pytest
from conftest import ExecPytester, Mode

# Appends the script's name to order.txt as it starts: the start order, read back in the test.
RECORD_START = """\
import pathlib
with open(pathlib.Path(__file__).parent / "order.txt", "a") as _out:
    _out.write(pathlib.Path(__file__).stem + "\\n")
"""


@pytest.mark.modes("process", "async")
def test_reports_come_in_completion_order(px: ExecPytester, mode: Mode) -> None:
    # The slow script ends once the fast one's result is reported, not after a fixed 1 s,
    # which a loaded machine's start and exit of the fast script's interpreter could outlast.
    # Reported in collection order instead, the slow script would wait in vain (30 s) and be
    # reported first.
    px.script("a_slow_script.py", '_until_reported("b_fast_script.py")\n', waits=True)
    px.script("b_fast_script.py", "")
    # Two workers, not the CPU count: on one CPU the slow script would run first, alone.
    args = (*mode, "--exec-workers", "2")
    result = px.run("-v", *args, *px.report_args(), *px.junit_args())
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["b_fast_script.py::b_fast_script PASSED*", "a_slow_script.py::a_slow_script PASSED*"]
    )
    assert [case.name for case in px.junit()] == ["b_fast_script", "a_slow_script"]


@pytest.mark.modes("process", "async")
def test_starts_follow_priority_then_collection_order(px: ExecPytester, mode: Mode) -> None:
    for name, priority in [("a", None), ("b", -5), ("c", 3), ("d", -5), ("e", None), ("f", 0)]:
        mark = "" if priority is None else f"# pytest.mark.exec(priority={priority})\n"
        px.script(f"{name}_script.py", mark + RECORD_START)
    args = (*mode, "--exec-workers", "1")
    px.run(*args).assert_outcomes(passed=6)
    assert px.lines("order.txt") == [
        "b_script",
        "d_script",
        "a_script",
        "e_script",
        "f_script",
        "c_script",
    ]


@pytest.mark.modes("process", "async")
def test_test_functions_run_normally_beside_scripts(px: ExecPytester, mode: Mode) -> None:
    px.pytester.makepyfile(
        test_mod="""
        import time
        import pytest

        @pytest.fixture(scope="module")
        def resource():
            with open("fixture.log", "a") as out:
                out.write("setup\\n")
            yield
            with open("fixture.log", "a") as out:
                out.write("teardown\\n")

        def test_one(resource):
            time.sleep(0.3)

        def test_two(resource):
            time.sleep(0.3)

        def test_three_fails(resource):
            assert 1 == 2
        """
    )
    px.conftest(
        """\
        def pytest_runtest_logreport(report):
            with open("reports.txt", "a") as out:
                out.write(f"{report.nodeid} {report.when}\\n")
        """
    )
    for name in "abc":
        px.script(f"{name}_script.py", "print('ok')\n")
    px.script("d_fail_script.py", "raise SystemExit(4)\n")
    result = px.run("-rA", *mode, *px.junit_args())
    result.assert_outcomes(passed=5, failed=2)
    assert {case.name: case.outcome for case in px.junit()} == {
        "a_script": "passed",
        "b_script": "passed",
        "c_script": "passed",
        "d_fail_script": "failed",
        "test_one": "passed",
        "test_two": "passed",
        "test_three_fails": "failed",
    }
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_mod.py::test_three_fails - assert 1 == 2",
            "FAILED d_fail_script.py::d_fail_script - exit code 4",
        ]
    )
    # Script reports never tore the module's fixture down between its tests.
    assert px.lines("fixture.log") == ["setup", "teardown"]
    # Every item: setup, call, teardown, one after the other, never mixed with another item.
    reports = [line.split() for line in px.lines("reports.txt")]
    assert len(reports) == 3 * 7
    for first in range(0, len(reports), 3):
        nodeids = {nodeid for nodeid, _ in reports[first : first + 3]}
        assert len(nodeids) == 1, reports[first : first + 3]
        assert [when for _, when in reports[first : first + 3]] == ["setup", "call", "teardown"]


@pytest.mark.modes("process", "async")
def test_reported_time_is_the_run_not_the_queue(px: ExecPytester, mode: Mode) -> None:
    # 1.5 s each: queue time counted would make the second at least 3 s, so an upper bound
    # just under 3 s leaves 1.4 s for an interpreter's start and end on a loaded machine.
    px.script("first_script.py", "import time\ntime.sleep(1.5)\n")
    px.script("second_script.py", "import time\ntime.sleep(1.5)\n")
    args = (*mode, "--exec-workers", "1")
    result = px.run(*args, "--durations=0", "--durations-min=0", *px.junit_args())
    result.assert_outcomes(passed=2)
    assert result.duration >= 3.0, "the two scripts did not run one after the other"
    for case in px.junit():
        assert 1.45 <= case.time < 2.95, (case.name, case.time)
    durations = {
        m["nodeid"]: float(m["seconds"])
        for line in result.outlines
        if (m := re.match(r"(?P<seconds>\d+\.\d+)s call\s+(?P<nodeid>\S+)$", line))
    }
    assert set(durations) == {"first_script.py::first_script", "second_script.py::second_script"}
    assert all(1.45 <= seconds < 2.95 for seconds in durations.values()), durations


@pytest.mark.modes("process", "async")
def test_remembered_durations_start_the_longest_first(px: ExecPytester, mode: Mode) -> None:
    # Half a second apart: a measured duration includes the interpreter's start, which on a
    # loaded machine varies by more than the quarter second that used to separate them.
    # The scripts sleep only while "slow" exists: one run measures them; the later runs
    # start from what it remembered (the cache file as that run left it), without sleeping.
    sleeps = {"a_short": 0.0, "b_long": 1.0, "c_mid": 0.5}
    for name, seconds in sleeps.items():
        px.script(
            f"{name}_script.py",
            RECORD_START + f"import time\nif pathlib.Path({str(px.path / 'slow')!r}).exists():"
            f"\n    time.sleep({seconds})\n",
        )
    args = (*mode, "--exec-workers", "1")
    cache = px.path / ".pytest_cache" / "v" / "codomyrmex_exec" / "durations"

    def start_order(*extra: str) -> list[str]:
        (px.path / "order.txt").unlink(missing_ok=True)
        px.run(*args, *extra).assert_outcomes(passed=3)
        return px.lines("order.txt")

    # Nothing remembered yet: collection order. Then the longest first.
    (px.path / "slow").touch()
    assert start_order() == ["a_short_script", "b_long_script", "c_mid_script"]
    (px.path / "slow").unlink()
    measured = cache.read_text()
    assert start_order() == ["b_long_script", "c_mid_script", "a_short_script"]
    cache.write_text(measured)
    assert start_order("--exec-order", "collection") == [
        "a_short_script",
        "b_long_script",
        "c_mid_script",
    ]
    cache.write_text(measured)
    assert start_order("-o", "exec_order=collection") == [
        "a_short_script",
        "b_long_script",
        "c_mid_script",
    ]
    # An explicit priority beats any remembered duration.
    cache.write_text(measured)
    mid = px.path / "c_mid_script.py"
    mid.write_text("# pytest.mark.exec(priority=-1)\n" + mid.read_text())
    assert start_order() == ["c_mid_script", "b_long_script", "a_short_script"]


# -- --dist without workers ---------------------------------------------------------------------

# "waiter" passes only if "maker" runs at the same time: proof that scripts ran in parallel.
WAITER = """\
import pathlib, sys, time
deadline = time.monotonic() + 30
while not pathlib.Path("made").exists():
    if time.monotonic() > deadline:
        sys.exit("maker never ran alongside me")
    time.sleep(0.02)
"""


MAKER = "import pathlib\npathlib.Path('made').touch()\n"


@pytest.mark.parametrize(
    "addopts",
    [
        pytest.param("--dist loadscope", id="dist-only"),
        pytest.param("--dist load -n 0", id="zero-workers"),
    ],
)
def test_dist_mode_without_xdist_workers_keeps_exec_parallel_on(
    px: ExecPytester, addopts: str
) -> None:
    # xdist distributes nothing without workers: every item runs here, so --exec-parallel
    # must still run the scripts side by side (it used to switch itself off silently).
    px.ini(addopts=addopts, exec_order="collection")
    px.script("a_waiter_script.py", WAITER)
    px.script("b_maker_script.py", MAKER)
    result = px.run("--exec-parallel", "--exec-workers", "2")
    result.assert_outcomes(passed=2)


def test_with_xdist_workers_xdist_still_distributes(px: ExecPytester) -> None:
    px.ini(addopts="--dist loadscope")
    px.conftest(
        """\
        def pytest_exec_script_started(item, settings):
            import os
            with open("workers.txt", "a") as out:
                out.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")
        """
    )
    px.script("a_script.py")
    px.script("b_script.py")
    px.run("-n", "2", "--exec-parallel").assert_outcomes(passed=2)
    assert all(line.startswith("gw") for line in px.lines("workers.txt")), px.lines("workers.txt")
