"""Warm start (issue 10): the behaviour checks again, forked from a warm server; then what
only warm mode has: a child that cannot tell it was forked, fallbacks, a dying server.

The engine's and the plugin's own checks are imported from their modules and run here again,
unchanged: through the autouse fixture ``warm`` engine calls default to a warm launcher, and
the module's ``warm_modes`` mark turns each mode of the ``mode`` fixture (conftest.py) into
its warm variant. Both prove that each check did start its scripts warm, so none can pass by
quietly falling back to a cold start.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ExecPytester, Mode, error_of, still_alive, write_script

# The same checks, imported: collected here again, they run in warm mode (see ``warm``).
from test_parallel_runner import (  # noqa: F401
    test_cancel_from_another_thread_kills_running_and_skips_queued,
    test_fail_fast_kills_running_scripts_promptly_and_cancels_the_rest,
)
from test_plugin_ecosystem import (  # noqa: F401
    test_a_daemon_left_outside_the_group_does_not_outlive_the_run,
    test_ctrl_c_kills_every_script_tree,
    test_fail_fast_kills_running_scripts_and_ends_quickly,
    test_second_ctrl_c_does_not_abandon_the_scripts,
)
from test_plugin_outcomes import test_outcome_table  # noqa: F401
from test_plugin_settings import test_exec_mark_settings  # noqa: F401
from test_plugin_soak import test_soak  # noqa: F401
from test_runner import (  # noqa: F401
    parent_thread,
    test_a_crash_under_a_memory_limit_is_not_called_a_memory_hit,
    test_allowed_exit_codes_decide_pass_or_fail,
    test_args_reach_the_script_verbatim,
    test_cancel_event_stops_a_running_script_promptly,
    test_capture_keeps_head_and_tail_with_a_marker,
    test_child_escaping_the_group_is_found_and_killed,
    test_default_cwd_is_the_scripts_folder_and_cwd_can_be_set,
    test_env_adds_and_removes_variables,
    test_exit_with_background_child_holding_pipes_returns_real_status,
    test_invalid_utf8_is_replaced_not_an_error,
    test_killed_by_signal_reports_negative_code_and_signal_name,
    test_memory_limit_exceeded_fails_with_clear_error,
    test_memory_limit_leaves_a_modest_script_alone,
    test_output_is_str_after_timeout,
    test_path_with_spaces_and_non_ascii,
    test_pythonpath_gets_src_folders_up_to_five_parents_and_keeps_inherited,
    test_stdin_is_empty_so_reading_it_does_not_hang,
    test_timeout_kills_script_and_grandchild_holding_pipes,
)
from test_scheduler import test_cancelling_a_running_script_job_kills_its_process_tree  # noqa: F401

from pytest_codomyrmex_exec import ScriptResult, ScriptSpec, ScriptStatus, WarmLauncher, run_script
from pytest_codomyrmex_exec.engine import ParallelRunner, run_async
from pytest_codomyrmex_exec.engine import run as run_module
from pytest_codomyrmex_exec.engine.launch import COLD, RUN_TAG_VAR, SCRIPTS_VAR
from pytest_codomyrmex_exec.engine.results import FailureCause

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server: Linux"),
    # The launcher is the same whatever calls it; inline and the process backend's threads
    # (which call it at once) are enough here. test_plugin_shutdown has async-warm too.
    pytest.mark.warm_modes("inline", "process"),
]

_DEFAULTED = (
    run_module.run_script,
    run_module.run_spec,
    run_async.run_script_async,
    run_async.run_spec_async,
    ParallelRunner.__init__,
)


@pytest.fixture(scope="module")
def shared_launcher() -> Iterator[WarmLauncher]:
    with WarmLauncher() as launcher:
        yield launcher


def _warm_properties(junit: Path) -> list[str]:
    """The ``warm`` junit property of every script testcase (a missing one counts as '')."""
    values = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if not case.get("name", "").endswith("_script"):
            continue
        found = [p.get("value", "") for p in case.iter("property") if p.get("name") == "warm"]
        values.append(found[0] if found else "")
    return values


@pytest.fixture(autouse=True, params=["warm"])
def warm(request: pytest.FixtureRequest, shared_launcher: WarmLauncher) -> Iterator[str]:
    """Warm mode for every check here. Engine calls default to the shared warm launcher, and
    an imported engine check must have started scripts with it. Plugin sessions run in the
    ``mode`` fixture's warm modes, which proves that their scripts started warm."""
    imported = request.function.__module__ != __name__
    if "px" in request.fixturenames and "mode" not in request.fixturenames:
        raise ValueError(f"{request.node.nodeid}: a plugin check here takes the mode fixture")
    saved = [f.__kwdefaults__["launcher"] for f in _DEFAULTED]  # type: ignore[index]
    for function in _DEFAULTED:
        function.__kwdefaults__["launcher"] = shared_launcher  # type: ignore[index]
    before = shared_launcher.warm_starts
    try:
        yield str(request.param)
    finally:
        for function, value in zip(_DEFAULTED, saved, strict=True):
            function.__kwdefaults__["launcher"] = value  # type: ignore[index]
    # An imported engine check runs with the shared launcher by default; a check of this
    # module that asks for it compares what it forks with a cold start.
    cold = getattr(request.node, "callspec", None) is not None and (
        request.node.callspec.params.get("start") == "cold"
    )  # the cold half of a cold/warm comparison
    if (
        "mode" not in request.fixturenames
        and not cold
        and (imported or "shared_launcher" in inspect.signature(request.function).parameters)
    ):
        assert shared_launcher.warm_starts > before, "the check started nothing warm"


