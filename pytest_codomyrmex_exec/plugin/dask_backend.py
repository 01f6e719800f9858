"""The ``dask`` backend: each script is one task on a Dask cluster, run there by the engine.

Registered as a plugin (its ``pytest_exec_make_backend``) only when ``--exec-backend dask``
is chosen, so ``distributed`` is imported by nobody else. On a worker the task
(:func:`run_on_worker`) runs the engine's ``run_spec``: timeouts, tree kills, bounded
output, memory limits and retries happen there, exactly as locally. What crosses the network:

- to the worker, the :class:`ScriptSpec` (plain data) and a few strings;
- back, the result dict (with ``worker`` set) when the task ends, and a ``started`` event
  through a Dask event topic (``Worker.log_event``) when the script is about to start;
- a cancel: a Dask ``Event`` that every running task polls (at most every
  :data:`CANCEL_POLL` s) and that stops its script's process tree.

Scripts have side effects, so none runs twice: before starting, the task claims its job in
the scheduler's metadata; a task Dask re-runs after its worker died finds the claim and
returns an ``error`` naming the dead worker instead of running the script again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, final

import pytest

from ..engine.events import EventSink, RunEvent, RunEventKind
from ..engine.launch import kill_tagged
from ..engine.parallel import BATCH_ENV_VAR
from ..engine.resources import describe_amounts
from ..engine.results import ScriptResult, ScriptStatus, make_result
from ..engine.run import run_spec
from ..engine.spec import ScriptSpec
from .backends import BackendThread, ScriptJob, engine_broke, finished_event, runnable
from .keys import OPTIONS_KEY
from .settings import SESSION_TAG_VAR, child_environment

logger = logging.getLogger(__name__)


def _distributed() -> Any:
    """The ``distributed`` package, imported on first use (it is partly untyped: ``Any``)."""
    import distributed

    return distributed


WORKER_PID_VAR = "CODOMYRMEX_EXEC_WORKER_PID"
"""Set in a script's environment on a worker: the worker process's pid. A script whose worker
is gone is an orphan; :func:`kill_orphans` finds it by this and :data:`BATCH_ENV_VAR`."""

CANCEL_POLL = 0.2
"""Seconds between two looks at the cancel ``Event`` from one running task: the engine
asks every 0.05 s, but each look is a round trip to the scheduler."""

CANCEL_WAIT = 10.0
"""Seconds to wait, after a cancel, for running tasks to report their killed scripts."""

CONNECT_TIMEOUT = 30.0
"""Seconds to wait for the scheduler, and for a local cluster's workers."""

_GIVE_UP_ON_SCHEDULER = 10.0
"""A running task that cannot reach the scheduler this long stops its script: no one could
collect its result, and it must not run on unsupervised."""

_NAMESPACE = "codomyrmex-exec"
STARTED_TOPIC = f"{_NAMESPACE}-started"
"""The Dask event topic of script starts, one for every run: the scheduler keeps the last
1,000 events of each topic for good, so one topic per run would grow a long-lived
scheduler with every run. Each subscriber keeps its own run's events."""
_PATH_ERRORS = (
    "script not found",
    "not a file",
    "working directory does not exist",
    "stdin_file not found",
    "Python interpreter not found",
)


def worker_label(address: str, name: object) -> str:
    """How a report names a worker: its address, and its name when that says more."""
    text = str(name)
    return address if not text or text == address else f"{address} (name {text})"


