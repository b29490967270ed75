"""Where a worker's CPU goes, for the bench only (never imported by the product).

Loaded into a bench worker through ``bench.celery_baselines`` (``--include``) and
active only when ``KAIZEN_BENCH_PROFILE`` is set:

- ``sections``: wraps the steps of a run (begin, reuse check, the agent, the
  completion, the pull, publishing the claimed runs, the live render, SQL
  statements, commits, Celery publishes) and adds up each one's CPU time
  (``time.thread_time``, so a model's sleep and a wait on a lock count nothing),
  inclusive and exclusive of the wrapped steps inside it, plus the number of
  calls and of SQL statements by kind and by step. Cheap enough to leave the
  throughput about where it is.
- ``cprofile``: a ``cProfile.Profile`` per thread with ``time.thread_time`` as
  its clock, enabled around each run and each live render, merged on request.
  Slows the worker down several times: for the ranking of functions, not for
  absolute figures.

The bench asks for the figures with the ``bench.profile_report`` task, once the
line is idle, and reads them from the file it names.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import defaultdict

MODE = os.environ.get("KAIZEN_BENCH_PROFILE", "")

_lock = threading.Lock()
_local = threading.local()
# section -> [calls, inclusive cpu s, exclusive cpu s]
_sections: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
# (section, statement kind) -> count
_sql: dict[tuple[str, str], int] = defaultdict(int)
_counters: dict[str, int] = defaultdict(int)
_profiles: list = []


def _stack() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _current() -> str:
    stack = _stack()
    return stack[-1][0] if stack else "(outside)"


def timed(name: str, fn):
    """``fn`` with its CPU time added to section ``name``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stack = _stack()
        frame = [name, 0.0]
        stack.append(frame)
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            stack.pop()
            if stack:
                stack[-1][1] += spent
            with _lock:
                entry = _sections[name]
                entry[0] += 1
                entry[1] += spent
                entry[2] += spent - frame[1]

    wrapper.__bench_wrapped__ = True
    return wrapper


def _profiled(fn):
    """``fn`` run under this thread's profiler (cprofile mode)."""
    import cProfile

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        profile = getattr(_local, "profile", None)
        if profile is None:
            profile = _local.profile = cProfile.Profile(time.thread_time)
            with _lock:
                _profiles.append(profile)
        if getattr(_local, "profiling", False):
            return fn(*args, **kwargs)
        _local.profiling = True
        profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            profile.disable()
            _local.profiling = False

    return wrapper


def _statement_kind(sql: str) -> str:
    word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    if word == "SELECT" and "FOR NO KEY UPDATE" in sql.upper():
        return "SELECT FOR UPDATE"
    return word


def install_sections() -> None:
    from django.db.backends import utils
    from django.db.backends.base.base import BaseDatabaseWrapper
    from kombu import messaging

    from boards import agents, broadcast, services
    from boards.agents import runtime
    from boards.agents.simulated import SimulatedProvider

    runtime.run = timed("run", runtime.run)
    services.task_run_begin = timed("run_begin", services.task_run_begin)
    runtime.reused_output = timed("reuse_check", runtime.reused_output)
    runtime._release_connection = timed("release_connection", runtime._release_connection)
    agents.PromptCascadeAgent.process = timed("agent_process", agents.PromptCascadeAgent.process)
    # On the agent loop (boards.agents.runtime.AgentLoop) ``process`` is not called:
    # a run is prepared on the Celery thread (``plan``: the prompt, the breakers'
    # snapshot) and its cascade's steps run on the loop, most of their CPU the
    # simulated model's own work (``judge``, synchronous on the loop's thread).
    agents.PromptCascadeAgent.plan = timed("agent_plan", agents.PromptCascadeAgent.plan)
    SimulatedProvider.judge = timed("simulated_model", SimulatedProvider.judge)
    services.task_complete = timed("complete", services.task_complete)
    # A worker completes its runs in batches, on the completer's thread.
    runtime.Completer.flush = timed("complete_batch", runtime.Completer.flush)
    # Patched where they are looked up: the services package re-exports them.
    services.pull.request_pull = timed("pull_request", services.pull.request_pull)
    original_board_pull = services.pull.board_pull

    def board_pull(*, board_id):
        claims = original_board_pull(board_id=board_id)
        with _lock:
            _counters["pulls"] += 1
            _counters["claims"] += len(claims)
            if claims:
                _counters["pulls_that_claimed"] += 1
        return claims

    services.pull.board_pull = timed("board_pull", board_pull)
    services.enqueue.runs_enqueue = timed("enqueue_runs", services.enqueue.runs_enqueue)
    broadcast.columns_changed = timed("broadcast_queue", broadcast.columns_changed)
    original_send = broadcast.Broadcaster._send

    def send(self, *args, **kwargs):
        with _lock:
            _counters["broadcast_renders"] += 1
        return original_send(self, *args, **kwargs)

    broadcast.Broadcaster._send = timed("broadcast_render_send", send)

    for method in ("execute", "executemany"):
        original = getattr(utils.CursorWrapper, method)

        def make(original):
            inner = timed("sql", original)

            def execute(self, sql, *args, **kwargs):
                with _lock:
                    _sql[(_current(), _statement_kind(sql))] += 1
                return inner(self, sql, *args, **kwargs)

            return execute

        setattr(utils.CursorWrapper, method, make(original))
    BaseDatabaseWrapper.commit = timed("commit", BaseDatabaseWrapper.commit)
    # A connection from the psycopg pool, and Django's set-up of it.
    BaseDatabaseWrapper.connect = timed("db_connect", BaseDatabaseWrapper.connect)
    messaging.Producer.publish = timed("celery_publish", messaging.Producer.publish)

    # Celery's own share in a pool thread: the whole message (ack, trace, signals,
    # the task), the ack, and the Django fixup closing connections around each task.
    from celery.concurrency import thread as thread_pool
    from celery.fixups.django import DjangoWorkerFixup
    from celery.worker.request import Request

    thread_pool.apply_target = timed("celery_apply_target", thread_pool.apply_target)
    Request.acknowledge = timed("celery_ack", Request.acknowledge)
    DjangoWorkerFixup._close_database = timed("celery_fixup_close_db", DjangoWorkerFixup._close_database)


