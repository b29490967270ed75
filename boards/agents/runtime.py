"""Running a claimed task in a worker: reuse an earlier result or run the agent (its
prompt and model cascade, or a custom class; see boards.agents.cascade) while the lease
is kept alive, and hand the outcome and its ledger rows to the services.

Concurrency: agent work is I/O-bound (a model call is mostly waiting). A batch of
claimed runs (one Celery message) is begun on the Celery thread; its cascades then
run on the worker process's event loop (``AgentLoop``), each model call awaited,
and a custom agent's ``process`` (user code, which may call the ORM) runs on a
thread of its own (``_RunThreads``), as every run does with ``KAIZEN_AGENT_LOOP``
off. Threads rather than gevent for what is not on the loop: SQLite and psycopg
calls do not yield under gevent without patching, and threads need no
monkey-patching of Django, redis or the provider SDKs. During a call on a thread
the database connection is handed back (to the psycopg pool on PostgreSQL), so a
thousand waiting calls do not hold a thousand database connections; the loop
holds none.

Why the loop (issue 15, target 5: a thousand calls in flight at 1 s): a thread a
waiting call cost the process 0.74 ms of CPU a call against 0.52 on one loop
(bench/model_calls.py, 2026-12-07; 1.37 against 0.91 in a slower hour), and a
loop around the synchronous code saved nothing (that bench's ``hybrid``: 0.82).
So the cascade is written once as steps (boards.agents.cascade.cascade_steps)
that a synchronous driver runs on a thread and an asynchronous one on the loop.
Measured with bench/run.py's cascade at WIP 1,000, the loop and threads alternated
in one hour (2026-12-07 17:02-17:31, one worker process): 1.56-1.88 ms of the
worker's CPU a task on the loop against 2.21-2.71 on threads; 426-470 tasks/s
against 307-383 (bench/README.md, the fourteenth stop).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import redis
from django.conf import settings
from django.db import connection

from andon import jidoka
from boards import selectors, services
from boards.agents.cascade import Blocking, CascadeSteps, PromptCascadeAgent, adrive, implementation_for
from boards.agents.outputs import AgentDeferred, AgentFailed, CallRecord, Output
from boards.agents.response_cache import Prefetch
from boards.models import ModelCall
from boards.workers import heartbeat
from experiments import line as experiment_line
from kaizen_web.batching import Batcher

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews, in one UPDATE, the leases of every run in flight in this process,
    every third of the lease time, so a slow model call keeps its task and a dead
    or frozen worker's tasks expire.

    A lease is renewed for at most KAIZEN_RUN_TIMEOUT_SECONDS after ``hold``:
    past that the run is taken to hang, its lease is left to run out, and the
    reaper takes the task back (a failed attempt). If the call returns after
    all, its result is stale and ignored (services._current_run)."""

    def __init__(self) -> None:
        # token -> time.monotonic() when the run began holding it
        self._held: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Set by close(): wakes the thread at once and ends it.
        self._closed = threading.Event()

    def hold(self, token: uuid.UUID | str) -> None:
        with self._lock:
            self._held[str(token)] = time.monotonic()
            if not self._closed.is_set() and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def release(self, token: uuid.UUID | str) -> None:
        with self._lock:
            self._held.pop(str(token), None)

    def busy(self) -> bool:
        """Whether this process runs live work now (a run holds a lease here)."""
        return bool(self._held)

    def close(self) -> None:
        """Stop renewing (for tests and shutdown); held leases then run out."""
        self._closed.set()

    def renew_due(self) -> int:
        """Renew the leases held for less than the run timeout; stop holding the
        others. Returns how many leases were renewed."""
        timeout = settings.KAIZEN_RUN_TIMEOUT_SECONDS
        now = time.monotonic()
        with self._lock:
            overdue = [t for t, since in self._held.items() if now - since >= timeout]
            for token in overdue:
                del self._held[token]
            tokens = list(self._held)
        for token in overdue:
            logger.warning(
                "run with lease %s went past KAIZEN_RUN_TIMEOUT_SECONDS (%ss): no longer renewing it, "
                "so the reaper takes its task back",
                token,
                timeout,
            )
        if not tokens:
            return 0
        return services.leases_renew(lease_tokens=tokens)

    def _run(self) -> None:
        interval = settings.KAIZEN_LEASE_SECONDS / 3
        while not self._closed.wait(interval):
            try:
                self.renew_due()
            except Exception:
                logger.exception("renewing leases failed")
            finally:
                connection.close()


