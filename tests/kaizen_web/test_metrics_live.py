"""/metrics across processes: a real Celery worker makes the model calls, and the
web server's scrape (another process, which made none) shows them, summed from
the worker's files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess
mode), equal to what the ledger holds."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest
from django.db.models import Count, Sum
from prometheus_client.parser import text_string_to_metric_families

from boards import services
from boards.models import ModelCall, Task
from kaizen_web import processes
from tests.factories import make_agent, make_board
from tests.live import (
    READY_TIMEOUT,
    CeleryWorkerHandle,
    LiveProcess,
    child_env,
    log_path_for,
    register,
    wait_for,
)

TOKEN = "live-metrics-token"


@pytest.fixture
def metrics_dir(tmp_path) -> Path:
    path = tmp_path / "prometheus"
    path.mkdir()
    return path


@pytest.fixture
def worker(request, transactional_db, metrics_dir):
    handle = CeleryWorkerHandle(request, concurrency=4, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def web(request, transactional_db, metrics_dir):
    port = processes.free_port()
    argv = [sys.executable, "-m", "uvicorn", "kaizen_web.asgi:application", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--lifespan", "off"]
    env = child_env({"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "KAIZEN_METRICS_TOKEN": TOKEN})
    process = LiveProcess("web", argv, env, log_path_for(request, "web"))
    register(request, process)
    try:
        wait_for(
            "the web server to accept connections",
            lambda: processes.accepts_connections("127.0.0.1", port),
            timeout=READY_TIMEOUT,
            process=process,
        )
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.stop()


def scrape(url: str) -> dict:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict, family: str, name: str, **labels: str) -> list[float]:
    return [
        s.value
        for s in families[family].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


@pytest.mark.redis
def test_the_web_servers_scrape_shows_the_workers_model_calls(worker, web, metrics_dir):
    url, web_process = web
    board = make_board(ready_limit=10, doing_limit=4)
    make_agent(boards=[board], name="live-metrics", latency_ms=5, error_rate=0, quality_checks=[])
    tasks = [services.task_create(board=board, title=f"t{n}", input=f"Report {n}") for n in range(8)]
    ids = [t.pk for t in tasks]
    wait_for(
        "every task to reach Done",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.DONE).count() == len(ids),
        timeout=60,
        process=worker.current,
    )
    ledger = ModelCall.objects.filter(board=board, source="model").aggregate(
        n=Count("pk"), tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"), latency_ms=Sum("latency_ms")
    )
    assert ledger["n"] >= len(ids)

    # The counts land after each completion commits: wait until the scrape has them all.
    duration = "gen_ai_client_operation_duration_seconds"
    model = {"gen_ai_request_model": "sim-small", "gen_ai_provider_name": "simulated", "error_type": ""}

    def counted() -> bool:
        return samples(scrape(url), duration, f"{duration}_count", **model) == [ledger["n"]]

    wait_for("the scrape to count every ledger row", counted, timeout=30, process=web_process)
    f = scrape(url)

    assert samples(f, duration, f"{duration}_sum", **model) == [pytest.approx(ledger["latency_ms"] / 1000)]
    usage = "gen_ai_client_token_usage"
    assert samples(f, usage, f"{usage}_sum", gen_ai_request_model="sim-small", gen_ai_token_type="input") == [
        ledger["tokens_in"]
    ]
    assert samples(
        f, usage, f"{usage}_sum", gen_ai_request_model="sim-small", gen_ai_token_type="output"
    ) == [ledger["tokens_out"]]
    calls = "kaizen_model_calls"
    assert samples(f, calls, f"{calls}_total", board=board.slug, agent="live-metrics", source="model") == [
        ledger["n"]
    ]
    assert samples(
        f, "kaizen_inspections", "kaizen_inspections_total", board=board.slug, verdict="passed"
    ) == [len(ids)]
    assert samples(f, "kaizen_metrics_multiprocess", "kaizen_metrics_multiprocess") == [1]
    # They came from the worker's files: the web server made no model call.
    worker_pid = worker.current.proc.pid
    assert (metrics_dir / f"histogram_{worker_pid}.db").exists()
    assert not (metrics_dir / f"histogram_{web_process.proc.pid}.db").exists()
