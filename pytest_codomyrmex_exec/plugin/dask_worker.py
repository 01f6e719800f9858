"""The Dask worker's side of the ``dask`` backend: the task that runs one script there.

Imports neither pytest nor any module of the plugin that does (a test checks): it runs in a
Dask worker process, and depends only on the engine, :mod:`.environment` and ``distributed``.
The pytest side (:mod:`.dask_backend`) submits :func:`run_on_worker` with a spec, its key
and a :class:`WorkerRun`, and reads back the names and keys defined here.

Every exchange with the scheduler has a deadline (:func:`bounded`): a worker that cannot
reach it gives up instead of waiting, as does pytest's side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, final

from ..engine.parallel import BATCH_ENV_VAR
from ..engine.results import FailureCause, ScriptResult, ScriptStatus, make_result
from ..engine.run import run_spec
from ..engine.spec import ScriptSpec
from .environment import child_environment

logger = logging.getLogger(__name__)

T = TypeVar("T")

WORKER_TAG_VAR = "CODOMYRMEX_EXEC_DASK_WORKER"
"""Set in a script's environment on a worker: that worker's id. When the worker dies its
script lives on (a session of its own); the engine's ``kill_tagged`` finds it by this."""

CANCEL_POLL = 0.2
"""Seconds between two looks at the cancel ``Event`` from one task: the engine asks every
0.05 s, but each look is a round trip to the scheduler."""

GIVE_UP_ON_SCHEDULER = 10.0
"""A task that cannot reach the scheduler this long stops its script (or does not start it):
no one could collect its result, and it must not run on unsupervised."""

LOOK_WAIT = 1.0
"""Seconds one look at the cancel ``Event`` may hold the engine's loop."""

NAMESPACE = "codomyrmex-exec"
STARTED_TOPIC = f"{NAMESPACE}-started"
"""The Dask event topic of script starts, one for every run: the scheduler keeps the last
1,000 events of each topic for good, so one topic per run would grow a long-lived
scheduler with every run. Each subscriber keeps its own run's events."""

_SHARED_FILESYSTEM_CAUSES = (FailureCause.MISSING_PATH, FailureCause.START_FAILED)
"""Causes that, on a worker, mostly mean it does not see pytest's files at the same paths."""


def distributed() -> Any:
    """The ``distributed`` package, imported on first use (it is partly untyped: ``Any``)."""
    import distributed

    return distributed


def worker_label(address: str, name: object) -> str:
    """How a report names a worker: its address, and its name when that says more."""
    text = str(name)
    return address if not text or text == address else f"{address} (name {text})"


def cancel_name(run_id: str) -> str:
    """The run's cancel ``Event`` on the scheduler."""
    return f"{NAMESPACE}-cancel-{run_id}"


def run_metadata(run_id: str, *path: str) -> list[str]:
    """A key in the scheduler's metadata, under the run's own (removed at the end of the run)."""
    return [NAMESPACE, run_id, *path]


def claim_key(run_id: str, key: int) -> list[str]:
    """Where the task of job ``key`` claims its script before starting it."""
    return run_metadata(run_id, "claims", str(key))


FAIL_FAST = "fail-fast"
"""The run's metadata for ``-x``/``--maxfail``: ``failed`` holds the keys of the tasks whose
script did not pass, ``judged`` those that pytest's side has judged not to stop the run. A
task starts its script only once every failure is judged (or never, once the run stops)."""


class Unreachable(Exception):
    """An exchange with the scheduler did not finish within its deadline (or was abandoned)."""