lease_keeper = LeaseKeeper()


class Completer(Batcher[services.RunResult, bool]):
    """Completes finished runs. In a worker process, the runs that finish within
    KAIZEN_COMPLETE_WINDOW_MS of each other are completed together, in one
    transaction by one thread (services.tasks_complete): with hundreds of runs in
    flight, a transaction, a handful of statements and a pull per task were most
    of the line's cost. Each run waits for its own outcome, so what it returns
    (and a ColumnMissing it must turn into a failed attempt) is as before.
    Elsewhere (a web process, a test calling run() in-process) and with a window
    of 0, a run completes on its own, in its own thread and transaction."""

    name = "completer"

    def complete(self, result: services.RunResult) -> bool:
        if settings.KAIZEN_COMPLETE_WINDOW_MS <= 0 or not services.in_worker_process():
            return self._one(result)
        return self.submit(result)  # this thread's connection goes back to the pool meanwhile

    def complete_soon(self, result: services.RunResult) -> Future:
        """``complete`` without waiting, for the agent loop: the Future answers
        with the outcome (or the ColumnMissing) when the completion committed."""
        if settings.KAIZEN_COMPLETE_WINDOW_MS <= 0 or not services.in_worker_process():
            return _run_threads.pool().submit(_closing, self._one, result)
        return self.enqueue(result)

    @staticmethod
    def _one(result: services.RunResult) -> bool:
        return services.task_complete(
            task_id=result.task_id,
            lease_token=result.lease_token,
            output=result.output,
            attempt=result.attempt,
        )

    def linger(self) -> None:
        time.sleep(settings.KAIZEN_COMPLETE_WINDOW_MS / 1000)  # the runs finishing about now join

    def flush(self, batch: list[tuple[services.RunResult, Future]]) -> None:
        try:
            outcomes = services.tasks_complete(results=[result for result, _ in batch])
        except Exception:
            # One task whose board lost its Done column (say) must not sink the
            # others: one at a time, each with its own outcome.
            logger.info(
                "completing %s runs together failed; completing them one by one", len(batch), exc_info=True
            )
            for result, future in batch:
                try:
                    future.set_result(self._one(result))
                except Exception as exc:
                    future.set_exception(exc)
            return
        for (_, future), finished in zip(batch, outcomes, strict=True):
            future.set_result(finished)


completer = Completer()


def _release_connection() -> None:
    # With a pool, close() returns the connection for other threads to use
    # during the model call; SQLite has nothing worth handing back.
    # Inside a transaction (a caller's atomic block) the connection must stay.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        connection.close()


def _fail_attempt(task_id: int, lease_token: str, error: str, calls=(), attempt: int | None = None) -> str:
    """Record a failed attempt (and the calls it made). If even that cannot be
    written (the last attempt must fail into Done and the board has none), log
    it: the task stays In progress with a lease no longer renewed, and the reaper
    retries it on every pass, logging why, until someone adds a Done column."""
    try:
        services.task_attempt_fail(
            task_id=task_id, lease_token=lease_token, error=error, calls=tuple(calls), attempt=attempt
        )
    except services.ColumnMissing as exc:
        logger.error("could not record the failed run of task %s: %s", task_id, exc.messages[0])
    return "failed"


# The confidence source of an answer a reviewer approved, when it is reused.
REVIEWED = "review"


_UNREAD = object()


