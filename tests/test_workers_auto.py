"""``--exec-workers auto`` (the default): concurrency follows the scripts' CPU use.

Sleeping scripts get more than one per core at once; CPU-bound ones never do. Both are
observed from the scripts themselves: each stamps its start and end, and the test counts how
many were running at the same moment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode

from pytest_codomyrmex_exec.engine.cpu_meter import AUTO_CAP_PER_CORE, cores

CORES = cores()

STAMPS = """\
import os, sys, time
def _stamp():
    # When, and what this process has asked of the CPU so far (ns on a CPU or waiting for
    # one, as auto measures it): a script that sleeps should want little of its span.
    try:
        with open("/proc/self/schedstat") as _stat:
            _wanted = sum(map(int, _stat.read().split()[:2]))
    except OSError:
        _wanted = 0
    return f"{{time.monotonic()}} {{_wanted}}\\n"
_stamps = os.path.join({folder!r}, os.path.basename(sys.argv[0]) + ".stamps")
# The time before the file: the others end once they see the file, so a start taken after
# creating it could come after their ends (a script held up in between made 3 look like 2).
_started = _stamp()
with open(_stamps, "w") as _out:
    _out.write(_started)
"""

END = """\
with open(_stamps, "a") as _out:
    _out.write(_stamp())
"""


def spans(folder: Path) -> list[tuple[float, float, float]]:
    """Each script's start, end and share of its span it spent on a CPU or waiting for one."""
    found = []
    for path in folder.glob("*.stamps"):
        lines = path.read_text().splitlines()
        assert len(lines) == 2, (path, lines)
        (start, wanted_then), (end, wanted_now) = (line.split() for line in lines)
        span = float(end) - float(start)
        share = (int(wanted_now) - int(wanted_then)) / 1e9 / span if span > 0 else 1.0
        found.append((float(start), float(end), share))
    assert found, "no script stamped its start"
    return found


def most_at_once(folder: Path) -> int:
    """The most scripts that were between their start and end stamps at one moment."""
    found = spans(folder)
    return max(sum(start <= moment < end for start, end, _ in found) for moment, _, _ in found)


