"""``/metrics``: who may scrape it, and what a scrape says after a known history,
read back with prometheus_client's own text parser (and promtool where installed).

The suite's process counts in memory (tests/settings.py removes
PROMETHEUS_MULTIPROC_DIR), and its series live as long as the process: each test
uses model, board and agent names of its own, so the values it reads are its own.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from andon import budget_services
from andon.models import CircuitBreaker, Escalation, Inspection, LineStop
from boards import services
from boards.agents import CallRecord, Output
from boards.models import Column, ModelCall, Task
from tests.factories import make_agent, make_board, make_user_with

BASE_DIR = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def scrape(client, **extra) -> dict:
    """The families of a scrape with the right token, by name."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **extra)
    assert response.status_code == 200, response.content
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def value(families: dict, name: str, sample: str | None = None, **labels: str) -> float | None:
    """The value of the sample ``sample`` (default ``name``) whose labels include ``labels``."""
    found = [
        s.value
        for s in families[name].samples
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{len(found)} samples of {sample or name} match {labels}"
    return found[0] if found else None


@pytest.fixture
def counted(django_capture_on_commit_callbacks):
    """``with counted():`` runs, at the end, the metrics' after-commit callbacks of
    what the block committed, and only those: the others ask Redis for pulls, and
    these tests run without Redis."""

    @contextmanager
    def block():
        with django_capture_on_commit_callbacks() as callbacks:
            yield
        for callback in callbacks:
            if isinstance(callback, partial) and callback.func.__module__ == "boards.metrics":
                callback()

    return block


@pytest.fixture
def token(settings):
    settings.KAIZEN_METRICS_TOKEN = TOKEN
    settings.KAIZEN_METRICS_ALLOW = []


# --- who may scrape --------------------------------------------------------------------


@pytest.mark.django_db
def test_it_is_off_with_neither_a_token_nor_an_allow_list(client, settings):
    settings.KAIZEN_METRICS_TOKEN = ""
    settings.KAIZEN_METRICS_ALLOW = []

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    # A plain refusal saying how to turn it on, not the login page.
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "KAIZEN_METRICS_TOKEN" in text and "KAIZEN_METRICS_ALLOW" in text


@pytest.mark.django_db
def test_it_asks_for_the_token_without_redirecting_to_the_login(client, token):
    response = client.get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer", TOKEN]
)
def test_it_refuses_a_wrong_token(client, token, header):
    response = client.get("/metrics", HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert "kaizen_" not in response.content.decode()


@pytest.mark.django_db
def test_it_answers_the_right_token_in_the_prometheus_text_format(client, token):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name for f in text_string_to_metric_families(response.content.decode())}
    assert {"kaizen_metrics_multiprocess", "kaizen_column_wip", "kaizen_circuit_breaker_state"} <= families


@pytest.mark.django_db
def test_it_takes_only_get_and_head(client, token):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 405


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("address", "status"),
    [("10.1.2.3", 200), ("192.168.0.9", 403), ("::ffff:10.0.0.5", 200), ("2001:db8::1", 200), ("", 403)],
)
def test_the_allow_list_admits_addresses_in_its_networks(client, settings, address, status):
    settings.KAIZEN_METRICS_TOKEN = ""
    settings.KAIZEN_METRICS_ALLOW = ["10.0.0.0/8", "2001:db8::/32"]

    response = client.get("/metrics", REMOTE_ADDR=address)

    assert response.status_code == status
    if status == 403:
        assert "KAIZEN_METRICS_ALLOW" in response.content.decode()


@pytest.mark.django_db
def test_with_both_set_a_scrape_needs_both(client, settings):
    settings.KAIZEN_METRICS_TOKEN = TOKEN
    settings.KAIZEN_METRICS_ALLOW = ["127.0.0.1/32"]
    bearer = f"Bearer {TOKEN}"

    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION=bearer).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1", HTTP_AUTHORIZATION=bearer).status_code == 403


