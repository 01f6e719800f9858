"""The Dask worker's side of the ``dask`` backend: the task that runs one script there.

Imports neither pytest nor any module of the plugin that does (a test checks): it runs in a
Dask worker process, and depends only on the engine, :mod:`.environment` and ``distributed``.
The pytest side (:mod:`.dask_backend`) submits :func:`run_on_worker` with a spec, its key
and a :class:`WorkerRun`, and reads back the names and keys defined here.

Every exchange with the scheduler has a deadline (:func:`bounded`): a worker that cannot
reach it gives up instead of waiting, as does pytest's side.

Device ids: Dask counts a worker's ``--resources`` but does not say *which* unit a task holds.
Each worker keeps a :class:`ResourcePool` of its own units (:func:`worker_capacities`); a task
takes its ids from it, gives them to its script as a local run does (``EXEC_RESOURCE_<NAME>``,
``CUDA_VISIBLE_DEVICES``) and gives them back when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, final

from ..engine.parallel import BATCH_ENV_VAR
from ..engine.resources import (
    DEFAULT_RESOURCE_ENV,
    GPU,
    Amounts,
    Assigned,
    ResourcePool,
    Slots,
    detect_gpus,
    unmet_demand,
    with_resource_env,
    with_resource_ids,
)
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

RESOURCE_IDS_VAR = "CODOMYRMEX_EXEC_DASK_RESOURCE_IDS"
"""Set by a local cluster in each of its workers' environment: the ids of the units of
``exec_resources`` that worker was given, as JSON (``{"GPU": ["0", "2"], "db": null}``;
``null``: a share with a fraction, ids ``0``..``n-1``)."""

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
    resource_env: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_RESOURCE_ENV)
    )
    """The variables that get a resource's ids (ini ``exec_resource_env``)."""


def worker_capacities(total: Amounts, environ: Mapping[str, str]) -> dict[str, float]:
    """A worker's units, from its ``--resources`` (``total``): with the ids a local cluster
    gave it (:data:`RESOURCE_IDS_VAR`), else for GPU those in its ``CUDA_VISIBLE_DEVICES``,
    else ``0``..``n-1``. Raise ``ValueError`` when ids and amount disagree: which of them
    the user meant cannot be told, and either guess would put two scripts on one device."""
    given: dict[str, list[str] | None] = json.loads(environ.get(RESOURCE_IDS_VAR) or "{}")
    capacities: dict[str, float] = {}
    for name, amount in total.items():
        ids = given.get(name)
        source = RESOURCE_IDS_VAR
        if name not in given and name == GPU and "CUDA_VISIBLE_DEVICES" in environ:
            ids, source = list(detect_gpus(environ).ids), "CUDA_VISIBLE_DEVICES"
        if ids is None:
            capacities[name] = amount
        elif len(ids) != amount:
            raise ValueError(
                f"it has resource {name}={amount:g} but {source} gives {len(ids)} ids "
                f"({','.join(ids) or 'none'}): start it with --resources {name}={len(ids)}, "
                f"or with {source} listing {amount:g} ids"
            )
        else:
            capacities[name] = Slots(ids)
    return capacities


@final
class WorkerPool:
    """The units of one worker, shared by its tasks (threads) and by every run on it.

    Dask's count admits a task when the worker has enough of each resource in total, but
    shares may not pack onto one unit (0.6 and 0.6 on two units leave no 0.8 on either): such
    a task waits here for a unit to free, as it would wait for a slot locally.
    """

    def __init__(self, capacities: Amounts) -> None:
        self.capacities = dict(capacities)
        self._pool = ResourcePool(capacities)
        self._changed = threading.Condition()

    def take(self, demand: Amounts, cancel: DaskCancelSignal) -> Assigned | None:
        """Hold ``demand`` and return its ids, once it fits; ``None`` if cancelled first."""
        while True:
            with self._changed:
                if self._pool.fits(demand):
                    return self._pool.take(demand)
                self._changed.wait(CANCEL_POLL)
            if cancel.is_set():  # outside the lock: a look may take a round trip
                return None

    def give(self, demand: Amounts, assigned: Assigned) -> None:
        with self._changed:
            self._pool.give(demand, assigned)
            self._changed.notify_all()


