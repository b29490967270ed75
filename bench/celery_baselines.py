"""Bare Celery tasks the line is measured against (loaded into the bench worker
with ``--include bench.celery_baselines``; never part of the product)."""

from __future__ import annotations

import os
import time

import redis
from django.conf import settings

# Installs its hooks when KAIZEN_BENCH_PROFILE is set; nothing otherwise.
from bench import worker_hooks
from boards.models import Board
from kaizen_web.celery import app

_redis = None


def _counter() -> redis.Redis:
    global _redis
    if _redis is None:
        # A thousand sleeping threads finish at once: a blocking pool makes them
        # queue for a connection instead of failing past redis-py's default cap (100).
        pool = redis.BlockingConnectionPool.from_url(settings.REDIS_URL, max_connections=100, timeout=60)
        _redis = redis.Redis(connection_pool=pool)
    return _redis


@app.task(name="bench.noop")
def noop(key: str) -> None:
    # The only way to tell the bench a no-op finished without a result backend:
    # one INCR, a fraction of a millisecond.
    _counter().incr(key)


@app.task(name="bench.insert_update")
def insert_update(n: int) -> None:
    # One INSERT and one UPDATE through the ORM, the minimum the line does per move.
    board = Board.objects.create(name=f"bench {n}", slug=f"bench-baseline-{os.getpid()}-{n}")
    Board.objects.filter(pk=board.pk).update(description="done")


@app.task(name="bench.sleep")
def sleep(key: str, seconds: float) -> None:
    # A model call reduced to its wait: what the pool alone does at this latency.
    time.sleep(seconds)
    _counter().incr(key)


@app.task(name="bench.profile_report")
def profile_report(path: str) -> None:
    # Asked once the line is idle: bench.worker_hooks writes what it gathered.
    worker_hooks.report(path)