def overlap_unjudged(folder: Path, what_auto_saw: str = "") -> str | None:
    """Check that more scripts than cores ran at once, as auto should let sleeping scripts
    do; ``None`` when they did, else why that cannot be judged on this machine now.

    Auto measures what the kernel says the scripts wanted. On a machine loaded so heavily
    that these sleeping scripts sat runnable most of their span (each wake-up waiting that
    long for a CPU), the kernel says they wanted a core each, and staying at one per core is
    auto doing its job: the caller skips, naming the share, rather than pass."""
    if most_at_once(folder) > CORES:
        return None
    shares = sorted(share for _, _, share in spans(folder))
    middle = shares[len(shares) // 2]
    load = os.getloadavg()[0]
    if middle > 0.5:
        return (
            f"the machine kept these sleeping scripts runnable {middle:.0%} of their span "
            f"(median; load average {load:.1f}): auto rightly saw them busy"
        )
    raise AssertionError(
        f"no more than {CORES} scripts ran at once, though they wanted {middle:.0%} of a "
        f"core each (median; load average {load:.1f})"
        + (f"\nwhat auto saw:\n{what_auto_saw}" if what_auto_saw else "")
    )


def write_scripts(root: Path, count: int, body: str) -> Path:
    """``count`` scripts running ``body`` between their stamps; the stamps' folder."""
    folder = root / "stamps"
    folder.mkdir(parents=True)
    for index in range(count):
        source = STAMPS.format(folder=str(folder)) + body + END
        (root / f"s{index}_script.py").write_text(source, encoding="utf-8")
    return folder


def waiting_for_company(folder: Path) -> str:
    """Wait until more scripts have started than there are cores (15 s at most): at one
    per core every script would sit out its deadline, and no more than CORES would overlap.
    It looks every 0.1 s: on a loaded machine each wake-up waits for a CPU, and a script
    that wakes very often is runnable most of the time, which auto rightly counts as busy."""
    return f"""\
deadline = time.monotonic() + 15
while len(os.listdir({str(folder)!r})) <= {CORES} and time.monotonic() < deadline:
    time.sleep(0.1)
"""


@pytest.mark.modes("process", "async-warm")
def test_sleeping_scripts_run_more_than_one_per_core(px: ExecPytester, mode: Mode) -> None:
    count = 3 * CORES
    folder = write_scripts(px.path, count, waiting_for_company(px.path / "stamps"))
    result = px.run(*mode, *px.report_args())
    result.assert_outcomes(passed=count)
    unjudged = overlap_unjudged(folder)
    if unjudged:
        pytest.skip(unjudged)
    assert result.duration < 12, "the scripts waited for their deadline: they never overlapped"


@pytest.mark.modes("async", "process-warm")
def test_busy_scripts_stay_at_one_per_core(px: ExecPytester, mode: Mode) -> None:
    count = 3 * CORES
    folder = write_scripts(
        px.path,
        count,
        """\
end = time.monotonic() + 0.8
while time.monotonic() < end:
    pass
""",
    )
    result = px.run(*mode, "--exec-workers", "auto")  # the default, spelled out
    result.assert_outcomes(passed=count)
    # The cap auto may reach with idle scripts would let all of them overlap.
    assert count <= AUTO_CAP_PER_CORE * CORES
    assert most_at_once(folder) <= CORES


def test_explicit_workers_stay_fixed(px: ExecPytester) -> None:
    """``--exec-workers N`` is a fixed count: sleeping scripts do not raise it."""
    count = 4
    folder = write_scripts(px.path, count, "time.sleep(0.6)\n")
    result = px.run("--exec-parallel", "--exec-workers", "1")
    result.assert_outcomes(passed=count)
    assert most_at_once(folder) == 1


def test_cpu_meter_sees_a_script_busy() -> None:
    """A busy script counts as about one core, a sleeping one as none; a child without a
    run's tag (a helper such as the guardian) is not a script."""
    import os
    import subprocess
    import sys
    import time

    from pytest_codomyrmex_exec.engine.cpu_meter import CpuMeter, measurable
    from pytest_codomyrmex_exec.engine.launch import RUN_TAG_VAR

    if not measurable():
        pytest.skip("no /proc schedstat here")
    meter = CpuMeter()
    for code, tag, scripts, low, high in (
        ("import time\ntime.sleep(5)", "1" * 32, 1, 0.0, 0.3),
        ("while True: pass", "2" * 32, 1, 0.6, 1.5),
        ("while True: pass", None, 0, 0.0, 0.0),
    ):
        env = dict(os.environ)
        if tag is not None:
            env[RUN_TAG_VAR] = tag
        child = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            time.sleep(0.3)  # past the interpreter's start-up, which is busy either way
            meter.forget()
            meter.sample()
            time.sleep(0.5)
            reading = meter.sample()
        finally:
            child.kill()
            child.wait(10)
        assert reading is not None
        assert reading.scripts == scripts, (code, tag, reading)
        assert low <= reading.demand <= high, (code, tag, reading)


def test_cpu_meter_measures_a_script_from_its_first_sleep() -> None:
    """A script that sleeps is measured as soon as it has slept, before the age at which
    every process counts (0.2-second sleepers ended unmeasured, and auto stayed at one per
    core). One that never sleeps is left out until that age, or, if its start-up waited on
    the disk long enough to count as a sleep, measured as what it is: busy."""
    import subprocess
    import time

    from pytest_codomyrmex_exec.engine.cpu_meter import SLEPT, STARTUP, CpuMeter, measurable
    from pytest_codomyrmex_exec.engine.launch import RUN_TAG_VAR

    if not measurable():
        pytest.skip("no /proc schedstat here")
    # A shell starts in a millisecond or two, so even a loaded machine leaves both well
    # under the age rule when the window opens; the meter counts any tagged process.
    for body, tag, busy in (
        ("exec sleep 5", "4" * 32, False),
        ("while :; do :; done", "5" * 32, True),
    ):
        env = {**os.environ, RUN_TAG_VAR: tag}
        child = subprocess.Popen(
            ["sh", "-c", f"echo up; {body}"], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "up\n"
            time.sleep(SLEPT + 0.015)  # past the sleep that marks a start-up as over
            meter = CpuMeter()
            meter.sample()  # the window opens here
            stat = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
            age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(stat[19]) / os.sysconf("SC_CLK_TCK")
            time.sleep(0.05)
            reading = meter.sample()
        finally:
            child.kill()
            child.communicate(timeout=10)
        if age >= STARTUP:
            pytest.skip(f"a shell took {age:.2f} s to start here: past the age rule anyway")
        assert reading is not None
        if busy:
            assert reading.scripts == 0 or reading.demand > 0.5, (body, reading, age)
        else:
            assert reading.scripts == 1, (body, reading, age)
            assert reading.demand < 0.5, (body, reading, age)


def test_library_runners_take_auto(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``ParallelRunner("auto")``, ``AsyncScheduler(max_concurrency="auto")`` and
    ``AsyncParallelRunner(max_concurrency="auto")`` run waiting scripts more than one per
    core, and say their cap."""
    import asyncio

    from pytest_codomyrmex_exec import (
        AsyncParallelRunner,
        AsyncScheduler,
        ParallelRunner,
        run_script_async,
    )

    caplog.set_level(logging.DEBUG, logger="pytest_codomyrmex_exec.engine.cpu_meter")

    def what_auto_saw() -> str:
        return "\n".join(record.getMessage() for record in caplog.records[-40:])

    unjudged: list[str | None] = []
    count = 3 * CORES

    def waiting_scripts(name: str) -> list[Path]:
        root = tmp_path / name
        write_scripts(root, count, waiting_for_company(root / "stamps"))
        return sorted(root.glob("*_script.py"))

    def judge(scripts: list[Path]) -> None:
        """Was the overlap there? Then forget this runner's log for the next one."""
        unjudged.append(overlap_unjudged(scripts[0].parent / "stamps", what_auto_saw()))
        caplog.clear()

    runner = ParallelRunner("auto")
    assert runner.max_workers == AUTO_CAP_PER_CORE * CORES
    scripts = waiting_scripts("runner")
    assert runner.run_scripts(scripts).passed == count
    judge(scripts)

    scheduler = AsyncScheduler(max_concurrency="auto")
    assert scheduler.max_concurrency == AUTO_CAP_PER_CORE * CORES
    scripts = waiting_scripts("scheduler")
    for script in scripts:
        scheduler.schedule(run_script_async, args=(str(script),))
    jobs = asyncio.run(scheduler.run_all())
    assert [job.result["status"] for job in jobs.values()] == ["passed"] * count
    judge(scripts)

    tasks_runner = AsyncParallelRunner(max_concurrency="auto")
    assert tasks_runner.max_concurrency == AUTO_CAP_PER_CORE * CORES
    scripts = waiting_scripts("tasks")
    tasks = [(script.name, run_script_async, (str(script),)) for script in scripts]
    outcome = asyncio.run(tasks_runner.run(tasks))
    assert [result["status"] for result in outcome.results.values()] == ["passed"] * count
    judge(scripts)
    if any(unjudged):
        pytest.skip("; ".join(reason for reason in unjudged if reason))


def test_cpu_meter_leaves_out_a_script_that_ended() -> None:
    """A script that has ended but is not reaped yet (its runner is slow to notice) is no
    script that sleeps: counting it as one let auto start a third busy script on 2 cores."""
    import os
    import subprocess
    import sys
    import time

    from pytest_codomyrmex_exec.engine.cpu_meter import CpuMeter, measurable
    from pytest_codomyrmex_exec.engine.launch import RUN_TAG_VAR

    if not measurable():
        pytest.skip("no /proc schedstat here")
    meter = CpuMeter()
    env = {**os.environ, RUN_TAG_VAR: "3" * 32}
    code = "import sys\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        reading = meter.sample()
        while (reading is None or not reading.scripts) and time.monotonic() < deadline:
            time.sleep(0.05)
            reading = meter.sample()
        assert reading is not None
        assert reading.scripts == 1, "the running script was not seen"
        assert child.stdin is not None
        child.stdin.close()  # it ends, and stays a zombie until child.wait() below
        stat = Path(f"/proc/{child.pid}/stat")
        while not stat.read_text().rpartition(")")[2].startswith(" Z"):
            assert time.monotonic() < deadline, "the script did not end"
            time.sleep(0.05)
        meter.sample()  # this window still saw it run
        time.sleep(0.1)
        reading = meter.sample()
    finally:
        child.kill()
        child.wait(10)
    assert reading == (0.0, 0)


def test_a_meter_that_fails_costs_no_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If ``/proc`` reads in a way the meter does not understand, auto says so once and
    runs one per core: every script still runs and passes (the meter's error used to end
    the run: ``run_scripts`` raised it, and under pytest the scripts were lost)."""
    from pytest_codomyrmex_exec import ParallelRunner
    from pytest_codomyrmex_exec.engine import cpu_meter

    if not cpu_meter.measurable():
        pytest.skip("no /proc schedstat here: auto never measures")

    def unreadable(pid: int) -> None:
        raise ValueError(f"/proc/{pid}/stat: a format this meter does not know")

    monkeypatch.setattr(cpu_meter, "_process", unreadable)
    count = 3 * CORES
    folder = write_scripts(tmp_path, count, "time.sleep(0.3)\n")
    with caplog.at_level(logging.WARNING, logger="pytest_codomyrmex_exec.engine.cpu_meter"):
        outcome = ParallelRunner("auto").run_scripts(sorted(tmp_path.glob("*_script.py")))
    assert outcome.passed == count
    assert most_at_once(folder) <= CORES
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == ["auto: cannot measure the scripts' CPU use; one per core from now"]