@final
class DaskCancelSignal:
    """The engine's cancel signal inside a task: set when the run is cancelled or the task is.

    Two sources. The task's own state on this worker, read locally at every look: Dask
    cancels a running task when nobody wants its result any more, as when pytest died
    (SIGKILL, out of memory) and the scheduler dropped its client. And the run's Dask
    ``Event``, a round trip to the scheduler, so read at most every :data:`CANCEL_POLL` s.
    Once set it stays set. If the scheduler cannot be reached for
    :data:`_GIVE_UP_ON_SCHEDULER` s it counts as set: no one could collect the result.
    """

    def __init__(self, name: str, worker: Any, key: object) -> None:
        self._name = name
        self._worker = worker
        self._key = key
        self._event: Any = None
        self._next = 0.0
        self._set = False
        self._unreachable_since: float | None = None

    def is_set(self) -> bool:
        if self._set:
            return True
        task = self._worker.state.tasks.get(self._key)
        if task is None or task.state == "cancelled":
            self._set = True
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CANCEL_POLL
        try:
            if self._event is None:
                self._event = _distributed().Event(self._name)
            self._set = bool(self._event.is_set())
            self._unreachable_since = None
        except Exception as exc:  # the scheduler is unreachable or going away
            if self._unreachable_since is None:
                self._unreachable_since = now
                logger.warning("cannot read the cancel event %s: %r", self._name, exc)
            elif now - self._unreachable_since > _GIVE_UP_ON_SCHEDULER:
                self._set = True
        return self._set


def _with_worker_hint(result: ScriptResult, label: str) -> ScriptResult:
    error = result["error"]
    if result["status"] == ScriptStatus.ERROR and error and error.startswith(_PATH_ERRORS):
        result["error"] = (
            f"{error} on Dask worker {label}: workers must see the scripts, their folders and "
            "the interpreter at the same paths as pytest does (a shared filesystem)"
        )
    return result


def run_on_worker(spec: ScriptSpec, session_tag: str, run_id: str, key: int) -> ScriptResult:
    """The task: run ``spec`` on this worker once, and return its result with ``worker`` set.

    Module-level and given plain values, so Dask pickles it by reference (the package must be
    installed on the workers, as it is in the same environment).
    """
    dask = _distributed()
    worker = dask.get_worker()
    label = worker_label(worker.address, worker.name)
    client = dask.get_client()
    claim = [_NAMESPACE, run_id, "claims", str(key)]
    earlier = client.get_metadata(claim, None)
    if earlier is not None:
        return make_result(
            spec.script,
            ScriptStatus.ERROR,
            error=f"the Dask worker {earlier} died while running the script; it is not run a "
            "second time (scripts may have side effects)",
            attempts=1,
            worker=str(earlier),
        )
    client.set_metadata(claim, label)
    worker.log_event(STARTED_TOPIC, {"run": run_id, "key": key, "worker": label})
    base_env = child_environment(session_tag)  # this machine's environment, not pytest's
    base_env[BATCH_ENV_VAR] = run_id
    base_env[WORKER_PID_VAR] = str(os.getpid())
    cancel = DaskCancelSignal(_cancel_name(run_id), worker, worker.get_current_task())
    result = run_spec(spec, base_env=base_env, cancel_event=cancel)
    result["worker"] = label
    return _with_worker_hint(result, label)


def _cancel_name(run_id: str) -> str:
    return f"{_NAMESPACE}-cancel-{run_id}"


