"""Command-line options and ini keys, and their resolution into one validated value."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import itertools
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, final

import pytest

from ..engine.cpu_meter import AUTO_CAP_PER_CORE
from ..engine.resources import DEFAULT_RESOURCE_ENV, parse_capacities, parse_resource_env
from ..engine.spec import (
    DEFAULT_KILL_GRACE,
    DEFAULT_TIMEOUT,
    ScriptSpec,
    default_workers,
    validate_kill_grace,
    validate_memory_limit,
    validate_timeout,
)
from .durations import add_durations_options
from .shards import add_shard_options

DEFAULT_PATTERNS = ["*_script.py"]
BACKENDS = ("process", "async", "dask")
# Chosen by bench/run.py (docs/performance.md): equal on CPU-bound scripts, 5% slower on 200
# tiny ones, 12% faster with 16 workers on sleeping ones, where "process" misses its target.
DEFAULT_BACKEND: Literal["process", "async"] = "async"
ORDERS = ("duration", "collection")
CWDS = ("script", "tmp", "rootdir", "copy")
PRELOAD_AUTO = "auto"
"""The ``--exec-preload`` word for: what most scripts imported last time (preload_auto.py)."""

Backend = Literal["process", "async", "dask"]
Order = Literal["duration", "collection"]
Cwd = Literal["script", "tmp", "rootdir", "copy"]
LEAK_POLICIES = ("warn", "fail", "ignore")
LeakPolicy = Literal["warn", "fail", "ignore"]
DIRTY_CHOICES = ("warn", "fail", "ignore")
Dirty = Literal["warn", "fail", "ignore"]


class Unset(enum.Enum):
    """A setting neither the command line nor the ini file gave: the next source decides."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET


