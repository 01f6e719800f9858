"""The ``dask`` backend, pytest's side: each script is one task on a Dask cluster.

Registered as a plugin (its ``pytest_exec_make_backend``) only when ``--exec-backend dask``
is chosen, so ``distributed`` is imported by nobody else. The task itself, and everything
that runs on a worker, is in :mod:`.dask_worker`: there the engine's ``run_spec`` runs the
script (timeouts, tree kills, bounded output, memory limits and retries, exactly as
locally). What crosses the network:

- to the worker, the :class:`ScriptSpec` (plain data), its key and a :class:`WorkerRun`;
- back, the result dict (with ``worker`` set) when the task ends, and a ``started`` event
  through a Dask event topic (``Worker.log_event``) when the script is about to start;
- a cancel: a Dask ``Event`` that every running task polls and that stops its script's tree.

Scripts have side effects, so none runs twice: before starting, the task claims its job in
the scheduler's metadata; a task Dask re-runs after its worker died finds the claim and
returns an ``error`` naming the dead worker instead of running the script again.

Nothing here waits on the cluster without a deadline: connecting (``exec_dask_connect_timeout``),
every other exchange (``exec_dask_call_timeout``), and a lost connection. A stop whose
exchanges get no answer is abandoned with a message; this machine is swept all the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, final

import pytest

from ..engine.events import EventSink, RunEvent, RunEventKind
from ..engine.launch import kill_tagged
from ..engine.parallel import BATCH_ENV_VAR
from ..engine.resources import DEFAULT_RESOURCE_ENV, Slots, describe_amounts
from ..engine.results import FailureCause, ScriptResult, ScriptStatus, make_result
from .backends import BackendThread, ScriptJob, finished_event, runnable
from .dask_worker import (
    FAIL_FAST,
    NAMESPACE,
    RESOURCE_IDS_VAR,
    STARTED_TOPIC,
    WORKER_TAG_VAR,
    Unreachable,
    WorkerRun,
    bounded,
    cancel_name,
    claim_key,
    distributed,
    run_metadata,
    run_on_worker,
    worker_label,
)
from .environment import SESSION_TAG_VAR
from .keys import OPTIONS_KEY
from .outcome import is_exit_skip

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXCLUSIVE_REFUSED = (
    "exec(exclusive=True) is not supported by --exec-backend dask: Dask cannot keep every "
    "other task of the cluster from running; run exclusive scripts with a local backend"
)

CANCEL_WAIT = 10.0
"""Seconds to wait, after a cancel, for running tasks to report their killed scripts."""


@final
@dataclass(frozen=True, slots=True)
class DaskLimits:
    """How long the backend waits on the cluster; every wait has one of these deadlines."""

    connect: float = 30.0
    """Seconds to reach the scheduler (and for a local cluster's workers to start); also how
    long a lost connection may stay lost before the run's remaining scripts are given up."""
    call: float = 30.0
    """Seconds for any other single exchange: metadata, cancel, the sweep, closing."""


CONNECT_TIMEOUT_INI = "exec_dask_connect_timeout"
CALL_TIMEOUT_INI = "exec_dask_call_timeout"


def _seconds(config: pytest.Config, key: str) -> float:
    text = str(config.getini(key)).strip()
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"ini option {key!r}: expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise pytest.UsageError(f"ini option {key!r}: must be a positive number, got {text!r}")
    return value


def limits_from_ini(config: pytest.Config) -> DaskLimits:
    """The backend's deadlines from the ini keys, refused with the key's name when unusable."""
    return DaskLimits(
        connect=_seconds(config, CONNECT_TIMEOUT_INI), call=_seconds(config, CALL_TIMEOUT_INI)
    )


def spread_resources(capacities: Mapping[str, float], workers: int) -> list[dict[str, float]]:
    """Share each capacity out over a local cluster's workers, whole units round-robin (any
    fraction goes with the next unit), so that together they have exactly the capacities.

    A worker's whole units are a :class:`Slots` of their ids (``GPU=0,1,2,3`` on two workers:
    ``0,2`` and ``1,3``; ``GPU=4``: the same ids), so that on the cluster each script gets
    the ids it would get here. A share holding the fraction is a plain amount."""
    shares: list[dict[str, float]] = [{} for _ in range(workers)]
    for name, amount in capacities.items():
        ids = (
            amount.ids if isinstance(amount, Slots) else [str(unit) for unit in range(int(amount))]
        )
        for index in range(workers):
            mine = ids[index::workers]
            if mine:
                shares[index][name] = Slots(mine)
        fraction = amount - len(ids)
        if fraction > 0:
            share = shares[len(ids) % workers]
            share[name] = share.get(name, 0.0) + fraction
    return shares


def unmet_on_cluster(
    demand: Mapping[str, float], workers: Mapping[str, Mapping[str, float]]
) -> str | None:
    """Why no connected worker could ever run a task with ``demand``, naming the resource."""
    if not demand or not workers:  # no worker yet: the cluster may still be growing
        return None
    if any(
        all(have.get(name, 0.0) >= amount for name, amount in demand.items())
        for have in workers.values()
    ):
        return None
    for name, amount in demand.items():
        if not any(have.get(name, 0.0) >= amount for have in workers.values()):
            offered = "; ".join(
                f"{address}: {describe_amounts(have)}" for address, have in workers.items()
            )
            return (
                f"needs resource {name}={amount:g}, which no Dask worker has "
                f"(worker resources: {offered})"
            )
    return f"needs {describe_amounts(demand)} on one worker, and no Dask worker has them all"


def _not_run(job: ScriptJob, status: ScriptStatus, cause: FailureCause, error: str) -> ScriptResult:
    return make_result(job.spec.script, status, error=error, attempts=0, cause=cause)


def _say(message: str) -> None:
    """A note for the person at the terminal about a stop that could not be completed: no
    script's outcome carries it, and the session's reporter belongs to the main thread."""
    print(f"codomyrmex-exec: {message}", file=sys.stderr, flush=True)


@final
class DaskBackend:
    """Runs the session's scripts as Dask tasks; see the module's docstring.

    ``stop_after``: pytest's ``--maxfail`` (``-x`` is 1; 0 for none). With it, a task whose
    script did not pass holds every later start on the cluster until this side has judged
    it, so that no queued script starts once the run stops. ``skip_exit_codes`` are the
    exits that count as skips, not failures, in that judgement.
    """

    def __init__(
        self,
        *,
        address: str | None,
        workers: int,
        resources: Mapping[str, float] | None = None,
        resource_env: Mapping[str, Sequence[str]] = DEFAULT_RESOURCE_ENV,
        limits: DaskLimits = DaskLimits(),
        stop_after: int = 0,
        skip_exit_codes: frozenset[int] = frozenset(),
    ) -> None:
        self._address = address
        self._where = address or "a local cluster"
        self._workers = workers
        self._capacities = dict(resources or {})
        self._resource_env = {name: tuple(names) for name, names in resource_env.items()}
        self._limits = limits
        self._stop_after = stop_after
        self._skip_exit_codes = skip_exit_codes
        self._stop = threading.Event()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread = BackendThread("codomyrmex-exec-dask")
        self._sink: EventSink | None = None
        self._reported: set[int] = set()
        self.run_id = uuid.uuid4().hex

    @classmethod
    def from_config(cls, config: pytest.Config, *, address: str | None) -> DaskBackend:
        """The backend for this session, on the scheduler at ``address`` (``None``: a local
        cluster of ``--exec-workers``): the session's deadlines, ``--maxfail`` and resources.
        A conftest that starts its own cluster (dask-jobqueue) makes its backend with this."""
        options = config.stash[OPTIONS_KEY]
        return cls(
            address=address,
            workers=options.workers,
            resources=options.resources,
            resource_env=options.resource_env,
            limits=limits_from_ini(config),
            stop_after=config.getoption("maxfail") or 0,
            skip_exit_codes=options.skip_exit_codes,
        )

    # -- ScriptBackend ----------------------------------------------------------------------

    def start(
        self, jobs: Sequence[ScriptJob], base_env: Mapping[str, str], sink: EventSink
    ) -> None:
        self._sink = sink
        tag = base_env.get(SESSION_TAG_VAR, "")
        self._thread.run(self._serve, list(jobs), tag)

    def cancel(self) -> None:
        self._stop.set()
        self._inbox.put(("stop", None))

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.alive()

    # -- the background thread --------------------------------------------------------------

    def _emit(self, event: RunEvent) -> None:
        assert self._sink is not None
        if event.kind == RunEventKind.FINISHED:
            if event.key in self._reported:
                return
            self._reported.add(event.key)
        self._sink(event)

    def _serve(self, jobs: list[ScriptJob], session_tag: str) -> None:
        try:
            with self._connected() as client:
                if self._address is None:
                    # A local cluster: exec_resources were shared out over its workers.
                    jobs = runnable(jobs, self._capacities, self._emit)
                run = _Run(
                    client,
                    jobs,
                    run=WorkerRun(
                        run_id=self.run_id,
                        session_tag=session_tag,
                        fail_fast=self._stop_after > 0,
                        call_timeout=self._limits.call,
                        resource_env=self._resource_env,
                    ),
                    where=self._where,
                    limits=self._limits,
                    stop=self._stop,
                    inbox=self._inbox,
                    emit=self._emit,
                    judge=_FailFast(self._stop_after, self._skip_exit_codes),
                )
                run.run()
        except Exception as exc:
            if self._stop.is_set():
                status, cause, text = ScriptStatus.CANCELLED, FailureCause.CANCELLED, "cancelled"
            else:
                status, cause = ScriptStatus.ERROR, FailureCause.ENGINE
                if isinstance(exc, Unreachable):
                    text = f"cannot use Dask: {exc}"  # it names what was asked of whom
                else:
                    logger.exception("the dask backend broke")
                    text = f"cannot use Dask ({self._where}): {type(exc).__name__}: {exc}"
            for job in jobs:  # those reported already are skipped by _emit
                self._emit(finished_event(job, _not_run(job, status, cause, text)))

    def _bounded(self, call: Callable[[], T], seconds: float, what: str, **kw: Any) -> T:
        value: T = bounded(call, seconds, f"{what} ({self._where})", **kw)
        return value

    @contextlib.contextmanager
    def _connected(self) -> Iterator[Any]:
        """A client of the scheduler (and the local cluster, if ours), closed at the end.

        Connecting is abandoned at its deadline or at a cancel; closing is bounded too, and
        a close that gets no answer is left behind with a note.
        """
        dask = distributed()
        seconds = self._limits.connect
        cluster: Any = None
        if self._address is None:
            cluster = self._bounded(
                self._local_cluster, seconds, "starting a local cluster", stop=self._stop,
                discard=lambda late: late.close(timeout=self._limits.call),
            )  # fmt: skip
        target = cluster if cluster is not None else self._address
        try:
            client = self._bounded(
                lambda: dask.Client(target, timeout=seconds, set_as_default=False),
                seconds,
                "connecting to the scheduler",
                stop=self._stop,
                discard=lambda late: late.close(timeout=self._limits.call),
            )
            try:
                if cluster is not None:
                    self._bounded(
                        lambda: client.wait_for_workers(self._workers, timeout=seconds),
                        seconds,
                        "waiting for the workers",
                        stop=self._stop,
                    )
                yield client
            finally:
                self._close("closing the client", lambda: client.close(timeout=self._limits.call))
        finally:
            if cluster is not None:
                self._close(
                    "closing the local cluster", lambda: cluster.close(timeout=self._limits.call)
                )

    def _close(self, what: str, call: Callable[[], object]) -> None:
        try:
            self._bounded(call, self._limits.call, what)
        except Unreachable as exc:
            _say(f"{exc}; left behind")
        except Exception as exc:
            logger.warning("%s: %r", what, exc)

    def _local_cluster(self) -> Any:
        """Worker processes on loopback, one thread each, ``exec_resources`` shared out."""
        cluster = distributed().LocalCluster(
            n_workers=0,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # No dashboard, but the scheduler's HTTP routes would still take port 8787 (and
            # warn, and move, if another cluster has it): any free port instead.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
        template = cluster.new_spec
        for index, share in enumerate(spread_resources(self._capacities, self._workers)):
            options = {**template["options"], "nthreads": 1}
            if share:
                # Plain numbers for Dask (its messages know no Slots); the ids by environment.
                options["resources"] = {name: float(amount) for name, amount in share.items()}
                ids = {name: getattr(amount, "ids", None) for name, amount in share.items()}
                options["env"] = {RESOURCE_IDS_VAR: json.dumps(ids)}
            cluster.worker_spec[index] = {**template, "options": options}
        cluster.scale(self._workers)  # starts the workers just specified
        return cluster


@final
class _FailFast:
    """pytest's ``--maxfail`` for the results the cluster sends: which failures stop the run."""

    def __init__(self, stop_after: int, skip_exit_codes: frozenset[int]) -> None:
        self.on = stop_after > 0
        self._left = stop_after
        self._skip_exit_codes = skip_exit_codes

    def stops(self, result: ScriptResult) -> bool:
        """Does this result, counted as pytest counts failures, reach ``--maxfail``?"""
        if result["status"] in (ScriptStatus.PASSED, ScriptStatus.CANCELLED):
            return False
        if is_exit_skip(result, self._skip_exit_codes):
            return False
        self._left -= 1
        return self._left <= 0


class _Run:
    """One session's jobs on the cluster: submit, collect, cancel, sweep.

    Everything it uses is given: the client, what each task gets besides its spec and key,
    the backend's stop flag and inbox (``cancel`` posts there), ``emit`` for the session's
    events, and the deadlines.
    """

    def __init__(
        self,
        client: Any,
        jobs: list[ScriptJob],
        *,
        run: WorkerRun,
        where: str,
        limits: DaskLimits,
        stop: threading.Event,
        inbox: queue.SimpleQueue[tuple[str, Any]],
        emit: EventSink,
        judge: _FailFast,
    ) -> None:
        self.client = client
        self.jobs = jobs
        self.worker_run = run
        self.run_id = run.run_id
        self.where = where
        self.limits = limits
        self.stop = stop
        self.inbox = inbox
        self.emit = emit
        self.judge = judge
        self.futures: dict[str, tuple[Any, ScriptJob]] = {}
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.unreachable: str | None = None
        """Set once an exchange got no answer: the rest of the stop skips the cluster."""

    def call(self, call: Callable[[], T], what: str) -> T | None:
        """One exchange with the scheduler, bounded; ``None`` if it failed (logged) or got no
        answer (noted in :attr:`unreachable`: later ones are not even tried)."""
        if self.unreachable is not None:
            return None
        try:
            return bounded(call, self.limits.call, what)
        except Unreachable as exc:
            self.unreachable = str(exc)
        except Exception as exc:  # a closed client, a scheduler going away: the stop goes on
            logger.warning("%s (%s): %r", what, self.where, exc)
        return None

    def run(self) -> None:
        client = self.client
        client.subscribe_topic(STARTED_TOPIC, self._on_started)
        cancel = distributed().Event(cancel_name(self.run_id), client=client)
        try:
            self._submit_all()
            self._collect(cancel)
        finally:
            self._sweep(BATCH_ENV_VAR, self.run_id)
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(STARTED_TOPIC)
            self.call(lambda: client.set_metadata(run_metadata(self.run_id), None), "cleanup")
            self.call(cancel.clear, "cleanup")
            if self.unreachable is not None:
                _say(
                    f"Dask ({self.where}) stopped answering ({self.unreachable}); the stop "
                    "was abandoned there. Scripts of this run on this machine are killed; "
                    "those on other machines stop within 10 s of losing the scheduler."
                )

    def _on_started(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict) and message.get("run") == self.run_id:
            self.inbox.put(("started", message))

    def _finish(self, job: ScriptJob, result: ScriptResult) -> None:
        if job.key in self.finished:
            return
        if job.key not in self.started and result["attempts"] > 0:
            self._announce(job)
        self.finished.add(job.key)
        self.emit(finished_event(job, result))

    def _announce(self, job: ScriptJob) -> None:
        self.started.add(job.key)
        self.emit(RunEvent(RunEventKind.STARTED, job.key, job.spec.script, time.time()))

    def _task_key(self, key: object) -> str:
        """The Dask key of job ``key``'s task."""
        return f"{NAMESPACE}-{self.run_id}-{key}"

    def _submit_all(self) -> None:
        info = bounded(
            lambda: self.client.scheduler_info(n_workers=-1),
            self.limits.call,
            f"asking for the workers ({self.where})",
        )
        offered = {
            address: dict(worker.get("resources") or {})
            for address, worker in info.get("workers", {}).items()
        }
        for job in self.jobs:  # in start order: Dask breaks priority ties by submission
            if self.stop.is_set():
                self._finish(
                    job,
                    _not_run(
                        job,
                        ScriptStatus.CANCELLED,
                        FailureCause.CANCELLED,
                        "cancelled before it was sent to Dask",
                    ),
                )
                continue
            if job.spec.exclusive:
                # ENGINE, not RESOURCES: with exec_missing_resources = skip, RESOURCES would
                # turn a mark the backend cannot keep into a quiet skip.
                self._finish(job, _not_run(job, ScriptStatus.ERROR, FailureCause.ENGINE,
                                           EXCLUSIVE_REFUSED))  # fmt: skip
                continue
            refused = unmet_on_cluster(job.spec.resources, offered)
            if refused is not None:
                self._finish(
                    job, _not_run(job, ScriptStatus.ERROR, FailureCause.RESOURCES, refused)
                )
                continue
            future = self.client.submit(
                run_on_worker,
                job.spec,
                job.key,
                self.worker_run,
                key=self._task_key(job.key),
                pure=False,
                retries=0,
                priority=-job.spec.priority,  # Dask runs higher numbers first; we run lower
                # Floats, whatever the spec holds: the message to the scheduler carries no
                # big integer (msgpack would drop the whole batch, and the run would wait).
                resources={name: float(amount) for name, amount in job.spec.resources.items()}
                or None,
            )
            self.futures[future.key] = (future, job)
            future.add_done_callback(lambda done: self.inbox.put(("done", done.key)))

    def _collect(self, cancel: Any) -> None:
        deadline: float | None = None
        lost_since: float | None = None
        while len(self.finished) < len(self.jobs):
            now = time.monotonic()
            if self.stop.is_set() and deadline is None:
                deadline = now + CANCEL_WAIT
                self._cancel(cancel)
                continue
            if deadline is not None and now > deadline:
                self._give_up(ScriptStatus.CANCELLED, FailureCause.CANCELLED,
                              "cancelled: its worker did not answer")  # fmt: skip
                return
            if self.client.status == "running":
                lost_since = None
            elif lost_since is None:
                lost_since = now
            elif now - lost_since > self.limits.connect:
                self._give_up(ScriptStatus.ERROR, FailureCause.ENGINE, self._lost())
                return
            try:
                kind, value = self.inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            if kind == "started":
                entry = self.futures.get(self._task_key(value.get("key")))
                if entry is not None and entry[1].key not in self.started | self.finished:
                    self._announce(entry[1])
            elif kind == "done":
                entry = self.futures.get(value)
                if entry is not None:
                    self._take(*entry)

    def _lost(self) -> str:
        if self.client.status == "running":
            return f"its Dask task was cancelled by someone else ({self.where})"
        return (
            f"lost the connection to Dask ({self.where}): no answer for "
            f"{self.limits.connect:g} s (exec_dask_connect_timeout)"
        )

    def _give_up(self, status: ScriptStatus, cause: FailureCause, error: str) -> None:
        for future, job in self.futures.values():
            self._finish(job, _not_run(job, status, cause, error))
            with contextlib.suppress(Exception):
                future.release()

    def _take(self, future: Any, job: ScriptJob) -> None:
        KilledWorker = distributed().KilledWorker

        result: ScriptResult
        if future.cancelled():
            if self.stop.is_set():
                result = _not_run(job, ScriptStatus.CANCELLED, FailureCause.CANCELLED, "cancelled")
            else:  # not by us: the client gave up on a lost scheduler, or another client
                result = _not_run(job, ScriptStatus.ERROR, FailureCause.ENGINE, self._lost())
            self._finish(job, result)
            return
        exc = future.exception(timeout=self.limits.call)
        if exc is None:
            result = future.result(timeout=self.limits.call)
        elif isinstance(exc, KilledWorker):
            last = exc.last_worker
            label = worker_label(last.address, last.name)
            result = make_result(
                job.spec.script,
                ScriptStatus.ERROR,
                error=f"the Dask worker {label} died while running the script; "
                "it is not run a second time (scripts may have side effects)",
                worker=label,
                cause=FailureCause.WORKER_LOST,
            )
        else:
            result = make_result(
                job.spec.script,
                ScriptStatus.ERROR,
                error=f"the engine broke: on Dask: {type(exc).__name__}: {exc}",
                attempts=0,
                cause=FailureCause.ENGINE,
            )
        self._finish(job, result)
        if result["cause"] == FailureCause.WORKER_LOST:
            self._sweep_dead_worker(job)
        if self.judge.on and result["status"] not in (ScriptStatus.PASSED, ScriptStatus.CANCELLED):
            self._judge(job, result)

    def _judge(self, job: ScriptJob, result: ScriptResult) -> None:
        """``-x``: stop at the failure that reaches ``--maxfail``; else let the others start."""
        if self.judge.stops(result):
            self.stop.set()  # pytest stops the session on this result too
            return
        judged = run_metadata(self.run_id, FAIL_FAST, "judged", str(job.key))
        self.call(lambda: self.client.set_metadata(judged, True), "fail-fast")
        if self.unreachable is not None:  # the held tasks would wait for good
            self._give_up(ScriptStatus.ERROR, FailureCause.ENGINE, self.unreachable)

    def _cancel(self, cancel: Any) -> None:
        """Stop every script: the event stops running ones, queued tasks are dropped."""
        self.call(cancel.set, "setting the cancel event")
        queued = [
            (future, job)
            for future, job in self.futures.values()
            if job.key not in self.started and job.key not in self.finished
        ]
        # A task that started a moment ago sees the event before its script starts.
        futures = [future for future, _ in queued]
        self.call(lambda: self.client.cancel(futures, reason="pytest stopped"), "cancelling")
        for _, job in queued:
            self._finish(
                job, _not_run(job, ScriptStatus.CANCELLED, FailureCause.CANCELLED, "cancelled")
            )

    def _sweep_dead_worker(self, job: ScriptJob) -> None:
        """The dead worker's script outlived it (a session of its own): kill it by its tag."""
        claim = self.call(lambda: self.client.get_metadata(claim_key(self.run_id, job.key), None),
                          "reading the claim")  # fmt: skip
        if claim is None:
            return  # it never started its script
        if self._sweep(WORKER_TAG_VAR, claim["id"]):
            logger.warning("killed the script process(es) left by a dead Dask worker")

    def _sweep(self, variable: str, value: str) -> int:
        """Kill what carries ``variable=value`` on every worker and here; how many here."""
        self.call(
            lambda: self.client.run(kill_tagged, variable, value, on_error="ignore"),
            "sweeping the workers",
        )
        return kill_tagged(variable, value)


@pytest.hookimpl(trylast=True)  # after a conftest's (dask-jobqueue), before the built-in
def pytest_exec_make_backend(config: pytest.Config) -> DaskBackend | None:
    options = config.stash[OPTIONS_KEY]
    if options.backend != "dask":
        return None
    return DaskBackend.from_config(config, address=options.dask_scheduler)