def _environ(pid: int) -> dict[bytes, bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def kill_orphans(run_id: str) -> int:
    """Kill this run's scripts on this machine whose worker process is gone; how many.

    Run on every worker (and here) when a worker died: its scripts, each in a session of
    its own, would otherwise run on. Linux only (``/proc``), like ``kill_tagged``.
    """
    if not os.path.isdir("/proc"):
        return 0
    found = 0
    want = run_id.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        env = _environ(int(entry.name))
        if env is None or env.get(BATCH_ENV_VAR.encode()) != want:
            continue
        owner = env.get(WORKER_PID_VAR.encode(), b"")
        if owner.isdigit() and _alive(int(owner)):
            continue
        found += 1
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(int(entry.name), signal.SIGKILL)
    return found


def spread_resources(capacities: Mapping[str, float], workers: int) -> list[dict[str, float]]:
    """Share each capacity out over a local cluster's workers, whole units round-robin (any
    fraction goes with the next unit), so that together they have exactly the capacities."""
    shares: list[dict[str, float]] = [{} for _ in range(workers)]
    for name, amount in capacities.items():
        whole = int(amount)
        for unit in range(whole):
            share = shares[unit % workers]
            share[name] = share.get(name, 0.0) + 1.0
        fraction = amount - whole
        if fraction > 0:
            share = shares[whole % workers]
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


@final
class DaskBackend:
    """Runs the session's scripts as Dask tasks; see the module's docstring."""

    def __init__(
        self,
        *,
        address: str | None,
        workers: int,
        resources: Mapping[str, float] | None = None,
    ) -> None:
        self._address = address
        self._workers = workers
        self._capacities = dict(resources or {})
        self._stop = threading.Event()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread = BackendThread("codomyrmex-exec-dask")
        self._sink: EventSink | None = None
        self._client: Any = None
        self._cluster: Any = None
        self.run_id = uuid.uuid4().hex

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
        self._sink(event)

    def _serve(self, jobs: list[ScriptJob], session_tag: str) -> None:
        try:
            with self._connected():
                if self._address is None:
                    # A local cluster: exec_resources were shared out over its workers.
                    jobs = runnable(jobs, self._capacities, self._emit)
                _Run(self, jobs, session_tag).run()
        except Exception as exc:
            logger.exception("the dask backend broke")
            where = self._address or "a local cluster"
            for job in jobs:  # the session ignores a second "finished" for a key
                result = engine_broke(job.spec, f"Dask ({where}): {type(exc).__name__}: {exc}")
                self._emit(finished_event(job, result))

    @contextlib.contextmanager
    def _connected(self) -> Iterator[Any]:
        Client = _distributed().Client

        if self._address is not None:
            client = Client(self._address, timeout=CONNECT_TIMEOUT)
        else:
            self._cluster = self._local_cluster()
            client = Client(self._cluster, timeout=CONNECT_TIMEOUT)
        self._client = client
        try:
            if self._cluster is not None:
                client.wait_for_workers(self._workers, timeout=CONNECT_TIMEOUT)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=CONNECT_TIMEOUT)
            if self._cluster is not None:
                with contextlib.suppress(Exception):
                    self._cluster.close(timeout=CONNECT_TIMEOUT)

    def _local_cluster(self) -> Any:
        """Worker processes on loopback, one thread each, ``exec_resources`` shared out."""
        cluster = _distributed().LocalCluster(
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
                options["resources"] = share
            cluster.worker_spec[index] = {**template, "options": options}
        cluster.scale(self._workers)  # starts the workers just specified
        return cluster


class _Run:
    """One session's jobs on the cluster: submit, collect, cancel, sweep."""

    def __init__(self, backend: DaskBackend, jobs: list[ScriptJob], session_tag: str) -> None:
        assert backend._client is not None
        self.backend = backend
        self.client: Any = backend._client
        self.jobs = jobs
        self.session_tag = session_tag
        self.run_id = backend.run_id
        self.inbox = backend._inbox
        self.futures: dict[str, tuple[Any, ScriptJob]] = {}
        self.started: set[int] = set()
        self.finished: set[int] = set()

    def run(self) -> None:
        client = self.client
        client.subscribe_topic(STARTED_TOPIC, self._on_started)
        cancel = _distributed().Event(_cancel_name(self.run_id), client=client)
        try:
            self._submit_all()
            self._collect(cancel)
        finally:
            self._sweep(everything=True)
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(STARTED_TOPIC)
            with contextlib.suppress(Exception):
                client.set_metadata([_NAMESPACE, self.run_id], None)
            with contextlib.suppress(Exception):
                cancel.clear()

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
        self.backend._emit(finished_event(job, result))

    def _announce(self, job: ScriptJob) -> None:
        self.started.add(job.key)
        self.backend._emit(RunEvent(RunEventKind.STARTED, job.key, job.spec.script, time.time()))

    def _submit_all(self) -> None:
        info = self.client.scheduler_info(n_workers=-1)
        offered = {
            address: dict(worker.get("resources") or {})
            for address, worker in info.get("workers", {}).items()
        }
        for job in self.jobs:  # in start order: Dask breaks priority ties by submission
            if self.backend._stop.is_set():
                self._finish(job, _cancelled(job, "cancelled before it was sent to Dask"))
                continue
            refused = unmet_on_cluster(job.spec.resources, offered)
            if refused is not None:
                error = make_result(job.spec.script, ScriptStatus.ERROR, error=refused, attempts=0)
                self._finish(job, error)
                continue
            future = self.client.submit(
                run_on_worker,
                job.spec,
                self.session_tag,
                self.run_id,
                job.key,
                key=f"{_NAMESPACE}-{self.run_id}-{job.key}",
                pure=False,
                retries=0,
                priority=-job.spec.priority,  # Dask runs higher numbers first; we run lower
                resources=dict(job.spec.resources) or None,
            )
            self.futures[future.key] = (future, job)
            future.add_done_callback(lambda done: self.inbox.put(("done", done.key)))

    def _collect(self, cancel: Any) -> None:
        deadline: float | None = None
        while len(self.finished) < len(self.jobs):
            if self.backend._stop.is_set() and deadline is None:
                deadline = time.monotonic() + CANCEL_WAIT
                self._cancel(cancel)
                continue
            if deadline is not None and time.monotonic() > deadline:
                for future, job in self.futures.values():
                    self._finish(job, _cancelled(job, "cancelled: its worker did not answer"))
                    with contextlib.suppress(Exception):
                        future.release()
                return
            try:
                kind, value = self.inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            if kind == "started":
                entry = self.futures.get(f"{_NAMESPACE}-{self.run_id}-{value.get('key')}")
                if entry is not None and entry[1].key not in self.started | self.finished:
                    self._announce(entry[1])
            elif kind == "done":
                entry = self.futures.get(value)
                if entry is not None:
                    self._take(*entry)

    def _take(self, future: Any, job: ScriptJob) -> None:
        KilledWorker = _distributed().KilledWorker

        if future.cancelled():
            self._finish(job, _cancelled(job, "cancelled"))
            return
        exc = future.exception()
        if exc is None:
            result: ScriptResult = future.result()
            self._finish(job, result)
            if "is not run a second time" in (result["error"] or ""):
                self._sweep(everything=False)
            return
        if isinstance(exc, KilledWorker):
            last = exc.last_worker
            label = worker_label(last.address, last.name)
            result = make_result(
                job.spec.script,
                ScriptStatus.ERROR,
                error=f"the Dask worker {label} died while running the script; "
                "it is not run a second time (scripts may have side effects)",
                worker=label,
            )
            self._finish(job, result)
            self._sweep(everything=False)
            return
        self._finish(job, engine_broke(job.spec, f"on Dask: {type(exc).__name__}: {exc}"))

    def _cancel(self, cancel: Any) -> None:
        """Stop every script: the event stops running ones, queued tasks are dropped."""
        with contextlib.suppress(Exception):
            cancel.set()
        queued = [
            (future, job)
            for future, job in self.futures.values()
            if job.key not in self.started and job.key not in self.finished
        ]
        with contextlib.suppress(Exception):
            # A task that started a moment ago sees the event before its script starts.
            self.client.cancel([future for future, _ in queued], reason="pytest stopped")
        for _, job in queued:
            self._finish(job, _cancelled(job, "cancelled"))

    def _sweep(self, *, everything: bool) -> None:
        """Kill what must not run on: a dead worker's scripts, or at the end all of ours."""
        if everything:
            with contextlib.suppress(Exception):
                self.client.run(kill_tagged, BATCH_ENV_VAR, self.run_id, on_error="ignore")
            kill_tagged(BATCH_ENV_VAR, self.run_id)
            return
        with contextlib.suppress(Exception):
            self.client.run(kill_orphans, self.run_id, on_error="ignore")
        found = kill_orphans(self.run_id)
        if found:
            logger.warning("killed %d script process(es) left by a dead Dask worker", found)


def _cancelled(job: ScriptJob, reason: str) -> ScriptResult:
    return make_result(job.spec.script, ScriptStatus.CANCELLED, error=reason, attempts=0)


@pytest.hookimpl(trylast=True)  # after a conftest's (dask-jobqueue), before the built-in
def pytest_exec_make_backend(config: pytest.Config) -> DaskBackend | None:
    options = config.stash[OPTIONS_KEY]
    if options.backend != "dask":
        return None
    return DaskBackend(
        address=options.dask_scheduler, workers=options.workers, resources=options.resources
    )