def timeout_setting(value: object) -> object:
    """The plugin's convention for a timeout (pytest-timeout's too): ``0`` means none, as
    ``None`` does in the engine; any other value is the engine's to check."""
    return None if value == 0 and not isinstance(value, bool) else value


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("codomyrmex-exec", "running *_script.py files as tests")
    group.addoption(
        "--exec-parallel",
        action="store_true",
        default=None,
        help="run script items in the background, in parallel (ini: exec_parallel)",
    )
    group.addoption(
        "--exec-workers",
        metavar="N|auto",
        default=None,
        help="scripts run at once with --exec-parallel; auto = one per CPU, more (up to "
        f"{AUTO_CAP_PER_CORE} per CPU) while the running scripts leave the CPUs idle "
        "(ini: exec_workers)",
    )
    group.addoption(
        "--exec-backend",
        default=None,
        help=f"parallel engine: {' or '.join(BACKENDS)} (default {DEFAULT_BACKEND}; "
        "ini: exec_backend)",
    )
    group.addoption(
        "--exec-timeout",
        metavar="SECONDS",
        default=None,
        help=f"per-script timeout, 0 for none (default {DEFAULT_TIMEOUT:g}; ini: exec_timeout)",
    )
    group.addoption(
        "--exec-kill-grace",
        metavar="SECONDS",
        default=None,
        help="seconds a stopped script gets between SIGTERM and SIGKILL to clean up "
        f"(default {DEFAULT_KILL_GRACE:g}; ini: exec_kill_grace)",
    )
    group.addoption(
        "--exec-memory-limit",
        metavar="MB",
        default=None,
        help="per-script address-space limit in MB (Unix; ini: exec_memory_limit)",
    )
    group.addoption(
        "--exec-python",
        metavar="PATH",
        default=None,
        help="interpreter the scripts run with (default: pytest's own; ini: exec_python)",
    )
    group.addoption(
        "--exec-order",
        default=None,
        help="start order among equal priorities: duration (longest first, remembered from "
        "the last run) or collection (default duration; ini: exec_order)",
    )
    group.addoption(
        "--exec-warm",
        action="store_true",
        default=None,
        help="fork scripts from a pre-warmed interpreter (Linux; ini: exec_warm)",
    )
    group.addoption(
        "--exec-preload",
        metavar="MODULES",
        default=None,
        help="modules the warm interpreter imports once, comma-separated; auto: those most "
        "scripts imported last time (ini: exec_preload)",
    )
    group.addoption(
        "--exec-cwd",
        default=None,
        help="where scripts run: script (their folder), tmp (a fresh temporary folder each, "
        "kept like tmp_path), rootdir, or copy (a temporary copy of their folder) "
        "(default script; ini: exec_cwd)",
    )
    group.addoption(
        "--exec-dask-scheduler",
        metavar="ADDRESS",
        default=None,
        help="with --exec-backend dask: the scheduler to connect to (default: "
        "$DASK_SCHEDULER_ADDRESS, else a local cluster of --exec-workers processes; "
        "ini: exec_dask_scheduler)",
    )
    parser.addini(
        "exec_script_patterns",
        "glob patterns of script files: file names (*_script.py) or paths from the rootdir "
        "(examples/**/*.py)",
        type="args",
        default=DEFAULT_PATTERNS,
    )
    parser.addini("exec_parallel", "run script items in parallel", type="bool", default=False)
    parser.addini("exec_workers", "scripts run at once (N or auto)", default="auto")
    parser.addini(
        "exec_backend", "parallel engine: process, async or dask", default=DEFAULT_BACKEND
    )
    parser.addini("exec_timeout", "per-script timeout in seconds", default="")
    parser.addini(
        "exec_kill_grace", "seconds between SIGTERM and SIGKILL for a stopped script", default=""
    )
    parser.addini(
        "exec_stdin",
        "text fed to the standard input of every script without exec(stdin=...) or "
        "exec(stdin_file=...)",
        default="",
    )
    parser.addini(
        "exec_args",
        "arguments (split like a shell does) of every script without exec(args=...)",
        default="",
    )
    parser.addini("exec_memory_limit", "per-script memory limit in MB", default="")
    parser.addini("exec_python", "interpreter the scripts run with", default="")
    parser.addini("exec_order", "start order: duration or collection", default="duration")
    parser.addini(
        "exec_warm", "fork scripts from a pre-warmed interpreter", type="bool", default=False
    )
    parser.addini(
        "exec_preload", "modules the warm interpreter imports once", type="args", default=[]
    )
    parser.addini("exec_cwd", "where scripts run: script, tmp, rootdir or copy", default="script")
    parser.addini(
        "exec_dirty",
        "files scripts create or modify under the rootdir: warn (listed in the run summary), "
        "fail (their script fails) or ignore (not recorded)",
        default="warn",
    )
    parser.addini("exec_dask_scheduler", "address of the Dask scheduler to use", default="")
    parser.addini(
        "exec_dask_connect_timeout",
        "seconds to reach the Dask scheduler (and a lost connection may last)",
        default="30",
    )
    parser.addini(
        "exec_dask_call_timeout",
        "seconds for any other exchange with the Dask cluster",
        default="30",
    )
    parser.addini(
        "exec_resources",
        "capacities of scarce resources scripts ask for with exec(resources=...), "
        "e.g. 'GPU=1 db=2'",
        default="",
    )
    # Scarce devices (docs/resources.md): which variables get the ids, and a missing one.
    parser.addini(
        "exec_resource_env",
        "variables that get a resource's ids besides EXEC_RESOURCE_<NAME>, e.g. "
        "'GPU=CUDA_VISIBLE_DEVICES,HIP_VISIBLE_DEVICES' (GPU: CUDA_VISIBLE_DEVICES by default)",
        default="",
    )
    parser.addini(
        "exec_missing_resources",
        "a script needing more of a resource than exists: error (default) or skip",
        default="error",
    )
    parser.addini(
        "exec_flaky",
        "a script that passed only on a later try (max_runs, a rerun): pass (default) or fail",
        default="pass",
    )
    parser.addini(
        "exec_leaks",
        "a script that exits leaving processes running (they are killed): warn (default: "
        "the run summary names them), fail (the script fails) or ignore",
        default="warn",
    )
    parser.addini(
        "exec_guardian",
        "Linux: a guardian process kills the scripts if pytest is killed (SIGKILL, OOM)",
        type="bool",
        default=True,
    )
    add_view_options(group, parser)
    # Shards and the durations file (plugin/shards.py, plugin/durations.py).
    add_shard_options(group)
    add_durations_options(group, parser)
    add_changed_options(group, parser)
    add_notice_inis(parser)