# -- what a script sees: the same as after a cold start ---------------------------------------

PROBE = """\
import json, os, signal, sys, threading
print(json.dumps({
    "path": sys.path,
    "modules": sorted(sys.modules),
    "argv": sys.argv,
    "name": __name__,
    "file": __file__,
    "package": __package__,
    "spec": repr(__spec__),
    "loader": type(__loader__).__name__,
    "cwd": os.getcwd(),
    "session_leader": os.getsid(0) == os.getpid() == os.getpgid(0),
    "signals": {s.name: repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
                signal.SIGPIPE, signal.SIGCHLD, signal.SIGHUP)},
    "threads": threading.active_count(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "env": {k: v for k, v in os.environ.items() if k.startswith("WARM_PROBE")},
    "stdin": sys.stdin.read(),
}))
"""


def _probe(tmp_path: Path, launcher: object, **options: object) -> dict[str, object]:
    script = write_script(tmp_path / "probe dir", "probe.py", PROBE)
    (tmp_path / "lib").mkdir(exist_ok=True)
    result = run_script(
        script,
        timeout=30,
        env={"PYTHONPATH": f"lib{os.pathsep}{tmp_path}", "WARM_PROBE": "yes"},
        stdin="some input",
        launcher=launcher,  # type: ignore[arg-type]
        **options,
    )
    assert result["status"] == ScriptStatus.PASSED, result["stderr"]
    seen: dict[str, object] = json.loads(result["stdout"])
    return seen


def test_a_forked_script_sees_what_a_cold_start_shows(tmp_path: Path, warm: str) -> None:
    with WarmLauncher() as launcher:
        hot = _probe(tmp_path, launcher)
        assert launcher.warm_starts == 1
    cold = _probe(tmp_path, COLD)
    # sys.path (script folder, PYTHONPATH made absolute, then the interpreter's), sys.modules,
    # argv, __main__'s attributes, signals, threads, descriptors, environment, stdin.
    assert hot == cold
    assert hot["session_leader"] is True
    assert hot["fds"] == [0, 1, 2, 3]  # 3: the listing's own descriptor


ENVIRONMENT_PROBE = """\
import gc, json, os, subprocess, sys
inherited = subprocess.run(
    [sys.executable, "-c", "import json, os; print(json.dumps(list(os.environ.items())))"],
    capture_output=True, text=True, check=True,
).stdout
print(json.dumps({
    "environ": list(os.environ.items()),
    "inherited": json.loads(inherited),
    "gc": [gc.isenabled(), gc.get_threshold(), len(gc.get_count()), gc.get_freeze_count()],
}))
"""