def test_the_settings_read_the_token_from_a_file_and_check_the_allow_list(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIZEN_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("KAIZEN_METRICS_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("KAIZEN_METRICS_TOKEN_FILE", str(secret))
    monkeypatch.setenv("KAIZEN_METRICS_ALLOW", "10.0.0.0/8, 192.168.1.7 ,::1")

    values = runpy.run_path(str(BASE_DIR / "kaizen_web" / "settings.py"))

    assert values["KAIZEN_METRICS_TOKEN"] == "from-a-file"
    assert values["KAIZEN_METRICS_ALLOW"] == ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]

    monkeypatch.setenv("KAIZEN_METRICS_ALLOW", "10.0.0.0/8,not-a-network")
    with pytest.raises(ImproperlyConfigured, match="KAIZEN_METRICS_ALLOW: 'not-a-network'"):
        runpy.run_path(str(BASE_DIR / "kaizen_web" / "settings.py"))


# --- model calls: the OpenTelemetry GenAI histograms and the kaizen_model_* counters ----


def _call(model: str, **fields) -> CallRecord:
    return CallRecord(source="model", tier=1, provider="simulated", model=model, **fields)


def _run_to_the_end(board, agent, calls: tuple[CallRecord, ...]) -> Task:
    task = services.task_create(board=board, title="t", input=f"input {uuid.uuid4().hex}")
    claims = services.board_pull(board_id=board.pk)
    claim = next(c for c in claims if c.task_id == task.pk)
    output = Output(text="an answer", confidence=0.99, tier=1, calls=calls)
    assert services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output=output)
    return task


@pytest.mark.django_db
def test_model_calls_become_genai_histograms_with_the_specs_buckets(client, token, counted):
    model = f"sim-m-{uuid.uuid4().hex[:8]}"
    board = make_board()
    agent = make_agent(boards=[board], quality_checks=[])
    # A known history: three successful calls, one failed call (an HTTP 429), and
    # an answer from the response cache.
    answered = [
        _call(model, tokens_in=10, tokens_out=5, latency_ms=15, cost=Decimal("0.001")),
        _call(model, tokens_in=20, tokens_out=50, latency_ms=300, cost=Decimal("0.002")),
        _call(model, tokens_in=300, tokens_out=5000, latency_ms=3000, cost=Decimal("0.25"), accepted=True),
    ]
    failed = _call(model, latency_ms=100, error="simulated: rate limited", error_type="429")
    cached = CallRecord(source="cache", tier=1, provider="simulated", model=model, accepted=True)
    with counted():
        _run_to_the_end(board, agent, (answered[0], failed, answered[1]))
        _run_to_the_end(board, agent, (answered[2],))
        _run_to_the_end(board, agent, (cached,))

    f = scrape(client)

    duration = "gen_ai_client_operation_duration_seconds"
    ok = {"gen_ai_request_model": model, "gen_ai_provider_name": "simulated", "gen_ai_operation_name": "chat"}
    # Successful calls carry error_type="" (to Prometheus, an empty label is no label).
    ok_samples = [
        s
        for s in f[duration].samples
        if all(s.labels.get(k) == v for k, v in ok.items()) and s.labels["error_type"] == ""
    ]
    by = {(s.name, s.labels.get("le")): s.value for s in ok_samples}
    assert by[(f"{duration}_count", None)] == 3
    assert by[(f"{duration}_sum", None)] == pytest.approx(3.315)
    # Cumulative buckets: 0.015 s <= 0.02, 0.3 s <= 0.32, 3 s <= 5.12.
    assert [
        by[(f"{duration}_bucket", le)] for le in ("0.01", "0.02", "0.16", "0.32", "2.56", "5.12", "+Inf")
    ] == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    assert value(f, duration, f"{duration}_count", gen_ai_request_model=model, error_type="429") == 1
    assert value(
        f, duration, f"{duration}_sum", gen_ai_request_model=model, error_type="429"
    ) == pytest.approx(0.1)

    usage = "gen_ai_client_token_usage"
    # The failed call reports no usage; the cache hit made no call.
    for token_type, count, total, buckets in (
        ("input", 3, 330, {"4.0": 0, "16.0": 1, "64.0": 2, "256.0": 2, "1024.0": 3}),
        ("output", 3, 5055, {"4.0": 0, "16.0": 1, "64.0": 2, "4096.0": 2, "16384.0": 3}),
    ):
        labels = {"gen_ai_request_model": model, "gen_ai_token_type": token_type}
        assert value(f, usage, f"{usage}_count", **labels) == count
        assert value(f, usage, f"{usage}_sum", **labels) == total
        for le, n in buckets.items():
            assert value(f, usage, f"{usage}_bucket", **labels, le=le) == n

    calls = "kaizen_model_calls"
    where = {"board": board.slug, "agent": agent.name, "model": model}
    assert value(f, calls, f"{calls}_total", **where, source="model") == 4
    assert value(f, calls, f"{calls}_total", **where, source="cache") == 1
    cost = "kaizen_model_cost_dollars"
    assert value(f, cost, f"{cost}_total", **where) == pytest.approx(0.253)
    inspections = "kaizen_inspections"
    assert (
        value(f, inspections, f"{inspections}_total", board=board.slug, agent=agent.name, verdict="passed")
        == 3
    )
    # Never a task id among the labels.
    assert all("task" not in s.labels for family in f.values() for s in family.samples)