def add_changed_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    """``--exec-changed`` and its deps store (plugin/changed.py)."""
    group.addoption(
        "--exec-changed",
        action="store_true",
        default=None,
        help="record what each script reads and imports, and deselect the scripts whose "
        "inputs are unchanged since their last passing run (ini: exec_changed)",
    )
    group.addoption(
        "--exec-deps-file",
        metavar="PATH",
        default=None,
        help="where --exec-changed keeps what scripts depended on, to share between CI runs "
        "(default: pytest's cache; ini: exec_deps_file)",
    )
    parser.addini(
        "exec_changed",
        "deselect the scripts whose recorded inputs are unchanged since they last passed",
        type="bool",
        default=False,
    )
    parser.addini(
        "exec_deps_file",
        "JSON file of what scripts depended on (--exec-changed), relative to the ini file",
        default="",
    )


PATH_OPTIONS = ("--exec-python", "--exec-durations-file", "--exec-deps-file")
"""Options whose value is a path: given as a separate argument, pytest takes the value for a
test path, since it picks the rootdir and ini file before any plugin's options exist."""
OUTPUT_PATH_OPTIONS = ("--exec-report", "--exec-timeline")
"""Files the run writes, refused as a separate argument only outside the current folder:
inside it, pytest looks for the ini file from the file's folder up and finds the same one
(the docs write ``--exec-report runs.jsonl``). Outside, once the file exists (the second
run), the rootdir moves above it and the ini file goes unread; refused on the first run too,
so that a command that works once keeps working."""


def refuse_separate_path_values(args: Sequence[str], invocation_dir: str) -> None:
    """Raise a UsageError for ``--exec-python PATH`` (two arguments) in ``args``, or for
    ``--exec-report PATH`` where ``PATH`` lies outside ``invocation_dir``.

    pytest reads ``PATH`` as a test path when it decides the rootdir and ini file, before
    plugin options are known: the rootdir would move to PATH's folder (or to a common
    ancestor such as ``/``) and the project's ini file could be ignored. ``=`` keeps the value
    in one argument, out of that decision. ``args`` are the command line and
    ``PYTEST_ADDOPTS``; the ini file's ``addopts`` come after the decision and are harmless.
    """
    for option, value in itertools.pairwise(args):
        if option == "--":  # what follows is positional
            return
        if value.startswith("-"):
            continue
        outside = not os.path.abspath(os.path.join(invocation_dir, value)).startswith(
            os.path.join(os.path.abspath(invocation_dir), "")
        )
        if option in PATH_OPTIONS or (option in OUTPUT_PATH_OPTIONS and outside):
            raise pytest.UsageError(
                f"{option}: write {option}={value} (one argument). Given as two, pytest "
                f"takes {value!r} for a test path before plugin options exist, which moves "
                "the rootdir and can leave the project's ini file unread."
            )


def add_view_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    """What users see: live output, the run summary, the JSONL report, skip exit codes."""
    group.addoption(
        "--exec-live",
        action="store_true",
        default=None,
        help="stream each script's output lines as they are written; implied by -s with "
        "--exec-parallel (ini: exec_live)",
    )
    group.addoption(
        "--exec-summary",
        default=None,
        help="the run summary of script items at the end: yes or no (default yes; "
        "ini: exec_summary)",
    )
    group.addoption(
        "--exec-report",
        metavar="PATH",
        default=None,
        help="write one JSON line per script to PATH as each finishes (ini: exec_report)",
    )
    group.addoption(
        "--exec-timeline",
        metavar="PATH",
        default=None,
        help="write the run as a picture to PATH (an HTML page): one lane per worker slot, "
        "a bar per script (ini: exec_timeline)",
    )
    parser.addini("exec_live", "stream script output as it is written", type="bool", default=False)
    parser.addini("exec_summary", "the run summary of script items: yes or no", default="yes")
    parser.addini("exec_report", "JSON lines file of script results", default="")
    parser.addini("exec_timeline", "HTML page of the run's timeline", default="")
    parser.addini(
        "exec_skip_exit_codes",
        "exit codes that make a script skipped (e.g. 77), reason: its last stderr line",
        type="args",
        default=[],
    )