def reused_output(task, earlier=_UNREAD) -> Output | None:
    """Should-activate: the result of an identical task this agent already
    completed with the same prompt version, unless the agent or the task opts out.
    ``earlier`` is that task when the caller has looked it up already (run_batch
    looks up a batch at once; None there means there is none)."""
    if earlier is _UNREAD:
        earlier = selectors.task_reusable_get(task=task)
    if earlier is None:
        return None
    confidence, source = earlier.confidence, earlier.confidence_source
    if earlier.reviewed:
        # A reviewer approved (or wrote) this answer to this very input: it is
        # not escalated again for the model's doubt the reviewer settled.
        confidence, source = 1.0, REVIEWED
    return Output(
        text=earlier.output,
        confidence=confidence,
        confidence_source=source,
        reused_from=earlier.pk,
        calls=(
            CallRecord(
                source=ModelCall.Source.REUSE,
                confidence=confidence,
                confidence_source=source,
                accepted=True,
                reused_from=earlier.pk,
            ),
        ),
    )


def run(task_id: int, lease_token: str, task=_UNREAD, earlier=_UNREAD) -> str:
    """Run one claimed task. Returns what happened: ``stale``, ``done``, ``failed`` or
    ``deferred`` (not run: every model its agent calls is behind an open breaker).
    ``task`` is the claimed task when the caller has read it already (run_batch
    reads a batch in one query; None there means the claim is stale).

    A board that lost its Done column while the task ran cannot take the result:
    the output is dropped and the run counts as a failed attempt that names the
    missing column (see _fail_attempt for the last attempt)."""
    if task is _UNREAD:
        task = services.task_run_begin(task_id=task_id, lease_token=lease_token, worker=current_worker())
    if task is None:
        return "stale"
    attempt = task.attempts
    lease_keeper.hold(lease_token)
    try:
        try:
            output = reused_output(task, earlier)
            if output is None:
                agent = implementation_for(experiment_line.agent_for_run(task))
                _release_connection()
                output = _checked(agent, agent.process(task))
        except Exception as exc:
            return _run_failed(task_id, lease_token, attempt, exc)
    finally:
        lease_keeper.release(lease_token)
    return _completed(task_id, lease_token, output, attempt)


def _checked(agent, output) -> Output:
    if not isinstance(output, Output):
        raise AgentFailed(f"{type(agent).__name__}.process() returned {type(output).__name__}, not an Output")
    return output


def _run_failed(task_id: int, lease_token: str, attempt: int, exc: Exception) -> str:
    """What a run that raised ``exc`` comes to, recorded."""
    if isinstance(exc, AgentDeferred):
        services.task_run_defer(task_id=task_id, lease_token=lease_token, reason=str(exc))
        return "deferred"
    if isinstance(exc, AgentFailed):
        return _fail_attempt(task_id, lease_token, str(exc), exc.calls, attempt)
    # A bug in an adapter or a custom agent must cost an attempt, not leave
    # the task In progress until its lease runs out.
    logger.error("run of task %s crashed", task_id, exc_info=exc)
    return _fail_attempt(task_id, lease_token, f"internal error: {exc!r}", (), attempt)


def _completed(task_id: int, lease_token: str, output: Output, attempt: int) -> str:
    """Hand the output to the completer, wait for it, and settle what follows."""
    try:
        finished = completer.complete(
            services.RunResult(task_id=task_id, lease_token=lease_token, output=output, attempt=attempt)
        )
    except services.ColumnMissing as exc:
        return _fail_attempt(task_id, lease_token, exc.messages[0], output.calls, attempt)
    # The response cache was settled as the completion committed (services.tasks_complete).
    return "done" if finished else "stale"


def _run_and_close(claim: tuple[int, str], task, earlier) -> str:
    # The thread waits idle for the next batch: hand its connection back (to the
    # pool on PostgreSQL) rather than hold it meanwhile.
    return _closing(run, *claim, task=task, earlier=earlier)


