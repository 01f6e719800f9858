"""Scarce devices: each script gets its own unit ids (CUDA_VISIBLE_DEVICES), shares of one
unit, and exclusive scripts that run alone; in every local mode, in the reports, and refused
clearly when the input is wrong."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import ExecPytester

from pytest_codomyrmex_exec import AsyncScheduler, ParallelRunner, ScriptSpec
from pytest_codomyrmex_exec.engine import Slots
from pytest_codomyrmex_exec.engine.start_queue import StartQueue


def _recorder(log: Path, *, meet: int = 0, group: str = "") -> str:
    """Script lines that log ``name ids start end`` (ids: its CUDA_VISIBLE_DEVICES, ``-`` when
    unset). With ``meet``, the script first waits (20 s at most, else exit 3) until ``meet``
    scripts of its ``group`` have started: those must be running at the same time."""
    return textwrap.dedent(
        f"""\
        import os, sys, time
        start = time.time()
        name = os.path.basename(sys.argv[0]).removesuffix("_script.py")
        if {meet} and os.environ.get("MEET"):
            folder = {str(log.parent / "meet")!r} + {group!r}
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, name), "w").close()
            deadline = time.monotonic() + 20
            while len(os.listdir(folder)) < {meet}:
                if time.monotonic() > deadline:
                    sys.exit(3)
                time.sleep(0.02)
        else:
            time.sleep(0.2)
        ids = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
        assert ids == os.environ.get("EXEC_RESOURCE_GPU", ids), "the two variables differ"
        with open({str(log)!r}, "a") as stream:
            stream.write(f"{{name}} {{ids}} {{start}} {{time.time()}}\\n")
        """
    )


def _write_suite(px: ExecPytester, log: Path) -> None:
    for name in "abcd":  # first, all four at once: they must hold four different ids
        px.script(
            f"one_{name}_script.py",
            "# pytest.mark.exec(resources={'GPU': 1}, priority=-2)\n"
            + _recorder(log, meet=4, group="one"),
        )
    for name in "ab":  # then both on one id at the same time
        px.script(
            f"half_{name}_script.py",
            "# pytest.mark.exec(resources={'GPU': 0.5}, priority=-1)\n"
            + _recorder(log, meet=2, group="half"),
        )
    px.script("two_script.py", "# pytest.mark.exec(resources={'GPU': 2})\n" + _recorder(log))
    # Exclusive scripts are placed by priority: one before all others, one near the end.
    for name, priority in (("first", -3), ("alone", 5)):
        mark = f"# pytest.mark.exec(exclusive=True, priority={priority})\n"
        px.script(f"{name}_script.py", mark + _recorder(log))
    px.script("late_script.py", "# pytest.mark.exec(priority=6)\n" + _recorder(log))
    px.script("plain_script.py", _recorder(log))
    px.script(
        "own_env_script.py",
        "# pytest.mark.exec(env={'CUDA_VISIBLE_DEVICES': 'mine'})\n" + _recorder(log),
    )


MODES = {
    "inline": (),
    "process": ("--exec-parallel", "--exec-backend", "process", "--exec-workers", "8"),
    "async": ("--exec-parallel", "--exec-backend", "async", "--exec-workers", "8"),
    "warm": ("--exec-parallel", "--exec-backend", "process", "--exec-workers", "8", "--exec-warm"),
}


@pytest.mark.parametrize("how", MODES)
def test_each_script_gets_its_own_gpus_in_every_mode(
    px: ExecPytester, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = px.path / "log.txt"
    _write_suite(px, log)
    px.ini(exec_resources="GPU=0,1,2,3", junit_family="xunit1")
    px.conftest(px.backend_recorder())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "pytest-own")
    if how != "inline":
        monkeypatch.setenv("MEET", "1")  # inline runs one at a time: nothing can meet
    result = px.run(*MODES[how], "-v", *px.report_args(), *px.junit_args())

    result.assert_outcomes(passed=12)
    # The mode really ran: its backend (or none inline), and warm starts under --exec-warm.
    backend_file = px.path / "backend.txt"
    if how == "inline":
        assert not backend_file.exists()
    else:
        assert px.backend_used() == ("async" if how == "async" else "process")
    if how == "warm":
        values = [
            prop.get("value")
            for prop in ElementTree.parse(px.junit_path).iter("property")
            if prop.get("name") == "warm"
        ]
        assert len(values) == 12, values
        assert set(values) == {"warm"}, values

    runs = {}
    for line in px.lines("log.txt"):
        name, ids, start, end = line.split()
        runs[name] = (ids, float(start), float(end))
    assert len(runs) == 12, sorted(runs)
    held = {name: set(ids.split(",")) for name, (ids, _, _) in runs.items()}
    # Each gets as many ids as it asked for, from the four there are...
    for name in ("one_a", "one_b", "one_c", "one_d", "half_a", "half_b"):
        assert len(held[name]) == 1, runs[name]
    assert len(held["two"]) == 2, runs["two"]
    assert set().union(*held.values()) <= {*"0123", "pytest-own", "mine"}
    # ...a script that asks for none sees pytest's own value, or its env mark's.
    assert runs["plain"][0] == runs["alone"][0] == "pytest-own"
    assert runs["own_env"][0] == "mine"
    whole = ["one_a", "one_b", "one_c", "one_d", "two"]
    for first, second in itertools.combinations(whole, 2):
        (_, start1, end1), (_, start2, end2) = runs[first], runs[second]
        if held[first] & held[second]:
            assert end1 <= start2 or end2 <= start1, f"{first} and {second} shared an id"
    for alone in ("first", "alone"):  # the exclusive scripts overlapped nothing
        for name, (_, start, end) in runs.items():
            if name != alone:
                assert end <= runs[alone][1] or start >= runs[alone][2], f"{name} ran with {alone}"
    if how != "inline":  # inline runs one at a time, in collection order
        # Placed by priority: "first" before every other script started, "late" after "alone".
        assert (
            min(start for name, (_, start, _) in runs.items() if name != "first")
            >= runs["first"][2]
        )
        assert runs["late"][1] >= runs["alone"][2]
        # All four ids in use at once, and the two halves on one id at the same time.
        assert set().union(*(held[n] for n in whole[:4])) == set("0123")
        assert held["half_a"] == held["half_b"]

    # Seen: -v, the results file and junit (xunit1) say which ids each held.
    two = ",".join(sorted(held["two"]))
    result.stdout.fnmatch_lines([f"*two_script.py::two_script PASSED (GPU={two})*"])
    lines = [json.loads(line) for line in px.results_path.read_text().splitlines()[1:]]
    reported = {line["nodeid"].split("::")[1]: line["resource_ids"] for line in lines}
    assert sorted(reported["two_script"]["GPU"]) == sorted(held["two"])
    assert reported["plain_script"] == {}
    junit = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ElementTree.parse(px.junit_path).iter("testcase")
    }
    assert junit["two_script"]["exec_resources"] == f"GPU={','.join(runs['two'][0].split(','))}"
    assert "exec_resources" not in junit["plain_script"]


def test_gpu_auto_takes_the_ids_pytest_was_given(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = px.path / "log.txt"
    for name in "abc":
        px.script(
            f"gpu_{name}_script.py",
            "# pytest.mark.exec(resources={'GPU': 1})\n" + _recorder(log, meet=2, group=name),
        )
    px.ini(exec_resources="GPU=auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    result = px.run("--exec-parallel", "--exec-workers", "4")

    result.assert_outcomes(passed=3)
    seen = {line.split()[1] for line in px.lines("log.txt")}
    assert seen == {"5", "7"}


def test_gpu_auto_counts_what_nvidia_smi_lists(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = px.path / "log.txt"
    px.script("two_script.py", "# pytest.mark.exec(resources={'GPU': 2})\n" + _recorder(log))
    bin_dir = px.path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        f"#!{sys.executable}\n"
        "print('GPU 0: Fake (UUID: GPU-a)')\nprint('GPU 1: Fake (UUID: GPU-b)')\n"
    )
    smi.chmod(0o755)
    px.ini(exec_resources="GPU=auto")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    result = px.run()

    result.assert_outcomes(passed=1)
    assert px.lines("log.txt")[0].split()[1] == "0,1"


@pytest.mark.parametrize("missing", ["error", "skip"])
@pytest.mark.parametrize("parallel", [(), ("--exec-parallel",)], ids=["inline", "parallel"])
def test_no_gpu_found_is_an_error_or_a_skip_naming_it(
    px: ExecPytester, monkeypatch: pytest.MonkeyPatch, missing: str, parallel: tuple[str, ...]
) -> None:
    px.script("gpu_script.py", "# pytest.mark.exec(resources={'GPU': 1})\n")
    px.script("cpu_script.py", "")
    px.ini(exec_resources="GPU=auto", exec_missing_resources=missing)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(px.path))  # no nvidia-smi there
    px.conftest(px.backend_recorder())
    result = px.run(*parallel, "-rsE")

    assert (px.path / "backend.txt").exists() == bool(parallel)
    need = (
        "needs resource GPU=1, which the ini option exec_resources does not "
        "have (resources: GPU=(none found))"
    )
    if missing == "skip":
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] gpu_script.py:1: {need}"])
        result.stdout.fnmatch_lines(["1 passed, 1 skipped"])  # the run summary counts as pytest
    else:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines([f"ERROR*gpu_script.py*{need}"])


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ({"exec_resources": "GPU=0,1,1"}, "ini option 'exec_resources': 'GPU=0,1,1': id '1'"),
        ({"exec_resources": "GPU=auto,db=x"}, "ini option 'exec_resources': 'db=x'"),
        (
            {"exec_resources": "GPU=2", "exec_resource_env": "TPU=TPU_VISIBLE"},
            "ini option 'exec_resource_env': 'TPU=TPU_VISIBLE': there is no resource 'TPU'",
        ),
        (
            {"exec_resources": "GPU=2", "exec_resource_env": "GPU=A=B"},
            "ini option 'exec_resource_env': 'GPU=A=B': expected variable names",
        ),
        ({"exec_missing_resources": "maybe"}, "ini option 'exec_missing_resources'"),
    ],
)
def test_bad_device_ini_lines_are_usage_errors(
    px: ExecPytester, ini: dict[str, str], message: str
) -> None:
    px.ini(**ini)
    result = px.run_inprocess("--collect-only")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.parametrize(
    ("mark", "message"),
    [
        ("exclusive='yes'", "exclusive='yes' is not valid: exclusive must be True or False"),
        ("resources={'GPU': -0.5}", "must be a positive amount"),
        ("resources={'GPU': 'half'}", "must be a number"),
        ("resources={'GPU': 1.5}", "above 1 must be whole"),
    ],
)
def test_bad_device_marks_name_the_mark(px: ExecPytester, mark: str, message: str) -> None:
    px.script("bad_script.py", f"# pytest.mark.exec({mark})\n")
    px.ini(exec_resources="GPU=4")
    result = px.run("-rE")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*bad_script.py::bad_script: exec mark: *{message}*"])


# -- the core, with real scripts ---------------------------------------------------------------


def _engine_script(folder: Path, name: str, log: Path) -> Path:
    path = folder / f"{name}.py"
    path.write_text(
        "import os, time\nstart = time.time()\ntime.sleep(0.3)\n"
        "ids = os.environ.get('CUDA_VISIBLE_DEVICES', '-')\n"
        f"open({str(log)!r}, 'a').write(f\"{name} {{ids}} {{start}} {{time.time()}}\\n\")\n"
    )
    return path


def _runs(log: Path) -> dict[str, tuple[str, float, float]]:
    runs = {}
    for line in log.read_text().splitlines():
        name, ids, start, end = line.split()
        runs[name] = (ids, float(start), float(end))
    return runs


def test_the_runner_hands_out_ids_shares_and_runs_exclusive_alone(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    wanted = {"a": 1, "b": 1, "c": 0.5, "d": 0.5, "e": 2}
    specs = {
        name: ScriptSpec.build(_engine_script(tmp_path, name, log), resources={"GPU": amount})
        for name, amount in wanted.items()
    }
    specs["solo"] = ScriptSpec.build(_engine_script(tmp_path, "solo", log), exclusive=True)

    batch = ParallelRunner(6, resources={"GPU": Slots(["x", "y", "z"])}).run_specs(specs)

    assert batch.success, [r["error"] for r in batch.results]
    ids = {r["name"].removesuffix(".py"): r["resource_ids"].get("GPU", []) for r in batch.results}
    runs = _runs(log)
    assert {name: len(held) for name, held in ids.items()} == {
        "a": 1, "b": 1, "c": 1, "d": 1, "e": 2, "solo": 0,
    }  # fmt: skip
    for name, held in ids.items():
        assert runs[name][0] == (",".join(held) or "-"), "the script saw what the result says"
    for first, second in itertools.combinations(["a", "b", "e"], 2):
        if set(ids[first]) & set(ids[second]):
            (_, s1, e1), (_, s2, e2) = runs[first], runs[second]
            assert e1 <= s2 or e2 <= s1, f"{first} and {second} shared a GPU"
    _, solo_start, solo_end = runs["solo"]
    for name, (_, start, end) in runs.items():
        assert name == "solo" or end <= solo_start or start >= solo_end, f"{name} ran with solo"


def test_the_scheduler_gives_each_job_its_ids_before_it_runs() -> None:
    seen: dict[str, tuple[str, ...]] = {}
    together: list[set[str]] = []
    running: set[str] = set()

    async def main() -> None:
        scheduler = AsyncScheduler(max_concurrency=4, resources={"GPU": 2})

        async def job(name: str) -> None:
            held = scheduler.list_jobs()
            seen[name] = next(j for j in held if j.name == name).assigned.get("GPU", ())
            running.add(name)
            together.append(set(running))
            await asyncio.sleep(0.05)
            running.discard(name)

        for name in ("a", "b", "c"):
            scheduler.schedule(job, name, args=(name,), resources={"GPU": 1})
        scheduler.schedule(job, "solo", args=("solo",), exclusive=True)
        scheduler.schedule(job, "after", args=("after",))
        await scheduler.run_all()

    asyncio.run(main())
    assert seen["a"] != seen["b"]
    assert {seen["a"], seen["b"]} == {("0",), ("1",)}
    assert seen["solo"] == ()
    assert {"solo"} in together
    assert not any("solo" in s and len(s) > 1 for s in together)


def test_the_core_packs_shares_and_reserves_for_an_exclusive_job() -> None:
    queue: StartQueue[str] = StartQueue(limit=8, capacities={"GPU": 2})
    half = [queue.push(f"half{n}", demand={"GPU": 0.5}) for n in range(3)]
    started = queue.pop_ready()
    assert [t.assigned for t in started] == [{"GPU": ("0",)}, {"GPU": ("0",)}, {"GPU": ("1",)}]
    solo = queue.push("solo", exclusive=True)
    late = queue.push("late", priority=1)
    assert queue.pop_ready() == [], "the exclusive job reserves everything while it waits"
    for ticket in half:
        queue.release(ticket)
    assert queue.pop_ready() == [solo]
    queue.push("early", priority=-9)
    assert queue.pop_ready() == [], "nothing starts while the exclusive job runs"
    queue.release(solo)
    assert [t.job for t in queue.pop_ready()] == ["early", "late"]
    assert late.assigned == {}


def test_a_waiting_job_reserves_only_units_it_can_use() -> None:
    queue: StartQueue[str] = StartQueue(limit=8, capacities={"db": 2.5})  # units 0, 1, half 2
    holder = queue.push("holder", demand={"db": 1})
    assert queue.pop_ready() == [holder]
    assert holder.assigned == {"db": ("0",)}
    big = queue.push("big", priority=-1, demand={"db": 2})
    queue.push("small", demand={"db": 1})
    queue.push("half", demand={"db": 0.5})
    # big reserves units 0 and 1 (the half unit is no use to it): only "half" may pass it.
    assert [t.job for t in queue.pop_ready()] == ["half"]
    queue.release(holder)
    assert queue.pop_ready() == [big]
    assert big.assigned == {"db": ("0", "1")}