def test_a_forked_script_sees_its_environment_in_order_and_gc_as_a_cold_start(
    tmp_path: Path, warm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server changes only the variables that differ when a script's names are its own
    (a changed value), and rebuilds the environment otherwise (an added name): either way the
    script, and what it starts, see the names in the order and with the values a cold start
    has. The server's compiler warm-up and the fork leave the collector as a cold start has it.
    """
    monkeypatch.setenv("WARM_PROBE", "server's")
    script = write_script(tmp_path, "environment_probe.py", ENVIRONMENT_PROBE)
    changed, added = {"WARM_PROBE": "script's"}, {"WARM_PROBE_ADDED": "yes"}

    def seen(launcher: object, env: dict[str, str]) -> dict[str, object]:
        result = run_script(script, timeout=30, env=env, launcher=launcher)  # type: ignore[arg-type]
        assert result["status"] == ScriptStatus.PASSED, result["stderr"]
        found: dict[str, object] = json.loads(result["stdout"])
        for key in ("environ", "inherited"):  # the run tag differs by run, and only it
            found[key] = [(k, v) for k, v in found[key] if k != RUN_TAG_VAR]  # type: ignore[attr-defined]
        return found

    with WarmLauncher() as launcher:
        hot = {"changed": seen(launcher, changed), "added": seen(launcher, added)}
        assert launcher.warm_starts == 2, launcher.cold_starts
    cold = {"changed": seen(COLD, changed), "added": seen(COLD, added)}
    assert hot == cold
    assert ("WARM_PROBE", "script's") in hot["changed"]["environ"]  # type: ignore[operator]
    # The added name comes after the inherited ones, then the scripts it runs inside.
    assert hot["added"]["environ"][-2:] == [  # type: ignore[index]
        ("WARM_PROBE_ADDED", "yes"),
        (SCRIPTS_VAR, os.path.realpath(script)),
    ]
    assert hot["changed"]["inherited"] == hot["changed"]["environ"]
    # The freeze count is the interpreter's (0 on 3.11, some hundreds at start on 3.12):
    # hot == cold above holds it to a cold start's, whatever it is.
    assert hot["changed"]["gc"][:3] == [True, list(gc.get_threshold()), 3]


def test_preloaded_modules_are_all_a_script_finds_loaded_beyond_start_up(
    tmp_path: Path, warm: str
) -> None:
    with WarmLauncher(preload=["csv"]) as launcher:
        hot = _probe(tmp_path, launcher)
    cold = _probe(tmp_path, COLD)
    extra = set(hot["modules"]) - set(cold["modules"])  # type: ignore[arg-type]
    assert "csv" in extra
    assert extra <= {"csv", "_csv", "io"}, extra  # csv and what importing it brings
    assert set(cold["modules"]) <= set(hot["modules"])  # type: ignore[arg-type]


# Each way a script ends, compared byte for byte with a cold start: exit code and stderr.
ENDINGS = {
    "raises": "def f():\n    raise ValueError('boom')\n\nf()\n",
    "exit_text": "import sys\nsys.exit('bye now')\n",
    "exit_code": "raise SystemExit(3)\n",
    "exit_none": "import sys\nprint('out')\nsys.exit()\n",
    "interrupt": "raise KeyboardInterrupt\n",
    "syntax": "def broken(:\n    pass\n",
    "chained": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e\n",
    "atexit": "import atexit\natexit.register(print, 'bye from atexit')\nprint('main')\n",
    "thread": (
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('late thread'))).start()\n"
    ),
    "unflushed": "import sys\nsys.stdout.write('no newline, no flush')\n",
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_endings_match_a_cold_start(
    tmp_path: Path, shared_launcher: WarmLauncher, ending: str, warm: str
) -> None:
    script = write_script(tmp_path, f"{ending}.py", ENDINGS[ending])
    hot = run_script(script, timeout=20, launcher=shared_launcher)
    cold = run_script(script, timeout=20, launcher=COLD)
    for key in ("status", "exit_code", "signal", "stdout", "stderr"):
        assert hot[key] == cold[key], (key, hot[key], cold[key])  # type: ignore[literal-required]


# -- verdicts: what a real interpreter does, cold and warm ------------------------------------

INTERRUPT_WITH_ATEXIT = """\
import atexit
atexit.register(print, "atexit ran", flush=True)
raise KeyboardInterrupt
"""
TIME_ZONE = "import time\nprint(time.tzname, time.timezone, time.localtime(0).tm_hour)\n"

# name: (script, environment, the exit code CPython gives; negative: ended by that signal)
VERDICTS: dict[str, tuple[str, dict[str, str], int]] = {
    "exit_false": ("import sys\nsys.exit(False)\n", {}, 0),  # sys.exit(not ok) passes
    "exit_true": ("import sys\nsys.exit(True)\n", {}, 1),  # and prints nothing
    "exit_minus_one": ("import sys\nsys.exit(-1)\n", {}, 255),
    "exit_256": ("import sys\nsys.exit(256)\n", {}, 0),
    "exit_minus_256": ("import sys\nsys.exit(-256)\n", {}, 0),
    "exit_2_63": ("import sys\nsys.exit(2**63)\n", {}, 255),  # out of a C long: -1
    "exit_below_long": ("import sys\nsys.exit(-(2**63) - 1)\n", {}, 255),
    "exit_2_32_plus_3": ("import sys\nsys.exit(2**32 + 3)\n", {}, 3),
    "exit_text": ("import sys\nsys.exit('msg')\n", {}, 1),
    "exit_none": ("import sys\nsys.exit(None)\n", {}, 0),
    "time_zone": (TIME_ZONE, {"TZ": "ABC+3"}, 0),  # 3 h west of UTC: 21 h at the epoch
    "interrupt_atexit": (INTERRUPT_WITH_ATEXIT, {}, -signal.SIGINT),
}


def run_in_mode(
    start: str, warm_launcher: WarmLauncher, script: Path, **options: object
) -> ScriptResult:
    """Run ``script`` cold, or forked by ``warm_launcher``; a warm run that quietly started
    cold fails here."""
    if start == "cold":
        return run_script(script, launcher=COLD, **options)
    before = warm_launcher.warm_starts
    result = run_script(script, launcher=warm_launcher, **options)
    assert warm_launcher.warm_starts == before + 1, warm_launcher.cold_starts
    assert warm_launcher.last_start[str(script)] is None  # None: forked warm
    return result


@pytest.mark.parametrize("start", ["cold", "warm"])
@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_a_script_ends_as_in_a_real_interpreter(
    tmp_path: Path, shared_launcher: WarmLauncher, case: str, start: str, warm: str
) -> None:
    body, env, expected_code = VERDICTS[case]
    script = write_script(tmp_path, f"{case}.py", body)
    real = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert real.returncode == expected_code, real.stderr  # the table says what CPython does
    result = run_in_mode(start, shared_launcher, script, timeout=30, env=env)
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (
        real.returncode,
        real.stdout,
        real.stderr,
    )
    assert (result["status"] == ScriptStatus.PASSED) == (expected_code == 0)
    if case == "time_zone":
        assert result["stdout"] == "('ABC', 'ABC') 10800 21\n"
    if case == "interrupt_atexit":
        assert result["stdout"] == "atexit ran\n"


def test_module_run_matches_a_cold_start(
    tmp_path: Path, shared_launcher: WarmLauncher, warm: str
) -> None:
    write_script(tmp_path / "pkg", "__init__.py", "")
    script = write_script(
        tmp_path / "pkg",
        "tool.py",
        "import sys\nprint(__name__, __package__, sys.argv, sys.path[0])\n"
        "raise RuntimeError('x')\n",
    )
    hot = run_script(script, timeout=20, as_module=True, args=["a"], launcher=shared_launcher)
    cold = run_script(script, timeout=20, as_module=True, args=["a"], launcher=COLD)
    assert (hot["exit_code"], hot["stdout"], hot["stderr"]) == (
        cold["exit_code"],
        cold["stdout"],
        cold["stderr"],
    )
    assert "RuntimeError: x" in hot["stderr"]


def test_stdin_text_and_file_reach_a_forked_script(
    tmp_path: Path, shared_launcher: WarmLauncher, warm: str
) -> None:
    script = write_script(tmp_path, "cat.py", "import sys\nprint(sys.stdin.read().upper())\n")
    (tmp_path / "input.txt").write_text("from a file")
    text = run_script(script, timeout=20, stdin="from text", launcher=shared_launcher)
    from_file = run_script(script, timeout=20, stdin_file="input.txt", launcher=shared_launcher)
    assert (text["stdout"], from_file["stdout"]) == ("FROM TEXT\n", "FROM A FILE\n")


# -- no state shared between forked scripts ----------------------------------------------------

RANDOM = """\
import os, random, uuid, tempfile
values = [random.random(), random.getrandbits(64), uuid.uuid4().hex, os.urandom(8).hex(),
          next(tempfile._get_candidate_names())]
try:
    import numpy
    values += [numpy.random.random(), numpy.random.default_rng().random()]
except ImportError:
    pass
print(values)
"""


@pytest.mark.parametrize(
    "preload", [(), ("random", "uuid", "tempfile", "numpy", "numpy.random")], ids=str
)
def test_two_forked_scripts_draw_different_random_numbers(
    tmp_path: Path, preload: tuple[str, ...], warm: str
) -> None:
    if "numpy" in preload:
        pytest.importorskip("numpy")
    script = write_script(tmp_path, "draw.py", RANDOM)
    with WarmLauncher(preload=preload) as launcher:
        first = run_script(script, timeout=30, launcher=launcher)
        second = run_script(script, timeout=30, launcher=launcher)
        assert launcher.warm_starts == 2
    assert first["status"] == second["status"] == ScriptStatus.PASSED, first["stderr"]
    drawn = [eval(r["stdout"]) for r in (first, second)]
    assert len(drawn[0]) >= (7 if "numpy" in preload else 5)
    for a, b in zip(*drawn, strict=True):
        assert a != b, drawn


def test_a_script_changing_a_preloaded_module_does_not_affect_the_next(
    tmp_path: Path, warm: str
) -> None:
    script = write_script(
        tmp_path,
        "mutate.py",
        "import csv, json\n"
        "print(getattr(csv, 'MARK', None), json.dumps([1]))\n"
        "csv.MARK = 'changed'\n"
        "json.dumps = lambda value: 'hijacked'\n",
    )
    with WarmLauncher(preload=["csv", "json"]) as launcher:
        runs = [run_script(script, timeout=20, launcher=launcher)["stdout"] for _ in range(3)]
        assert launcher.warm_starts == 3  # forked from the one server, not started afresh
    assert runs == ["None [1]\n"] * 3


def test_numpy_preloaded_computes_in_forked_scripts(tmp_path: Path, warm: str) -> None:
    pytest.importorskip("numpy")
    # A matrix product large enough for OpenBLAS to use its threads, after the fork.
    script = write_script(
        tmp_path,
        "blas.py",
        "import numpy as np\na = np.ones((400, 400))\nprint(float((a @ a).sum()))\n",
    )
    with WarmLauncher(preload=["numpy"]) as launcher:
        results = [run_script(script, timeout=60, launcher=launcher) for _ in range(3)]
        assert launcher.warm_starts == 3
    assert [r["stdout"] for r in results] == [f"{400.0**3}\n"] * 3, results[0]["stderr"]


# -- what escapes the group, forked without exec, still carries the run's tag ------------------


def test_a_daemon_forked_without_exec_is_found_by_the_run_tag(
    tmp_path: Path, shared_launcher: WarmLauncher, warm: str
) -> None:
    flag = tmp_path / "daemon.pid"
    script = write_script(
        tmp_path,
        "forker.py",
        f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:  # a classic double fork: no exec, so no new environment block
                open({str(flag)!r} + ".tmp", "w").write(str(os.getpid()))
                os.rename({str(flag)!r} + ".tmp", {str(flag)!r})
                time.sleep(30)
            os._exit(0)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.01)
        print("parent done", flush=True)
        """,
    )
    began = time.monotonic()
    result = run_script(script, timeout=30, launcher=shared_launcher)
    wall = time.monotonic() - began
    daemon = int(flag.read_text())
    try:
        assert result["status"] == ScriptStatus.PASSED, result["stderr"]
        assert still_alive([daemon], within=1.0) == []
        assert wall < 10, f"took {wall:.2f} s"  # the daemon holds on for 30 s
    finally:
        if still_alive([daemon], within=0):
            os.kill(daemon, signal.SIGKILL)