@pytest.mark.django_db
def test_a_failed_attempts_calls_are_counted_as_errors(client, token, counted):
    model = f"sim-f-{uuid.uuid4().hex[:8]}"
    board = make_board()
    make_agent(boards=[board])
    task = services.task_create(board=board, title="t", input="x")
    [claim] = services.board_pull(board_id=board.pk)
    failed = _call(model, latency_ms=50, error="openai: request timed out after 30s", error_type="timeout")
    with counted():
        services.task_attempt_fail(
            task_id=task.pk, lease_token=claim.lease_token, error="boom", calls=(failed,)
        )

    f = scrape(client)

    duration = "gen_ai_client_operation_duration_seconds"
    assert value(f, duration, f"{duration}_count", gen_ai_request_model=model, error_type="timeout") == 1
    assert ModelCall.objects.filter(model=model).count() == 1


@pytest.mark.django_db
def test_nothing_is_counted_when_the_ledger_rows_roll_back(client, token, counted):
    model = f"sim-r-{uuid.uuid4().hex[:8]}"
    board = make_board()
    make_agent(boards=[board])
    task = services.task_create(board=board, title="t", input="x")
    [claim] = services.board_pull(board_id=board.pk)
    with counted(), pytest.raises(RuntimeError):
        with transaction.atomic():
            services.task_attempt_fail(
                task_id=task.pk,
                lease_token=claim.lease_token,
                error="boom",
                calls=(_call(model, latency_ms=5),),
            )
            raise RuntimeError("the transaction fails after the ledger rows were written")

    f = scrape(client)

    assert not [
        s
        for s in f["gen_ai_client_operation_duration_seconds"].samples
        if s.labels.get("gen_ai_request_model") == model
    ]
    assert not ModelCall.objects.filter(model=model).exists()  # the ledger agrees


# --- the line's state, read from the database at scrape time ----------------------------


def _history(n_tasks: int) -> dict:
    """A board with tasks in Ready and In progress, an escalation of each outcome,
    a line stop and breakers. Returns what the test checks against."""
    board = make_board(ready_limit=50, doing_limit=2)
    agent = make_agent(boards=[board], name=f"agent-{uuid.uuid4().hex[:6]}")
    tasks = [services.task_create(board=board, title=f"t{n}", input=f"x{n}") for n in range(n_tasks)]
    services.board_pull(board_id=board.pk)  # two claimed (the In progress limit)
    running = list(Task.objects.filter(board=board, status=Task.Status.RUNNING))
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Task.objects.filter(pk=running[0].pk).update(started_at=an_hour_ago)
    Task.objects.filter(pk=tasks[-1].pk).update(created_at=an_hour_ago - timedelta(hours=1))
    for status in ("open", "open", "approved", "rejected"):
        task = Task.objects.create(
            board=board, column=board.columns.get(role="review"), title="e", status="review"
        )
        inspection = Inspection.objects.create(task=task, board=board, agent=agent, passed=False)
        Escalation.objects.create(task=task, board=board, agent=agent, inspection=inspection, status=status)
    LineStop.objects.create(agent=agent, kind=LineStop.Kind.CORD, reason="test")
    CircuitBreaker.objects.create(scope="model", board=board, key="simulated/sim-x", state="open")
    CircuitBreaker.objects.create(scope="agent", agent=agent, state="closed")
    return {"board": board, "agent": agent, "ready": n_tasks - 2 + 0}