@final
@dataclass(frozen=True, slots=True)
class ExecOptions:
    """The session-wide settings, from the command line or else the ini file."""

    patterns: tuple[str, ...]
    parallel: bool
    workers: int
    """Scripts at once; with :attr:`auto_workers`, where the count starts (one per CPU)."""
    backend: Backend
    timeout: float | Unset | None
    """Seconds, or ``None`` for no timeout; :data:`UNSET` when neither the command line nor
    the ini file gave one."""
    memory_limit_mb: float | None
    python: str | None
    order: Order
    warm: bool = False
    """Fork scripts from a pre-warmed interpreter (``--exec-warm``)."""
    preload: tuple[str, ...] = ()
    """Modules the warm interpreter imports once (``--exec-preload``)."""
    preload_auto: bool = False
    """``auto`` among them: also what most scripts imported last time (plugin/preload_auto.py)."""
    cwd: Cwd = "script"
    """Where a script without an exec(cwd=...) mark runs."""
    live: bool = False
    """Stream script output lines to the terminal as they are written."""
    summary: bool = True
    report_path: str | None = None
    timeline_path: str | None = None
    """Where ``--exec-timeline`` draws the run (an HTML page); ``None``: nowhere."""
    skip_exit_codes: frozenset[int] = frozenset()
    dask_scheduler: str | None = None
    """The Dask scheduler's address; ``None``: start a local cluster (``--exec-backend dask``)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Capacities of scarce resources (ini ``exec_resources``); ``Slots`` where ids are given."""
    running_notice_after: float = 5.0
    """Seconds without a script finishing before ``--exec-parallel`` says what runs."""
    stop_report_after: float = 10.0
    """Seconds the backend may take to stop before the session says that it does not."""
    resource_env: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_RESOURCE_ENV)
    )
    """Variables that get a resource's ids (ini ``exec_resource_env``)."""
    missing_resources: Literal["error", "skip"] = "error"
    """What a script needing more than exists becomes (ini ``exec_missing_resources``)."""
    flaky: Literal["pass", "fail"] = "pass"
    """The outcome of a script that passed only on a later try (ini ``exec_flaky``)."""
    kill_grace: float = DEFAULT_KILL_GRACE
    """Seconds between SIGTERM and SIGKILL for a script without exec(kill_grace=...)."""
    stdin: str | None = None
    """Input of every script without its own (ini ``exec_stdin``)."""
    args: tuple[str, ...] | None = None
    """Arguments of every script without its own (ini ``exec_args``)."""
    changed: bool = False
    """Record scripts' inputs and deselect the unchanged ones (``--exec-changed``)."""
    auto_workers: bool = False
    """``--exec-workers auto``: the count follows the scripts' CPU use (not on Dask)."""
    leaks: LeakPolicy = "warn"
    """What processes a script leaves running make of it (ini ``exec_leaks``): a line in the
    run summary, a failure, or nothing."""
    dirty: Dirty = "warn"
    """What files a script writes under the rootdir make (ini ``exec_dirty``)."""

    @property
    def record(self) -> bool:
        """Do scripts run with the recorder (``ScriptSpec.record``)? For what they write
        (``exec_dirty``), what they read (``--exec-changed``) and what they import
        (``--exec-preload auto``)."""
        return self.dirty != "ignore" or self.changed or (self.warm and self.preload_auto)