# -- falling back to a cold start, visibly -----------------------------------------------------


def test_what_only_a_fresh_interpreter_honours_starts_cold_with_a_reason(
    tmp_path: Path, warm: str
) -> None:
    script = write_script(tmp_path, "hash.py", "import sys\nprint(sys.flags.hash_randomization)\n")
    other = tmp_path / "bin" / "python"
    other.parent.mkdir()
    other.symlink_to(sys.executable)
    with WarmLauncher() as launcher:
        cold_env = run_script(script, timeout=20, env={"PYTHONHASHSEED": "0"}, launcher=launcher)
        not_warm = run_script(script, timeout=20, warm=False, launcher=launcher)
        another = run_script(script, timeout=20, python=str(other), launcher=launcher)
        warm_run = run_script(script, timeout=20, env={"PYTHONPATH": "x"}, launcher=launcher)
        reasons = dict(launcher.cold_starts)
        assert launcher.warm_starts == 1  # PYTHONPATH is applied in the child
    assert cold_env["stdout"] == "0\n"  # the variable took effect: a fresh interpreter ran
    assert not_warm["status"] == another["status"] == warm_run["status"] == ScriptStatus.PASSED
    assert reasons == {str(script): f"another interpreter ({other})"}  # the last of three
    with WarmLauncher() as fresh:
        assert fresh.reason_for(ScriptSpec(script, env={"PYTHONHASHSEED": "0"})) == (
            "PYTHONHASHSEED=0 (read at interpreter start-up)"
        )
        assert fresh.reason_for(ScriptSpec(script, warm=False)) == "warm=False"
        assert fresh.reason_for(ScriptSpec(script, env={"PYTHONPATH": "x"})) is None