class _RunThreads:
    """The threads a worker process runs its batches' runs on, kept between
    batches: at a thousand runs a second, starting a thread for each (and an
    executor for each batch) cost the process more than a run's own bookkeeping.
    Grows to as many runs as are in flight at once, as the executor per batch
    did, and keeps what it grew (an idle thread waits on a queue and costs no
    CPU). MAX is no real bound: the WIP limits bound the runs in flight, and a
    run left waiting for a thread would not have its lease renewed meanwhile."""

    MAX = 100_000

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            # A forked child gets an executor of its own: threads do not survive a fork.
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=self.MAX, thread_name_prefix="run")
                self._pid = os.getpid()
            return self._pool


_run_threads = _RunThreads()


def _closing(fn, *args, **kwargs):
    """``fn`` on a run thread, whose database connection (if it opened one) is
    then handed back, as after a run."""
    try:
        return fn(*args, **kwargs)
    finally:
        connection.close()


class AgentLoop:
    """The event loop a worker process runs its batches' cascades on, on a thread
    of its own (started on first use, and again in a forked child); why, in the
    module's docstring.

    Nothing on the loop touches the database (Django refuses it there): the
    Celery thread begins the batch, reads its reusable answers, renders each
    prompt (few-shot examples are a database read) and checks the breakers'
    snapshot; a cascade's ``Blocking`` steps (the response cache, a breaker
    whose snapshot is stale or open, a passed-over output's inspection) and
    the rare records of a failed or deferred run go to a run thread and back;
    a finished run's completion is handed to the completer's batch without a
    thread waiting on it. A custom agent's ``process`` is user code that may
    use the ORM: it runs on a thread as before, as does every run with
    ``KAIZEN_AGENT_LOOP`` off."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if (
                self._loop is None
                or self._pid != os.getpid()
                or self._thread is None
                or not self._thread.is_alive()
            ):
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="agent-loop", daemon=True)
                self._thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def submit(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop())


agent_loop = AgentLoop()


async def _on_thread(fn, *args):
    """``fn(*args)`` on a run thread, from the loop, without blocking it."""
    return await asyncio.get_running_loop().run_in_executor(_run_threads.pool(), _closing, fn, *args)


async def _blocking_step(step: Blocking):
    return await _on_thread(functools.partial(step.fn, *step.args, **step.kwargs))


async def _arun(task_id: int, lease_token: str, attempt: int, work: Output | CascadeSteps) -> str:
    """``run`` on the agent loop, for a run prepared on the Celery thread (its
    lease held there): ``work`` is a reused Output or the cascade's steps."""
    try:
        try:
            output = work if isinstance(work, Output) else await adrive(work, _blocking_step)
        except Exception as exc:
            return await _on_thread(_run_failed, task_id, lease_token, attempt, exc)
    finally:
        lease_keeper.release(lease_token)
    result = services.RunResult(task_id=task_id, lease_token=lease_token, output=output, attempt=attempt)
    try:
        # Shielded: the completer answers its Future whatever becomes of this run
        # (and its outcome is read, so that a cancelled run logs nothing spurious).
        completion = asyncio.wrap_future(completer.complete_soon(result))
        completion.add_done_callback(lambda done: done.cancelled() or done.exception())
        finished = await asyncio.shield(completion)
    except services.ColumnMissing as exc:
        return await _on_thread(_fail_attempt, task_id, lease_token, exc.messages[0], output.calls, attempt)
    return "done" if finished else "stale"


async def _arun_all(runs: list[tuple[int, str, int, Output | CascadeSteps]]) -> list:
    return await asyncio.gather(*(_arun(*args) for args in runs), return_exceptions=True)


def _on_loop(task, earlier, lease_token: str, prefetch: Prefetch) -> Output | CascadeSteps | str | None:
    """A claimed run prepared for the agent loop, its lease held: the reused
    answer or the cascade's steps (its first call's cache key named to
    ``prefetch``); a string when preparing it ended the run (a configuration or
    prompt that cannot run); None when it runs on a thread (a custom agent, or
    a model without an asynchronous client)."""
    lease_keeper.hold(lease_token)
    handed = False
    try:
        output = reused_output(task, earlier)
        if output is not None:
            handed = True
            return output
        agent = implementation_for(experiment_line.agent_for_run(task))
        if not (isinstance(agent, PromptCascadeAgent) and agent.awaitable()):
            return None
        agent.prefetch = prefetch
        steps = agent.plan(task)
        handed = True
        return steps
    except Exception as exc:
        return _run_failed(task.pk, lease_token, task.attempts, exc)
    finally:
        if not handed:  # the loop's run releases it; else it is released here
            lease_keeper.release(lease_token)