def _pick(config: pytest.Config, option: str, ini: str) -> tuple[str, str] | None:
    """Return ``(value, where)`` from the command line, else the ini file, else ``None``."""
    value = config.getoption(option)
    if value is not None:
        return str(value), "--" + option.replace("_", "-")
    raw = config.getini(ini)
    if isinstance(raw, str) and raw.strip():
        return raw.strip(), f"ini option {ini!r}"
    return None


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise pytest.UsageError(f"{where}: expected a number, got {text!r}") from None


def _validated(check: Callable[[object], float | None], text: str, where: str) -> float | None:
    """``text`` as the engine's validator ``check`` takes it; its refusal, a UsageError
    naming the option or ini key (not an error of every script, blamed on its exec mark)."""
    try:
        return check(_number(text, where))
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {text!r} is not usable: {exc}") from None


def _flag(config: pytest.Config, name: str) -> bool:
    if config.getoption(name):
        return True
    try:
        return bool(config.getini(name))
    except (ValueError, pytest.UsageError) as exc:
        # pytest's own bool parsing says "invalid truth value 'maybe'" (as a ValueError
        # before pytest 9.2, a UsageError since) without naming the key: name it.
        raise pytest.UsageError(f"ini option {name!r}: {exc}") from None


def _preload(config: pytest.Config) -> tuple[tuple[str, ...], bool]:
    """Module names from --exec-preload (comma-separated), else the ini list; and whether
    ``auto`` is among them."""
    given = config.getoption("exec_preload")
    if given is not None:
        where, items = "--exec-preload", [str(given)]
    else:
        where, items = "ini option 'exec_preload'", [str(i) for i in config.getini("exec_preload")]
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    named = tuple(name for name in names if name != PRELOAD_AUTO)
    for name in named:
        if not all(part.isidentifier() for part in name.split(".")):
            raise pytest.UsageError(f"{where}: not a module name: {name!r}")
    return named, PRELOAD_AUTO in names