_pools: dict[str, WorkerPool] = {}
_pools_lock = threading.Lock()


def worker_pool(worker: Any) -> WorkerPool:
    """The pool of ``worker``, made by its first task that needs one (one per worker, so two
    workers in one process each have their own)."""
    with _pools_lock:
        pool = _pools.get(worker.id)
        if pool is None:
            total = worker.state.total_resources
            pool = _pools[worker.id] = WorkerPool(worker_capacities(total, os.environ))
        return pool


def run_on_worker(spec: ScriptSpec, key: int, run: WorkerRun) -> ScriptResult:
    """The task: run ``spec`` on this worker once, and return its result with ``worker`` set.

    Module-level and given plain values, so Dask pickles it by reference (the package must be
    installed on the workers, as it is in the same environment).
    """
    dask = distributed()
    worker = dask.get_worker()
    label = worker_label(worker.address, worker.name)
    pool: WorkerPool | None = None
    if spec.resources:
        try:
            pool = worker_pool(worker)
        except ValueError as exc:
            # Not RESOURCES: with exec_missing_resources = skip that would hide a
            # misconfigured worker behind skips, though the cluster has the resource.
            return _not_run(spec, label, ScriptStatus.ERROR, FailureCause.ENGINE,
                            f"Dask worker {label}: {exc}")  # fmt: skip
        refused = unmet_demand(spec.resources, pool.capacities, f"Dask worker {label}")
        if refused is not None:  # its resources changed since Dask placed the task
            return _not_run(spec, label, ScriptStatus.ERROR, FailureCause.RESOURCES, refused)
    # Here, not in a bounded thread: Dask knows a task's worker by thread. The worker is
    # connected already; its client connects with a deadline.
    client = dask.get_client(timeout=run.call_timeout)
    cancel = DaskCancelSignal(cancel_name(run.run_id), worker, client, worker.get_current_task())
    try:
        # Before taking units: a task held for -x must not keep a device from the others.
        if not _may_start(client, run, cancel):
            return _not_run(spec, label, ScriptStatus.CANCELLED, FailureCause.CANCELLED,
                            "cancelled")  # fmt: skip
    except Unreachable as exc:
        return _unreachable(spec, label, exc)
    assigned = pool.take(spec.resources, cancel) if pool is not None else {}
    if assigned is None:
        return _not_run(spec, label, ScriptStatus.CANCELLED, FailureCause.CANCELLED, "cancelled")
    try:
        return _claim_and_run(spec, key, run, client, cancel, assigned)
    finally:
        if pool is not None:
            pool.give(spec.resources, assigned)


def _not_run(
    spec: ScriptSpec, label: str, status: ScriptStatus, cause: FailureCause, error: str
) -> ScriptResult:
    return make_result(spec.script, status, error=error, attempts=0, worker=label, cause=cause)


def _unreachable(spec: ScriptSpec, label: str, exc: Unreachable) -> ScriptResult:
    return _not_run(spec, label, ScriptStatus.ERROR, FailureCause.ENGINE,
                    f"Dask worker {label} cannot reach the scheduler: {exc}")  # fmt: skip


def _claim_and_run(
    spec: ScriptSpec,
    key: int,
    run: WorkerRun,
    client: Any,
    cancel: DaskCancelSignal,
    assigned: Assigned,
) -> ScriptResult:
    """Claim the job (see :func:`claim_key`), then run its script holding the units
    ``assigned``: their ids in its environment and in its result."""
    worker = distributed().get_worker()
    label = worker_label(worker.address, worker.name)
    try:
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
        return _unreachable(spec, label, exc)
    worker.log_event(STARTED_TOPIC, {"run": run.run_id, "key": key, "worker": label})
    base_env = child_environment(run.session_tag)  # this machine's environment, not pytest's
    base_env[BATCH_ENV_VAR] = run.run_id
    base_env[WORKER_TAG_VAR] = worker.id
    held = with_resource_env(spec, assigned, run.resource_env)
    result = with_resource_ids(run_spec(held, base_env=base_env, cancel_event=cancel), assigned)
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