def run_batch(claims: list[tuple[int, str]]) -> list[str]:
    """Run several claimed tasks at once and wait for them all (a batch is one
    Celery message; see services._enqueue_runs). The cascades go to the agent
    loop (AgentLoop), other runs to a thread each. Each run is independent: one
    failing or stale changes nothing for the others."""
    loop_on = settings.KAIZEN_AGENT_LOOP
    if len(claims) == 1 and not loop_on:
        return [run(*claims[0])]
    current = services.tasks_run_begin(claims=claims, worker=current_worker())
    # The answers each could reuse, for the whole batch at once: a bulk batch is
    # often many identical tasks, looked up once rather than once each.
    reusable = selectors.tasks_reusable_get(tasks=[task for task in current.values() if task is not None])
    tasks = [current.get(task_id) for task_id, _ in claims]
    earlier = [reusable.get(task.pk) if task is not None else None for task in tasks]
    outcomes: list[str | Future | BaseException | None] = [None] * len(claims)
    on_loop: dict[int, tuple] = {}
    prefetch = Prefetch()
    try:
        if loop_on:
            # A fresh snapshot of the breakers, so that the loop need not ask.
            jidoka.open_models.get()
            for index, ((task_id, token), task, prior) in enumerate(zip(claims, tasks, earlier, strict=True)):
                if task is None:
                    outcomes[index] = "stale"
                    continue
                try:
                    work = _on_loop(task, prior, token, prefetch)
                except Exception as exc:  # even its failure could not be recorded: raised below
                    outcomes[index] = exc
                    continue
                if isinstance(work, str):
                    outcomes[index] = work
                elif work is not None:
                    on_loop[index] = (task_id, token, task.attempts, work)
            # The response cache's answers to their first calls, in one round trip.
            prefetch.fetch()
        _release_connection()
        pool = _run_threads.pool()
        for index, args in enumerate(zip(claims, tasks, earlier, strict=True)):
            if outcomes[index] is None and index not in on_loop:
                outcomes[index] = pool.submit(_run_and_close, *args)
        handed = agent_loop.submit(_arun_all(list(on_loop.values()))) if on_loop else None
    except Exception:
        # Runs prepared for the loop and never handed to it: their leases go
        # back to running out (the reaper takes them), not renewed for nothing.
        # (A KeyboardInterrupt or SystemExit ends the process, whose handover
        # gives its tasks back; it may come after the loop took them.)
        for _, token, _, work in on_loop.values():
            lease_keeper.release(token)
            if not isinstance(work, Output):
                work.close()
        raise
    if handed is not None:
        for index, outcome in zip(on_loop, handed.result(), strict=True):
            outcomes[index] = outcome
    results = [outcome.result() if isinstance(outcome, Future) else outcome for outcome in outcomes]
    errors = [outcome for outcome in results if isinstance(outcome, BaseException)]
    for error in errors[1:]:  # the first is raised
        logger.error("a run of the batch failed too", exc_info=error)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


# --- the worker process: its heartbeat, and the handover when it stops --------------


def current_worker() -> str:
    """The id a run records on its task: this Celery worker process's, whose
    heartbeat is then running (boards.workers); empty anywhere else (a web
    process, a test running a task in-process), where only the lease counts."""
    if not services.in_worker_process() or not heartbeat.beating:
        return ""
    return heartbeat.worker_id