def test_a_preload_that_fails_is_an_error_naming_it(tmp_path: Path, warm: str) -> None:
    script = write_script(tmp_path, "hi.py", "print('hi')\n")
    with WarmLauncher(preload=["no_such_module_for_warm"]) as launcher:
        results = [run_script(script, timeout=20, launcher=launcher) for _ in range(2)]
    for result in results:
        assert result["status"] == ScriptStatus.ERROR
        assert "cannot preload 'no_such_module_for_warm': ModuleNotFoundError" in error_of(result)


# -- what a preloaded module must not bring: open files, threads, a slow or broken import ----


def _preload_env(tmp_path: Path, module: str, body: str) -> dict[str, str]:
    """The environment of a warm launcher whose preload list finds ``module`` (``body``)."""
    write_script(tmp_path / "lib", f"{module}.py", body)
    return {**os.environ, "PYTHONPATH": str(tmp_path / "lib")}


def test_a_preload_holding_a_file_open_is_refused_naming_it_and_the_file(
    tmp_path: Path, warm: str
) -> None:
    log = tmp_path / "module.log"
    env = _preload_env(tmp_path, "holder", f"LOG = open({str(log)!r}, 'w')\n")
    # The script's own file gets the lowest free number: in a forked child whose descriptors
    # 3+ were closed, the one the module's file object still writes to.
    script = write_script(
        tmp_path,
        "writer.py",
        """
        import holder
        with open("mine.txt", "w") as mine:
            holder.LOG.write("the module's line"); holder.LOG.flush()
            mine.write("mine")
        """,
    )
    cold = run_script(script, timeout=30, base_env=env, launcher=COLD)
    assert cold["status"] == ScriptStatus.PASSED, cold["stderr"]
    assert (tmp_path / "mine.txt").read_text() == "mine"
    (tmp_path / "mine.txt").unlink()
    with WarmLauncher(preload=["holder"], env=env) as launcher:
        hot = run_script(script, timeout=30, base_env=env, launcher=launcher)
    assert hot["status"] == ScriptStatus.ERROR  # never a pass with the data in the wrong file
    assert f"cannot preload 'holder': importing it leaves {log} (fd " in error_of(hot)
    assert not (tmp_path / "mine.txt").exists()