def bounded(
    call: Callable[[], T],
    seconds: float,
    what: str,
    *,
    stop: threading.Event | None = None,
    discard: Callable[[T], object] | None = None,
) -> T:
    """``call()``, given up after ``seconds`` (or as soon as ``stop`` is set).

    Dask's own timeouts do not bound everything (a client connecting to a server that is
    not a scheduler waits forever), so the call runs in a daemon thread and is abandoned,
    still blocked, when time is up: :class:`Unreachable` names ``what``. A result that
    arrives after that is given to ``discard`` (to close a late connection).
    """
    done = threading.Event()
    outcome: list[Any] = []
    lock = threading.Lock()
    abandoned = False

    def target() -> None:
        try:
            value: Any = call()
            failed = False
        except BaseException as exc:  # handed to the caller
            value, failed = exc, True
        with lock:
            late = abandoned
            outcome.append((failed, value))
        done.set()
        if late and not failed and discard is not None:
            try:
                discard(value)
            except Exception as exc:  # nobody waits for it any more
                logger.warning("cannot release what %s gave after its deadline: %r", what, exc)

    threading.Thread(target=target, name=f"codomyrmex-exec-dask: {what}", daemon=True).start()
    deadline = time.monotonic() + seconds
    while not done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            with lock:
                if not outcome:
                    abandoned = True
                    reason = (
                        "stopped" if time.monotonic() < deadline else f"no answer in {seconds:g} s"
                    )
                    raise Unreachable(f"{what}: {reason}")
            break
    failed, value = outcome[0]
    if failed:
        raise value
    return value  # type: ignore[no-any-return]


@final
class DaskCancelSignal:
    """The engine's cancel signal inside a task: set when the run is cancelled or the task is.

    Two sources. The task's own state on this worker, read locally at every look: Dask
    cancels a running task when nobody wants its result any more, as when pytest died
    (SIGKILL, out of memory) and the scheduler dropped its client. And the run's Dask
    ``Event``, a round trip to the scheduler, so read at most every :data:`CANCEL_POLL` s.
    Once set it stays set.

    A look at the ``Event`` holds the engine's loop (which also reads the script's output
    and keeps its timeout) for at most :data:`LOOK_WAIT` s; one still unanswered then goes
    on in its thread, and no other starts until it ends. If the scheduler has not answered
    for :data:`GIVE_UP_ON_SCHEDULER` s the signal counts as set: no one could collect the
    result, and the script must not run on unsupervised.
    """

    def __init__(self, name: str, worker: Any, client: Any, key: object) -> None:
        self._name = name
        self._worker = worker
        self._key = key
        # Its client given, not looked up: the look runs in a thread of its own, which is
        # not the task's, and Dask finds a task's client by thread.
        self._event = distributed().Event(name, client=client)
        self._next = 0.0
        self._set = False
        self._answered = time.monotonic()
        self._look: threading.Thread | None = None

    def is_set(self) -> bool:
        if self._set:
            return True
        task = self._worker.state.tasks.get(self._key)
        if task is None or task.state == "cancelled":
            self._set = True
            return True
        now = time.monotonic()
        if now >= self._next and (self._look is None or not self._look.is_alive()):
            self._next = now + CANCEL_POLL
            self._look = threading.Thread(target=self._ask, name=self._name, daemon=True)
            self._look.start()
            self._look.join(LOOK_WAIT)
        if not self._set and time.monotonic() - self._answered > GIVE_UP_ON_SCHEDULER:
            logger.warning(
                "no answer about %s for %g s: stopping", self._name, GIVE_UP_ON_SCHEDULER
            )
            self._set = True
        return self._set

    def _ask(self) -> None:
        try:
            answer = bool(self._event.is_set())
        except Exception as exc:  # the scheduler is unreachable or going away
            logger.warning("cannot read the cancel event %s: %r", self._name, exc)
            return
        self._answered = time.monotonic()
        if answer:
            self._set = True


@final
@dataclass(frozen=True, slots=True)
class WorkerRun:
    """What every task of one run needs besides its spec and key: plain values, pickled to
    the worker."""

    run_id: str
    """The run's id: its cancel event, its metadata, :data:`BATCH_ENV_VAR` of its scripts."""
    session_tag: str
    """The session's tag, set in the script's environment as locally."""
    fail_fast: bool = False
    """``-x``/``--maxfail``: a script that did not pass holds every later start until
    pytest's side has judged it (see :data:`FAIL_FAST`)."""
    call_timeout: float = 30.0
    """Seconds for one exchange with the scheduler."""