_main_profile = None
_consumer = None


def install_cprofile() -> None:
    import cProfile

    from celery import signals
    from celery.concurrency import thread as thread_pool

    from boards import broadcast
    from boards.agents import runtime

    # The whole of each message in a pool thread (ack, trace, signals, the run).
    thread_pool.apply_target = _profiled(thread_pool.apply_target)
    # The runs' threads and the completer's (a batch of runs completed at once).
    runtime._run_and_close = _profiled(runtime._run_and_close)
    runtime.Completer.flush = _profiled(runtime.Completer.flush)

    @signals.worker_ready.connect(weak=False)
    def profile_consumer(sender=None, **kwargs):
        # The Celery consumer's thread (the main one): receiving and dispatching.
        global _main_profile, _consumer
        _consumer = sender
        _main_profile = cProfile.Profile(time.thread_time)
        _main_profile.enable()

    broadcast.Broadcaster._send = _profiled(broadcast.Broadcaster._send)


def report(path: str) -> None:
    """Write what was gathered so far to ``path`` (JSON; plus ``path``.prof and a
    text summary in cprofile mode) and reset it."""
    data = {
        "mode": MODE,
        "pid": os.getpid(),
    }
    with _lock:
        data["sections"] = {k: {"calls": v[0], "incl_s": v[1], "excl_s": v[2]} for k, v in _sections.items()}
        data["sql"] = [[section, kind, n] for (section, kind), n in sorted(_sql.items())]
        data["counters"] = dict(_counters)
        _sections.clear()
        _sql.clear()
        _counters.clear()
        profiles = list(_profiles)
    if MODE == "cprofile" and _main_profile is not None:
        # Stopped from its own thread (the consumer's event loop), then read here.
        stopped = threading.Event()

        def stop():
            _main_profile.disable()
            stopped.set()

        _consumer.call_soon(stop)
        if stopped.wait(10):
            import io
            import pstats

            try:
                consumer = pstats.Stats(_main_profile)
            except TypeError:
                consumer = None  # nothing received since the last report
            if consumer is not None:
                out = io.StringIO()
                consumer.stream = out
                consumer.sort_stats("tottime").print_stats(30)
                data["consumer_top_tottime"] = out.getvalue()
                data["consumer_total_s"] = sum(v[2] for v in consumer.stats.values())
            _main_profile.clear()
            _consumer.call_soon(_main_profile.enable)
    if MODE == "cprofile" and profiles:
        import io
        import pstats

        stats = None
        for profile in profiles:
            try:
                # A thread that ran nothing since the last report has no stats:
                # pstats refuses an empty profile.
                one = pstats.Stats(profile)
            except TypeError:
                continue
            if stats is None:
                stats = one
            else:
                stats.add(one)
        if stats is not None:
            stats.dump_stats(path + ".prof")
            for key in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(path + ".prof", stream=out).sort_stats(key).print_stats(45)
                data[f"top_{key}"] = out.getvalue()
            data["total_s"] = sum(v[2] for v in stats.stats.values())
    for profile in profiles:
        # Idle by now (the bench asks once the line is done): start afresh.
        profile.clear()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


if MODE == "sections":
    install_sections()
elif MODE == "cprofile":
    install_cprofile()