def test_a_preload_starting_a_thread_is_refused_naming_it_and_the_thread(
    tmp_path: Path, warm: str
) -> None:
    env = _preload_env(
        tmp_path,
        "service",
        """\
        import queue, threading
        _asks, _answers = queue.Queue(), queue.Queue()
        def _serve():
            while True:
                _answers.put(_asks.get() * 2)
        threading.Thread(target=_serve, name="doubler", daemon=True).start()
        def double(value):
            _asks.put(value)
            return _answers.get()
        """,
    )
    script = write_script(tmp_path, "asks.py", "import service\nprint(service.double(21))\n")
    cold = run_script(script, timeout=30, base_env=env, launcher=COLD)
    assert cold["stdout"] == "42\n", cold["stderr"]
    with WarmLauncher(preload=["service"], env=env) as launcher:
        # Forked without its thread, the script would wait for an answer until its timeout.
        hot = run_script(script, timeout=10, base_env=env, launcher=launcher)
    assert hot["status"] == ScriptStatus.ERROR
    assert "cannot preload 'service': importing it starts 1 thread(s) (doubler)" in error_of(hot)


def test_a_slow_preload_is_no_scripts_time(tmp_path: Path, warm: str) -> None:
    env = _preload_env(tmp_path, "slow", "import time\ntime.sleep(3)\n")
    script = write_script(tmp_path, "quick.py", "print('quick')\n")
    with WarmLauncher(preload=["slow"], env=env) as launcher:
        first = run_script(script, timeout=2, base_env=env, launcher=launcher)
        assert launcher.last_start[str(script)] is None  # forked by the slow server
    assert first["status"] == ScriptStatus.PASSED, first["error"]
    assert first["execution_time"] < 2