@pytest.mark.django_db
def test_the_line_state_after_a_known_history(client, token):
    h = _history(6)
    board, agent = h["board"], h["agent"]

    f = scrape(client)

    b = board.slug
    assert value(f, "kaizen_column_wip", board=b, role="ready") == 4
    assert value(f, "kaizen_column_wip", board=b, role="in_progress") == 2
    assert value(f, "kaizen_column_wip", board=b, role="review") == 4
    assert value(f, "kaizen_column_wip", board=b, role="done") is None  # finished work is not WIP
    assert value(f, "kaizen_column_wip_limit", board=b, role="in_progress") == 2
    assert value(f, "kaizen_column_wip_limit", board=b, role="in_progress", hard="true") == 2
    assert value(f, "kaizen_column_wip_limit", board=b, role="ready") == 50
    # Started an hour ago; the Ready task made two hours ago has not started.
    age = value(f, "kaizen_column_oldest_item_age_seconds", board=b, role="in_progress")
    assert 3600 <= age < 3600 + 600
    age = value(f, "kaizen_column_oldest_item_age_seconds", board=b, role="ready")
    assert 7200 <= age < 7200 + 600
    assert value(f, "kaizen_column_oldest_item_age_seconds", board=b, role="backlog") == 0
    assert value(f, "kaizen_board_tasks", board=b, status="running") == 2
    assert value(f, "kaizen_board_tasks", board=b, status="ready") == 4
    assert value(f, "kaizen_board_tasks", board=b, status="review") == 4

    a = agent.name
    assert value(f, "kaizen_escalations_open", board=b, agent=a) == 2
    assert value(f, "kaizen_escalations_raised", "kaizen_escalations_raised_total", board=b, agent=a) == 4
    decided = "kaizen_escalations_decided"
    assert value(f, decided, f"{decided}_total", board=b, agent=a, outcome="approved") == 1
    assert value(f, decided, f"{decided}_total", board=b, agent=a, outcome="rejected") == 1
    assert value(f, "kaizen_line_stops_active", board="", agent=a, kind="cord") == 1
    state = "kaizen_circuit_breaker_state"
    assert value(f, state, scope="model", board=b, model="simulated/sim-x", state="open") == 1
    assert value(f, state, scope="model", board=b, model="simulated/sim-x", state="closed") == 0
    assert value(f, state, scope="agent", agent=a, state="closed") == 1
    assert value(f, "kaizen_metrics_multiprocess") == 0


@pytest.mark.django_db
@pytest.mark.parametrize("n_tasks", [3, 40])
def test_a_scrape_takes_the_same_few_queries_whatever_the_size(
    client, token, django_assert_max_num_queries, n_tasks
):
    for _ in range(1 if n_tasks == 3 else 3):
        _history(n_tasks)

    with django_assert_max_num_queries(9):
        scrape(client)


# --- promtool ------------------------------------------------------------------------


@needs_promtool
@pytest.mark.django_db
def test_promtool_finds_the_scrape_well_formed(client, token, counted):
    board = make_board()
    agent = make_agent(boards=[board], quality_checks=[])
    with counted():
        _run_to_the_end(board, agent, (_call("sim-small", tokens_in=3, tokens_out=4, latency_ms=20),))
    _history(3)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=response.content, capture_output=True, timeout=60
    )

    # promtool prints lint findings (and exits 1 on them); nothing to find here.
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert Column.objects.exists()


@pytest.mark.django_db
def test_each_budget_s_remaining_and_used_share_this_period(client, token):
    board = make_board()
    agent = make_agent(boards=[board], name="spender", concurrency=1)
    keeper = make_user_with("andon.add_budget")
    budget_services.budget_create(
        user=keeper,
        name="Daily spend",
        agent=agent,
        board=None,
        unit="usd",
        period="day",
        limit=Decimal("10"),
    )
    for _ in range(3):
        _run_to_the_end(board, agent, (_call("sim-small", cost=Decimal("2"), tokens_in=10, tokens_out=10),))

    f = scrape(client)

    labels = {"budget": "Daily spend", "board": "", "agent": "spender", "period": "day", "unit": "usd"}
    assert value(f, "kaizen_budget_remaining", **labels) == pytest.approx(4.0)
    assert value(f, "kaizen_budget_used_ratio", **labels) == pytest.approx(0.6)