def _choice(config: pytest.Config, name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` from the command line or ini file, else ``default``."""
    picked = _pick(config, name, name)
    if picked is None:
        return default
    text, where = picked
    if text not in choices:
        raise pytest.UsageError(f"{where}: expected one of {', '.join(choices)}, got {text!r}")
    return text


def resolve_options(config: pytest.Config) -> ExecOptions:
    """Validate every option once, at configure time; a bad value is a UsageError naming it."""
    parallel = _flag(config, "exec_parallel")

    workers = default_workers()
    picked = _pick(config, "exec_workers", "exec_workers")
    if picked and picked[0] != "auto":
        text, where = picked
        if not text.isdigit() or int(text) < 1:
            raise pytest.UsageError(
                f"{where}: expected a whole number >= 1 or 'auto', got {text!r}"
            )
        workers = int(text)
    auto_workers = picked is None or picked[0] == "auto"

    backend = cast(Backend, _choice(config, "exec_backend", BACKENDS, DEFAULT_BACKEND))

    timeout: float | Unset | None = UNSET
    picked = _pick(config, "exec_timeout", "exec_timeout")
    if picked:
        text, where = picked
        timeout = _validated(lambda value: validate_timeout(timeout_setting(value)), text, where)

    kill_grace = DEFAULT_KILL_GRACE
    picked = _pick(config, "exec_kill_grace", "exec_kill_grace")
    if picked:
        kill_grace = cast(float, _validated(validate_kill_grace, *picked))

    memory: float | None = None
    picked = _pick(config, "exec_memory_limit", "exec_memory_limit")
    if picked:
        # What setrlimit cannot take (inf, 1e300) would break every launch: refuse it now.
        memory = _validated(validate_memory_limit, *picked)

    python: str | None = None
    picked = _pick(config, "exec_python", "exec_python")
    if picked:
        text, where = picked
        if not (os.path.isfile(text) and os.access(text, os.X_OK)):
            raise pytest.UsageError(f"{where}: no executable interpreter at {text!r}")
        python = os.path.abspath(text)

    order = cast(Order, _choice(config, "exec_order", ORDERS, "duration"))

    warm = _flag(config, "exec_warm")
    if warm:
        from ..engine.forkserver import WARM_SUPPORTED

        if not WARM_SUPPORTED:
            raise pytest.UsageError("--exec-warm needs fork() and SCM_RIGHTS (Linux, macOS)")
    cwd = cast(Cwd, _choice(config, "exec_cwd", CWDS, "script"))
    preload, preload_auto = _preload(config)

    patterns = tuple(str(p) for p in config.getini("exec_script_patterns"))
    dask_scheduler = _dask_scheduler(config) if backend == "dask" else None
    resources = _resources(config)
    return ExecOptions(
        patterns=patterns,
        parallel=parallel,
        workers=workers,
        auto_workers=auto_workers,
        backend=backend,
        timeout=timeout,
        memory_limit_mb=memory,
        python=python,
        order=order,
        dask_scheduler=dask_scheduler,
        resources=resources,
        resource_env=_resource_env(config, resources),
        missing_resources=cast(
            Literal["error", "skip"],
            _ini_choice(config, "exec_missing_resources", ("error", "skip")),
        ),
        flaky=cast(Literal["pass", "fail"], _ini_choice(config, "exec_flaky", ("pass", "fail"))),
        leaks=_leaks(config),
        warm=warm,
        preload=preload,
        preload_auto=preload_auto,
        cwd=cwd,
        dirty=_dirty(config),
        kill_grace=kill_grace,
        changed=_flag(config, "exec_changed"),
        **_script_defaults(config),
        **_view_options(config, parallel),
        running_notice_after=_seconds(config, "exec_running_notice_after"),
        stop_report_after=_seconds(config, "exec_stop_report_after"),
    )


def _script_defaults(config: pytest.Config) -> dict[str, Any]:
    """ini ``exec_stdin`` and ``exec_args``: what every script without its own gets."""
    defaults: dict[str, Any] = {}
    stdin = config.getini("exec_stdin")
    if isinstance(stdin, str) and stdin.strip():
        # As typed at a prompt: every line ends, the last one included.
        text = stdin.strip("\n") + "\n"
        defaults["stdin"] = _checked_default("exec_stdin", "stdin", text)
    args = config.getini("exec_args")
    if isinstance(args, str) and args.strip():
        try:
            split = tuple(shlex.split(args))
        except ValueError as exc:  # an unclosed quote
            raise pytest.UsageError(f"ini option 'exec_args': {exc}: {args!r}") from None
        defaults["args"] = _checked_default("exec_args", "args", split)
    return defaults


def _checked_default(ini: str, keyword: str, value: object) -> object:
    """``value`` as the spec's ``keyword`` takes it; its refusal, a UsageError naming the ini
    key (not an error of every script)."""
    try:
        ScriptSpec.build(".", **{keyword: value})
    except ValueError as exc:
        raise pytest.UsageError(f"ini option {ini!r}: {exc}") from None
    return value


def _view_options(config: pytest.Config, parallel: bool) -> dict[str, Any]:
    live = bool(config.getoption("exec_live"))
    if not live:
        try:
            live = bool(config.getini("exec_live"))
        except (ValueError, pytest.UsageError) as exc:
            raise pytest.UsageError(f"ini option 'exec_live': {exc}") from None
    # -s with --exec-parallel: output is not captured, so show it as it comes.
    live = live or (parallel and config.getoption("capture", "fd") == "no")

    summary = _choice(config, "exec_summary", ("yes", "no"), "yes") == "yes"

    picked = _pick(config, "exec_report", "exec_report")
    report_path = os.path.abspath(picked[0]) if picked else None
    picked = _pick(config, "exec_timeline", "exec_timeline")
    timeline_path = _page_path(*picked) if picked else None

    codes: set[int] = set()
    for text in config.getini("exec_skip_exit_codes"):
        try:
            code = int(text)
        except ValueError:
            code = -1
        if not 0 < code < 256:
            raise pytest.UsageError(
                f"ini option 'exec_skip_exit_codes': expected exit codes 1-255, got {text!r}"
            )
        codes.add(code)
    return {
        "live": live,
        "summary": summary,
        "report_path": report_path,
        "timeline_path": timeline_path,
        "skip_exit_codes": frozenset(codes),
    }


def _page_path(text: str, where: str) -> str:
    """A file path written at the run's end, checked now: a run should not learn at its end
    that its page has nowhere to go."""
    path = os.path.abspath(text)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise pytest.UsageError(f"{where}: {text} is a folder, not a file")
    if not os.path.isdir(folder):
        raise pytest.UsageError(f"{where}: cannot write {text}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise pytest.UsageError(f"{where}: cannot write {text}: permission denied")
    return path


def _dask_scheduler(config: pytest.Config) -> str | None:
    """The scheduler address (option, ini, ``DASK_SCHEDULER_ADDRESS``); refuse the dask
    backend when ``distributed`` is missing."""
    try:
        found = importlib.util.find_spec("distributed") is not None
    except ValueError:  # sys.modules["distributed"] is None: blocked on purpose
        found = False
    if not found:
        raise pytest.UsageError(
            "--exec-backend dask needs the distributed package: pip install 'distributed>=2024.1'"
        )
    picked = _pick(config, "exec_dask_scheduler", "exec_dask_scheduler")
    if picked:
        return picked[0]
    return os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip() or None


def _resources(config: pytest.Config) -> dict[str, float]:
    raw = config.getini("exec_resources")
    try:
        return parse_capacities(raw if isinstance(raw, str) else "")
    except ValueError as exc:
        raise pytest.UsageError(f"ini option 'exec_resources': {exc}") from None


# -- how long the parallel session waits before it tells (ini only: rarely changed, and
# mostly by test suites that would otherwise wait the real time out)

NOTICE_INIS = {
    "exec_running_notice_after": (
        "running_notice_after",
        "seconds without a script finishing before --exec-parallel says which scripts run",
    ),
    "exec_stop_report_after": (
        "stop_report_after",
        "seconds the parallel backend may take to stop before the session says it does not",
    ),
}


def add_notice_inis(parser: pytest.Parser) -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(ExecOptions)}
    for key, (attribute, help_text) in NOTICE_INIS.items():
        parser.addini(key, help_text, default=f"{defaults[attribute]:g}")


def _seconds(config: pytest.Config, key: str) -> float:
    text = str(config.getini(key)).strip()
    seconds = _number(text, f"ini option {key!r}")
    if not 0 < seconds < math.inf:
        raise pytest.UsageError(
            f"ini option {key!r}: expected a positive number of seconds, got {text!r}"
        )
    return seconds


def _resource_env(config: pytest.Config, resources: dict[str, float]) -> dict[str, tuple[str, ...]]:
    raw = config.getini("exec_resource_env")
    try:
        return parse_resource_env(raw if isinstance(raw, str) else "", resources)
    except ValueError as exc:
        raise pytest.UsageError(f"ini option 'exec_resource_env': {exc}") from None


def _ini_choice(config: pytest.Config, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` from the ini key ``name`` (which has no option); empty is the first."""
    raw = str(config.getini(name)).strip()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise pytest.UsageError(
            f"ini option {name!r}: expected {' or '.join(choices)}, got {raw!r}"
        )
    return raw


def _leaks(config: pytest.Config) -> LeakPolicy:
    raw = str(config.getini("exec_leaks")).strip() or "warn"
    if raw not in LEAK_POLICIES:
        raise pytest.UsageError(
            f"ini option 'exec_leaks': expected one of {', '.join(LEAK_POLICIES)}, got {raw!r}"
        )
    return cast(LeakPolicy, raw)


def _dirty(config: pytest.Config) -> Dirty:
    raw = str(config.getini("exec_dirty")).strip() or "warn"
    if raw not in DIRTY_CHOICES:
        raise pytest.UsageError(
            f"ini option 'exec_dirty': expected one of {', '.join(DIRTY_CHOICES)}, got {raw!r}"
        )
    return cast(Dirty, raw)