@pytest.mark.parametrize(
    ("ending", "cause"),
    [("os._exit(3)", "exit code 3"), ("os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV")],
    ids=["os_exit", "signal"],
)
def test_a_preload_that_kills_the_server_is_named(
    tmp_path: Path, ending: str, cause: str, warm: str
) -> None:
    env = _preload_env(tmp_path, "dies", f"import os, signal\n{ending}\n")
    script = write_script(tmp_path, "hi.py", "print('hi')\n")
    with WarmLauncher(preload=["json", "dies"], env=env) as launcher:
        result = run_script(script, timeout=30, base_env=env, launcher=launcher)
    assert result["status"] == ScriptStatus.ERROR
    assert f"cannot preload 'dies': the server died while importing it ({cause})" in error_of(
        result
    )


def test_a_preload_that_hangs_is_given_up_after_the_ready_timeout(
    tmp_path: Path, warm: str
) -> None:
    pid_file = tmp_path / "server.pid"
    env = _preload_env(
        tmp_path,
        "hangs",
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n",
    )
    script = write_script(tmp_path, "hi.py", "print('hi')\n")
    began = time.monotonic()
    with WarmLauncher(preload=["hangs"], env=env, ready_timeout=1) as launcher:
        result = run_script(script, timeout=30, base_env=env, launcher=launcher)
    assert time.monotonic() - began < 20  # the import would take 60 s
    assert "did not become ready in 1 s (still importing 'hangs')" in error_of(result)
    assert still_alive([int(pid_file.read_text())]) == []  # and the server is gone
    with pytest.raises(ValueError, match="ready_timeout"):
        WarmLauncher(ready_timeout=float("nan"))


# -- the server dying --------------------------------------------------------------------------