class PullRequests:
    """The threads that serve the pulls other processes ask of the workers (a web
    request's intake, a command: services.request_pull), taking them from Redis
    (services.pull_request_serve), one request to one worker. Two, so that a slow
    pull of one board does not hold up the next board's; pulls of one board
    coalesce in the process anyway. Started once per process, stopped by the
    handover. A Redis that is out of reach (restarting) is tried again every
    second; the periodic pull covers what was asked meanwhile."""

    THREADS = 2
    WAIT_SECONDS = 1
    RETRY_SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stopped = stopped = threading.Event()
            threads = [
                threading.Thread(target=self._serve, args=(stopped,), name=f"pull-requests-{n}", daemon=True)
                for n in range(self.THREADS)
            ]
            for thread in threads:
                thread.start()
            self._threads = threads  # started: join() may wait for them

    def stop(self) -> None:
        """No request is taken from now on; one being waited for (up to
        WAIT_SECONDS) or served finishes on its own (see join)."""
        self._stopped.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the threads to end after stop();
        whether they all did."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    @classmethod
    def _serve(cls, stopped: threading.Event) -> None:
        failing = False
        while not stopped.is_set():
            try:
                services.pull_request_serve(timeout=cls.WAIT_SECONDS)
            except redis.RedisError as exc:
                if not failing:
                    logger.warning("pull requests: Redis is out of reach (%s); trying again", exc)
                failing = True
                stopped.wait(cls.RETRY_SECONDS)
                continue
            except Exception:
                logger.exception("serving a pull request failed")
            finally:
                connection.close()
            if failing:
                logger.info("pull requests: Redis is back")
            failing = False


pull_requests = PullRequests()


def worker_started() -> str:
    """A worker process starts beating, and its watchdog runs the reaper every
    beat: a dead worker's tasks come back within seconds while any worker lives.
    It serves the pulls other processes ask for from now on. Called from Celery's
    worker_init and worker_process_init (boards.tasks)."""
    worker_id = heartbeat.start(watchdog=services.leases_reap)
    pull_requests.start()
    return worker_id


def worker_ready() -> None:
    """A worker that has just started pulls every board once, on a thread of its
    own: work waiting since the last worker stopped (tasks it handed back, or
    ones the reaper returns) need not wait for the periodic pull."""

    def pull_all() -> None:
        try:
            services.boards_pull_all()
        finally:
            connection.close()

    threading.Thread(target=pull_all, name="pull-at-start", daemon=True).start()


def worker_handover() -> int:
    """This worker process is stopping: give back, at once, every task its runs
    hold (services.leases_release_worker: to Ready, the attempt not counted),
    then stop beating. Safe from any thread and to call twice. Runs still in
    flight here finish as stale: their results are ignored. If the tasks cannot
    be given back (the database is out of reach), the heartbeat stops anyway and
    the other workers' reapers take them within seconds. Returns how many went back."""
    worker = heartbeat.worker_id
    if not heartbeat.beating or not worker:
        return 0
    # From now on the pulls that returning tasks (and runs finishing) ask for go
    # to the other workers: this one would claim work it will not run.
    services.mark_worker_stopping()
    pull_requests.stop()
    try:
        returned = services.leases_release_worker(worker=worker)
    except Exception:
        logger.exception("worker %s could not hand back its tasks; the reaper will take them", worker)
        returned = 0
    finally:
        if not connection.in_atomic_block:
            # Called on a thread of its own, whose connection nobody else closes.
            connection.close()
        heartbeat.stop()
    return returned


_handover_thread: threading.Thread | None = None


def worker_handover_soon() -> None:
    """worker_handover on a thread of its own, for a signal handler (Celery sends
    worker_shutting_down from one: no database work may run there, in the middle
    of whatever the main thread was doing). worker_handover_wait joins it."""
    global _handover_thread
    if _handover_thread is None:
        _handover_thread = threading.Thread(target=worker_handover, name="handover", daemon=True)
        _handover_thread.start()


def worker_handover_wait(timeout: float = 5.0) -> None:
    """At the end of the worker's shutdown: let a handover under way finish (for
    ``timeout`` seconds at most), or hand over now what is still held."""
    if _handover_thread is not None:
        _handover_thread.join(timeout)
    else:
        worker_handover()