def run_on_worker(spec: ScriptSpec, key: int, run: WorkerRun) -> ScriptResult:
    """The task: run ``spec`` on this worker once, and return its result with ``worker`` set.

    Module-level and given plain values, so Dask pickles it by reference (the package must be
    installed on the workers, as it is in the same environment).
    """
    dask = distributed()
    worker = dask.get_worker()
    label = worker_label(worker.address, worker.name)

    def not_run(status: ScriptStatus, cause: FailureCause, error: str) -> ScriptResult:
        return make_result(spec.script, status, error=error, attempts=0, worker=label, cause=cause)

    # Here, not in a bounded thread: Dask knows a task's worker by thread. The worker is
    # connected already; its client connects with a deadline.
    client = dask.get_client(timeout=run.call_timeout)
    cancel = DaskCancelSignal(cancel_name(run.run_id), worker, client, worker.get_current_task())
    try:
        if not _may_start(client, run, cancel):
            return not_run(ScriptStatus.CANCELLED, FailureCause.CANCELLED, "cancelled")
        claim = claim_key(run.run_id, key)
        what = "the script's claim"
        earlier = bounded(lambda: client.get_metadata(claim, None), run.call_timeout, what)
        if earlier is not None:
            return make_result(
                spec.script,
                ScriptStatus.ERROR,
                error=f"the Dask worker {earlier['label']} died while running the script; it "
                "is not run a second time (scripts may have side effects)",
                attempts=1,
                worker=str(earlier["label"]),
                cause=FailureCause.WORKER_LOST,
            )
        mine = {"label": label, "id": worker.id}
        bounded(lambda: client.set_metadata(claim, mine), run.call_timeout, what)
    except Unreachable as exc:
        return not_run(
            ScriptStatus.ERROR,
            FailureCause.ENGINE,
            f"Dask worker {label} cannot reach the scheduler: {exc}",
        )
    worker.log_event(STARTED_TOPIC, {"run": run.run_id, "key": key, "worker": label})
    base_env = child_environment(run.session_tag)  # this machine's environment, not pytest's
    base_env[BATCH_ENV_VAR] = run.run_id
    base_env[WORKER_TAG_VAR] = worker.id
    result = run_spec(spec, base_env=base_env, cancel_event=cancel)
    result["worker"] = label
    if run.fail_fast and result["status"] not in (ScriptStatus.PASSED, ScriptStatus.CANCELLED):
        # Before the result leaves: the next task on this worker must already see it.
        failed = run_metadata(run.run_id, FAIL_FAST, "failed", str(key))
        try:
            bounded(lambda: client.set_metadata(failed, True), run.call_timeout, "fail-fast")
        except Unreachable as exc:
            logger.warning("cannot record the failure of %s: %s", spec.script, exc)
    if result["cause"] in _SHARED_FILESYSTEM_CAUSES:
        result["error"] = (
            f"{result['error']} on Dask worker {label}: workers must see the scripts, their "
            "folders and the interpreter at the same paths as pytest does (a shared filesystem)"
        )
    return result


def _may_start(client: Any, run: WorkerRun, cancel: DaskCancelSignal) -> bool:
    """Wait while a failure of the run awaits pytest's judgement (``-x``); ``False`` once
    the run or this task is cancelled. Checked before the claim, so a task that never
    starts its script is never announced as started."""
    where = run_metadata(run.run_id, FAIL_FAST)
    while not cancel.is_set():
        if not run.fail_fast:
            return True
        state = bounded(lambda: client.get_metadata(where, {}), run.call_timeout, "fail-fast")
        if set(state.get("failed", {})) <= set(state.get("judged", {})):
            return True
        time.sleep(CANCEL_POLL)
    return False