def test_a_server_killed_mid_run_fails_its_scripts_and_a_new_one_serves_the_rest(
    tmp_path: Path, warm: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    sleeper = write_script(
        tmp_path,
        "sleeper.py",
        f"import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\n"
        f"open(os.path.join({str(pids)!r}, str(child.pid)), 'w').close()\n"
        f"time.sleep(60)\n",
    )
    quick = write_script(tmp_path, "quick.py", "import os\nprint(os.getppid())\n")
    with WarmLauncher() as launcher:
        results: list[ScriptResult] = []
        runner = threading.Thread(
            target=lambda: results.append(run_script(sleeper, timeout=60, launcher=launcher))
        )
        runner.start()
        deadline = time.monotonic() + 20
        while len(list(pids.iterdir())) < 2:
            assert time.monotonic() < deadline, "the script never started"
            time.sleep(0.02)
        server = launcher.server_pid
        assert server is not None
        os.kill(server, signal.SIGKILL)
        runner.join(timeout=20)
        assert not runner.is_alive()
        after = run_script(quick, timeout=20, launcher=launcher)
        new_server = launcher.server_pid
    (result,) = results
    assert result["status"] == ScriptStatus.ERROR
    assert result["cause"] == FailureCause.WORKER_LOST
    assert "warm-start server died (killed by SIGKILL)" in error_of(result)
    assert still_alive(int(p.name) for p in pids.iterdir()) == []
    assert after["status"] == ScriptStatus.PASSED
    assert new_server is not None
    assert new_server != server
    assert int(after["stdout"]) == new_server  # forked by the new server
    assert still_alive([server, new_server]) == []  # closed, and reaped


def test_the_server_and_its_scripts_die_with_their_parent(tmp_path: Path, warm: str) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    sleeper = write_script(
        tmp_path,
        "sleeper.py",
        f"import os, time\n"
        f"open(os.path.join({str(pids)!r}, f'{{os.getpid()}}-{{os.getppid()}}'), 'w').close()\n"
        f"time.sleep(60)\n",
    )
    parent = textwrap.dedent(
        f"""
        from pytest_codomyrmex_exec import WarmLauncher, run_script
        run_script({str(sleeper)!r}, timeout=60, launcher=WarmLauncher())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 20
        while not list(pids.iterdir()):
            assert time.monotonic() < deadline, "the script never started"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no clean-up of any kind runs in the parent
        proc.wait()
        script, server = (int(p) for p in next(pids.iterdir()).name.split("-"))
        assert server != proc.pid  # forked by the server, not started by the parent
        assert still_alive([script, server], within=5.0) == []
    finally:
        proc.kill()


# -- the plugin --------------------------------------------------------------------------------


@pytest.mark.warm_modes  # each of them: how the reporter learns of a cold start differs
@pytest.mark.modes("inline", "process", "async", cold_starts=2)
def test_plugin_reports_each_cold_start_and_why(px: ExecPytester, mode: Mode, warm: str) -> None:
    px.script("forked_script.py", "import os\nprint(os.getppid())\n")
    px.script("marked_script.py", "# pytest.mark.exec(warm=False)\n")
    px.script("hashed_script.py", "# pytest.mark.exec(env={'PYTHONHASHSEED': '1'})\n")
    result = px.run("-v", "--exec-preload", "json, csv", *mode, *px.junit_args())
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*codomyrmex-exec: 2 script(s) started cold despite --exec-warm*",
            "marked_script.py::marked_script: cold: warm=False",
            "hashed_script.py::hashed_script: cold: PYTHONHASHSEED=1 (read at interpreter*",
        ]
    )
    assert sorted(_warm_properties(px.junit_path)) == [
        "cold: PYTHONHASHSEED=1 (read at interpreter start-up)",
        "cold: warm=False",
        "warm",
    ]


@pytest.mark.modes("inline")
def test_plugin_warm_options_are_checked(px: ExecPytester, mode: Mode, warm: str) -> None:
    px.script("ok_script.py", "import csv, sys\nassert 'csv' in sys.modules\n")
    bad = px.run("--exec-preload", "json,1bad", *mode)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--exec-preload: not a module name: '1bad'*"])
    px.ini(exec_warm="true", exec_preload="csv json")
    good = px.run()  # warm from the ini
    good.assert_outcomes(passed=1)
    missing = px.run("--exec-preload", "no_such_module_for_warm")
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(["*cannot preload 'no_such_module_for_warm'*"])


@pytest.mark.modes("inline")
def test_plugin_preload_is_found_on_pytests_pythonpath(
    px: ExecPytester, mode: Mode, warm: str
) -> None:
    px.ini(pythonpath="lib")
    px.script("lib/mymod.py", "import os\nLOADED_IN = os.getpid()\n")
    px.script(
        "uses_script.py",
        "import os, mymod\nassert mymod.LOADED_IN != os.getpid(), 'imported, not preloaded'\n",
    )
    result = px.run(*mode, "--exec-preload", "mymod", *px.junit_args())
    result.assert_outcomes(passed=1)
    assert _warm_properties(px.junit_path) == ["warm"]


@pytest.mark.modes("async")
def test_plugin_session_killed_leaves_no_server_or_script(
    px: ExecPytester, mode: Mode, warm: str
) -> None:
    # Each script records its pid and its parent's: the warm server.
    for i in range(2):
        px.script(
            f"sleep{i}_script.py",
            px.tracker() + "_track(_os.getppid())\nimport time\ntime.sleep(60)\n",
        )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *mode]
    command += ["--exec-workers", "2"]  # both at once, whatever the CPU count
    with subprocess.Popen(command, cwd=px.path, stdout=subprocess.DEVNULL) as proc:
        try:
            pids = px.wait_for_pids(3)  # two scripts, one server
            proc.kill()
            proc.wait()
            assert proc.pid not in pids
            assert len(pids) == 3
        finally:
            proc.kill()
    px.assert_no_process_left(at_least=3)
