"""Circuit breakers: an agent whose attempts keep failing, or a provider model whose
calls keep erroring on a board, is taken off the line until a cool-down has passed;
then one probe is let through, whose outcome closes the breaker or opens it again.
A probe takes work that has not just failed, and one board's model errors never
hold back another board.

Time is moved by setting ``opened_at`` and ``probe_started_at`` back, not by sleeping."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from andon import jidoka
from andon.models import CircuitBreaker
from boards import services
from boards.agents import Output
from boards.models import ModelCall, Task
from boards.selectors import board_agents_get
from tests.andon.helpers import GOOD, PASSING, claim_one, complete, fail, model_call, pull
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.usefixtures("no_open_breakers")

State = CircuitBreaker.State
THRESHOLD = 3
COOLDOWN = 60


@pytest.fixture
def flaky(board):
    return make_agent(
        boards=[board],
        concurrency=10,
        max_attempts=50,
        breaker_threshold=THRESHOLD,
        breaker_cooldown_seconds=COOLDOWN,
    )


def _tasks(board, n: int, *, prefix: str = "case") -> list[Task]:
    return [services.task_create(board=board, title=f"{prefix} {i}", input=f"{prefix} {i}") for i in range(n)]


def _output(*calls) -> Output:
    return Output(text=GOOD, confidence=PASSING, confidence_source="simulated", tier=1, calls=calls)


def _fail_attempts(board, n: int) -> None:
    """``n`` claimed runs of ``board`` fail, one after the other."""
    _tasks(board, n, prefix="failing")
    claims = pull(board)
    assert len(claims) == n
    for claim in claims:
        assert fail(claim, error="provider timed out")


def _open_breaker(board) -> CircuitBreaker:
    _fail_attempts(board, THRESHOLD)
    breaker = CircuitBreaker.objects.get(scope=CircuitBreaker.Scope.AGENT)
    assert breaker.state == State.OPEN
    return breaker


def _age(breaker: CircuitBreaker, seconds: float = COOLDOWN + 1, *, field: str = "opened_at") -> None:
    CircuitBreaker.objects.filter(pk=breaker.pk).update(
        **{field: timezone.now() - timedelta(seconds=seconds)}
    )


# --- the agent's breaker ---------------------------------------------------------------


@pytest.mark.django_db
def test_consecutive_failed_attempts_open_the_agents_breaker_and_it_pulls_nothing(board, flaky):
    _fail_attempts(board, THRESHOLD)

    breaker = CircuitBreaker.objects.get(agent=flaky)
    assert breaker.state == State.OPEN
    assert breaker.consecutive_failures == THRESHOLD
    assert breaker.last_error == "provider timed out"
    assert breaker.opened_at is not None
    assert Task.objects.filter(board=board, status=Task.Status.READY).count() == THRESHOLD
    assert pull(board) == []


def _assert_breakers_before_muda_hours(queries: CaptureQueriesContext) -> None:
    """Every statement on the breakers came before the first into the Muda hours:
    the order every writer takes their locks in."""
    statements = [query["sql"] for query in queries.captured_queries]
    breakers = [i for i, sql in enumerate(statements) if "andon_circuitbreaker" in sql]
    hours = [i for i, sql in enumerate(statements) if "INTO andon_mudahour" in sql]
    assert breakers and hours
    assert max(breakers) < min(hours)


@pytest.mark.django_db
def test_a_failed_attempt_locks_the_breakers_before_the_muda_hours_as_a_completed_batch_does(board, flaky):
    # A completed batch locks the breakers, then its Muda hour rows, then the
    # budgets' periods. A failed attempt took the Muda hours first: with two
    # worker processes on PostgreSQL, each held what the other waited for.
    _tasks(board, 1)
    [claim] = pull(board)
    with CaptureQueriesContext(connection) as queries:
        assert fail(claim, error="simulated 503", calls=[model_call(), model_call(error="simulated 503")])
    _assert_breakers_before_muda_hours(queries)
    assert CircuitBreaker.objects.get(agent=flaky).consecutive_failures == 1


@pytest.mark.django_db
def test_a_batch_with_a_stale_run_locks_the_breakers_before_the_muda_hours(board, flaky):
    # A stale run's calls went into the Muda hours inside the batch's loop, before
    # the breakers: the same inversion against a failed attempt in another worker.
    _fail_attempts(board, 1)  # the agent's breaker counts a failure: completions reset it
    _tasks(board, 1, prefix="fresh")
    fresh, reaped = pull(board)
    stale_token = uuid.uuid4()  # as a run whose lease was taken back and given again
    results = [
        services.RunResult(task_id=claim.task_id, lease_token=token, output=_output(model_call()))
        for claim, token in ((fresh, fresh.lease_token), (reaped, stale_token))
    ]
    with CaptureQueriesContext(connection) as queries:
        assert services.tasks_complete(results=results) == [True, False]
    _assert_breakers_before_muda_hours(queries)
    assert CircuitBreaker.objects.get(agent=flaky).consecutive_failures == 0
    # The stale run's call is in the ledger all the same, never accepted.
    assert ModelCall.objects.filter(task_id=reaped.task_id, stale=True).count() == 1


@pytest.mark.django_db
def test_failures_below_the_threshold_leave_the_breaker_closed(board, flaky):
    _fail_attempts(board, THRESHOLD - 1)

    breaker = CircuitBreaker.objects.get(agent=flaky)
    assert (breaker.state, breaker.consecutive_failures) == (State.CLOSED, THRESHOLD - 1)
    assert len(pull(board)) == THRESHOLD - 1


@pytest.mark.django_db
def test_a_completed_run_resets_the_count_of_consecutive_failures(board, flaky):
    _fail_attempts(board, THRESHOLD - 1)
    [claim, *others] = pull(board)
    assert complete(claim)
    for other in others:
        assert fail(other)

    breaker = CircuitBreaker.objects.get(agent=flaky)
    assert (breaker.state, breaker.consecutive_failures) == (State.CLOSED, THRESHOLD - 2)


@pytest.mark.django_db
def test_an_open_breaker_stops_only_its_own_agent(board, flaky):
    _open_breaker(board)
    healthy = make_agent(boards=[board], concurrency=10)

    claims = pull(board)

    assert len(claims) == THRESHOLD
    assert set(Task.objects.filter(pk__in=[c.task_id for c in claims]).values_list("agent", flat=True)) == {
        healthy.pk
    }


@pytest.mark.django_db
def test_during_the_cooldown_the_agent_pulls_nothing(board, flaky):
    breaker = _open_breaker(board)
    _age(breaker, COOLDOWN - 5)

    assert pull(board) == []
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.OPEN


@pytest.mark.django_db
def test_after_the_cooldown_one_probe_task_is_claimed_and_no_second(board, flaky):
    breaker = _open_breaker(board)
    _age(breaker)

    first = pull(board)
    second = pull(board)

    assert len(first) == 1
    assert second == []
    breaker.refresh_from_db()
    assert breaker.state == State.HALF_OPEN
    assert breaker.probe_started_at is not None
    assert Task.objects.filter(board=board, status=Task.Status.RUNNING).count() == 1


@pytest.mark.django_db
def test_a_successful_probe_closes_the_breaker(board, flaky):
    breaker = _open_breaker(board)
    _age(breaker)
    [probe] = pull(board)

    assert complete(probe)

    breaker.refresh_from_db()
    assert (breaker.state, breaker.consecutive_failures) == (State.CLOSED, 0)
    assert breaker.opened_at is None and breaker.probe_started_at is None
    # Closed: the agent pulls every task left waiting again.
    assert len(pull(board)) == THRESHOLD - 1


@pytest.mark.django_db
def test_a_failed_probe_opens_the_breaker_again(board, flaky):
    breaker = _open_breaker(board)
    _age(breaker)
    [probe] = pull(board)
    before = timezone.now()

    assert fail(probe, error="still timing out")

    breaker.refresh_from_db()
    assert breaker.state == State.OPEN
    assert breaker.opened_at >= before
    assert breaker.probe_started_at is None
    assert breaker.last_error == "still timing out"
    # A fresh cool-down: nothing is pulled.
    assert pull(board) == []


@pytest.mark.django_db
def test_a_probe_that_never_reports_back_is_given_up_after_the_cooldown(board, flaky):
    breaker = _open_breaker(board)
    _age(breaker)
    [lost] = pull(board)
    assert pull(board) == []
    _age(breaker, field="probe_started_at")

    [another] = pull(board)

    assert another.task_id != lost.task_id
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.HALF_OPEN


@pytest.mark.django_db
def test_a_pull_that_claims_nothing_does_not_spend_the_half_open_probe():
    board = make_board(doing_limit=1)
    flaky = make_agent(
        boards=[board],
        concurrency=10,
        max_attempts=50,
        breaker_threshold=1,
        breaker_cooldown_seconds=COOLDOWN,
    )
    _tasks(board, 3)
    [claim] = pull(board)
    assert fail(claim)
    breaker = CircuitBreaker.objects.get(agent=flaky)
    assert breaker.state == State.OPEN
    _age(breaker)
    # In progress is full (another agent's run): this pull can claim nothing.
    services.agent_set_paused(agent=flaky, paused=True)
    other = make_agent(boards=[board], concurrency=1)
    [busy] = pull(board)
    services.agent_set_paused(agent=flaky, paused=False)
    services.agent_set_paused(agent=other, paused=True)
    assert pull(board) == []

    # The other run ends, In progress has room: the flaky agent's probe goes now.
    assert complete(busy)
    [probe] = pull(board)
    assert Task.objects.get(pk=probe.task_id).agent_id == flaky.pk


@pytest.mark.django_db
def test_the_gate_can_leave_taking_the_probe_to_the_pull_that_claims_it(board, flaky):
    breaker = _open_breaker(board)
    _age(breaker)

    gate = jidoka.pull_gate([flaky], board_id=board.pk, take_probes=False)

    assert gate.probes == {flaky.pk} and flaky.pk not in gate.blocked
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.OPEN
    jidoka.probes_taken([flaky.pk])
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.HALF_OPEN
    assert jidoka.pull_gate([flaky], board_id=board.pk, take_probes=False).blocked == {flaky.pk}


@pytest.mark.django_db
def test_an_agent_held_back_by_its_model_keeps_its_probe_for_when_the_model_is_back(board, flaky, settings):
    settings.KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS = COOLDOWN
    breaker = _open_breaker(board)
    _age(breaker)
    model = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key="simulated/sim-small",
        state=State.OPEN,
        opened_at=timezone.now(),
    )

    assert pull(board) == []
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.OPEN

    _age(model)
    assert len(pull(board)) == 1
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.HALF_OPEN


# --- the probe takes other work ------------------------------------------------------


def _poisoned(board, healthy: int) -> tuple[Task, list[Task]]:
    """The most urgent task, whose every run fails, and ``healthy`` tasks behind it."""
    poison = services.task_create(board=board, title="poison", input="always refused", priority=5)
    return poison, _tasks(board, healthy)


def _fail_first_in_line(board, poison: Task, times: int, **failure) -> None:
    """The urgent task is pulled first and, still the most urgent after each failure,
    pulled again: ``times`` failed attempts in a row."""
    for _ in range(times):
        [claim] = pull(board)
        assert claim.task_id == poison.pk
        assert fail(claim, **failure)


@pytest.mark.django_db
def test_the_agents_half_open_probe_takes_other_work_than_the_task_that_keeps_failing():
    # Probing with the task whose failure always recurs kept the breaker open
    # while six healthy tasks sat in Ready.
    board = make_board(ready_limit=20)
    flaky = make_agent(
        boards=[board],
        concurrency=1,
        max_attempts=50,
        breaker_threshold=THRESHOLD,
        breaker_cooldown_seconds=COOLDOWN,
    )
    poison, healthy = _poisoned(board, 6)
    _fail_first_in_line(board, poison, THRESHOLD, error="the provider refuses this input")
    breaker = CircuitBreaker.objects.get(agent=flaky)
    assert breaker.state == State.OPEN
    _age(breaker)

    [probe] = pull(board)

    # Never tried, and first of those in the queue.
    assert probe.task_id == healthy[0].pk
    assert complete(probe)
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.CLOSED
    # Closed: the queue's own order again, the urgent task first.
    assert pull(board)[0].task_id == poison.pk


@pytest.mark.django_db
def test_a_models_probe_run_takes_other_work_than_the_task_that_keeps_failing(model_threshold):
    board = make_board(ready_limit=20)
    make_agent(boards=[board], concurrency=1, max_attempts=50)
    poison, healthy = _poisoned(board, 3)
    _fail_first_in_line(board, poison, THRESHOLD, error="400", calls=[model_call(error="input refused")])
    model = CircuitBreaker.objects.get(scope=CircuitBreaker.Scope.MODEL, board=board)
    assert model.state == State.OPEN
    _age(model)

    [probe] = pull(board)

    assert probe.task_id == healthy[0].pk


@pytest.mark.django_db
def test_among_tried_tasks_the_probe_takes_the_one_tried_longest_ago():
    board = make_board(ready_limit=20)
    flaky = make_agent(
        boards=[board], concurrency=2, max_attempts=50, breaker_threshold=2, breaker_cooldown_seconds=COOLDOWN
    )
    first, second = _tasks(board, 2)
    for claim in pull(board):
        assert fail(claim)
    # Both back in Ready, first ahead of second; second was tried earlier.
    Task.objects.filter(pk=second.pk).update(started_at=timezone.now() - timedelta(minutes=5))
    _age(CircuitBreaker.objects.get(agent=flaky))

    [probe] = pull(board)

    assert probe.task_id == second.pk


@pytest.mark.django_db
def test_a_failed_task_goes_back_behind_its_own_priority_group_ahead_of_lower_ones():
    board = make_board(ready_limit=20)
    make_agent(boards=[board], concurrency=1, max_attempts=50)
    urgent = [services.task_create(board=board, title=f"urgent {i}", priority=5) for i in range(2)]
    services.task_create(board=board, title="normal")
    [claim] = pull(board)
    assert claim.task_id == urgent[0].pk

    assert fail(claim)

    ready = Task.objects.filter(board=board, status=Task.Status.READY).order_by("position")
    assert list(ready.values_list("title", flat=True)) == ["urgent 1", "urgent 0", "normal"]


# --- the model's breaker -----------------------------------------------------------


def _model_errors(board, n: int, *, model: str = "sim-small") -> None:
    _tasks(board, n, prefix=f"{model} error")
    for claim in pull(board)[:n]:
        assert fail(claim, error="503", calls=[model_call(model=model, error="simulated 503")])


@pytest.fixture
def model_threshold(settings):
    settings.KAIZEN_MODEL_BREAKER_THRESHOLD = THRESHOLD
    settings.KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS = COOLDOWN
    return THRESHOLD


@pytest.mark.django_db
def test_consecutive_call_errors_across_a_boards_agents_open_its_models_breaker(model_threshold, board):
    first = make_agent(boards=[board], max_attempts=50, concurrency=THRESHOLD - 1)
    _model_errors(board, THRESHOLD - 1)
    assert CircuitBreaker.objects.get(key="simulated/sim-small").state == State.CLOSED
    services.agent_set_paused(agent=first, paused=True)
    second = make_agent(boards=[board], max_attempts=50)
    _model_errors(board, 1)

    breaker = CircuitBreaker.objects.get(scope=CircuitBreaker.Scope.MODEL, key="simulated/sim-small")
    assert (breaker.board, breaker.state, breaker.consecutive_failures) == (board, State.OPEN, THRESHOLD)
    assert breaker.last_error == "simulated 503"
    # Neither agent reached its own threshold: the model is what is broken.
    assert not CircuitBreaker.objects.filter(agent__in=[first, second], state=State.OPEN).exists()


@pytest.mark.django_db
def test_one_boards_model_errors_do_not_hold_back_another_board_on_that_model(model_threshold, board):
    # The shared breaker let one board's bad input stall every board on the model.
    make_agent(boards=[board], name="troubled", max_attempts=50)
    elsewhere = make_board()
    healthy = make_agent(boards=[elsewhere], name="healthy")
    _model_errors(board, THRESHOLD)
    assert pull(board) == []

    _tasks(elsewhere, 3)
    claims = pull(elsewhere)

    assert len(claims) == 3
    assert {Task.objects.get(pk=c.task_id).agent_id for c in claims} == {healthy.pk}
    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=elsewhere.pk) is True
    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is False
    # Each board's agents strip shows its own breakers only.
    [troubled] = board_agents_get(board=board)
    assert [(b.key, b.state) for b in troubled.model_breakers] == [("simulated/sim-small", State.OPEN)]
    [other] = board_agents_get(board=elsewhere)
    assert other.model_breakers == []


@pytest.mark.django_db
def test_an_agent_whose_only_tier_is_an_open_model_pulls_nothing(model_threshold, board):
    make_agent(boards=[board], max_attempts=50)
    _model_errors(board, THRESHOLD)
    elsewhere = make_board()
    other_model = make_agent(boards=[elsewhere], model="sim-large")
    _tasks(elsewhere, 1)

    assert pull(board) == []
    # An agent on another model is not held back.
    assert len(pull(elsewhere)) == 1
    assert Task.objects.get(board=elsewhere, status=Task.Status.RUNNING).agent_id == other_model.pk


@pytest.mark.django_db
def test_an_agent_with_another_tier_still_pulls_while_one_model_is_open(model_threshold, board):
    make_agent(boards=[board], max_attempts=50)
    _model_errors(board, THRESHOLD)
    two_tiers = make_agent(
        boards=[board],
        cascade=[
            {"provider": "simulated", "model": "sim-small", "threshold": 0.8},
            {"provider": "simulated", "model": "sim-large"},
        ],
    )

    claims = pull(board)

    assert len(claims) == THRESHOLD
    assert {Task.objects.get(pk=c.task_id).agent_id for c in claims} == {two_tiers.pk}


@pytest.mark.django_db
def test_an_answer_from_the_model_resets_its_error_count(model_threshold, board):
    make_agent(boards=[board], max_attempts=50, concurrency=10)
    _model_errors(board, THRESHOLD - 1)
    task, claim = claim_one(board, input="answered")

    assert complete(claim, cost="0.001")

    breaker = CircuitBreaker.objects.get(key="simulated/sim-small")
    assert (breaker.state, breaker.consecutive_failures) == (State.CLOSED, 0)


@pytest.mark.django_db
def test_a_completed_batch_resets_its_agents_and_models_breakers_from_one_read(model_threshold, board):
    # Two boards, each an agent and its model with errors counted; one batch
    # completes a run of each: the breakers to reset are read in one statement,
    # and each board's model breaker is reset by its own board's answer only.
    elsewhere = make_board()
    near = make_agent(boards=[board], name="near", max_attempts=50, breaker_threshold=10)
    far = make_agent(boards=[elsewhere], name="far", max_attempts=50, breaker_threshold=10)
    idle = make_board()
    make_agent(boards=[idle], name="idle", max_attempts=50, breaker_threshold=10)
    for each in (board, elsewhere, idle):
        _model_errors(each, THRESHOLD - 1)
    breakers = CircuitBreaker.objects.all()
    assert sorted((b.scope, b.consecutive_failures) for b in breakers) == sorted(
        [(CircuitBreaker.Scope.AGENT, THRESHOLD - 1), (CircuitBreaker.Scope.MODEL, THRESHOLD - 1)] * 3
    )
    _, near_claim = claim_one(board, input="answered near")
    _, far_claim = claim_one(elsewhere, input="answered far")
    answered = (model_call(cost="0.001", confidence=PASSING),)
    results = [
        services.RunResult(task_id=claim.task_id, lease_token=claim.lease_token, output=_output(*answered))
        for claim in (near_claim, far_claim)
    ]

    with CaptureQueriesContext(connection) as queries:
        assert services.tasks_complete(results=results) == [True, True]

    # The reads of the breakers with something to reset (then each one reset is
    # locked by its own read, as before).
    to_reset = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT")
        and 'FROM "andon_circuitbreaker"' in q["sql"]
        and '"andon_circuitbreaker"."consecutive_failures" = ' in q["sql"].partition("WHERE")[2]
    ]
    assert len(to_reset) == 1, to_reset
    reset = {(b.scope, b.agent_id, b.board_id) for b in CircuitBreaker.objects.filter(consecutive_failures=0)}
    assert reset == {
        (CircuitBreaker.Scope.AGENT, near.pk, None),
        (CircuitBreaker.Scope.AGENT, far.pk, None),
        (CircuitBreaker.Scope.MODEL, None, board.pk),
        (CircuitBreaker.Scope.MODEL, None, elsewhere.pk),
    }
    # The idle board's agent and model keep their counts.
    assert CircuitBreaker.objects.filter(consecutive_failures=THRESHOLD - 1).count() == 2


@pytest.mark.django_db
def test_after_the_models_cooldown_its_agents_pull_again(model_threshold, board):
    make_agent(boards=[board], max_attempts=50)
    _model_errors(board, THRESHOLD)
    assert pull(board) == []

    _age(CircuitBreaker.objects.get(key="simulated/sim-small"))

    # One task first, whose run probes the model: not a batch of runs that would
    # each fail an attempt on a refused call.
    [probe] = pull(board)
    assert pull(board) == []
    assert complete(probe, cost="0.001")  # the model answered: its breaker closes

    assert len(pull(board)) == THRESHOLD - 1


@pytest.mark.django_db
def test_while_a_models_probe_call_is_in_flight_its_agents_pull_nothing(model_threshold, board):
    make_agent(boards=[board])
    _tasks(board, 1)
    breaker = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key="simulated/sim-small",
        state=State.HALF_OPEN,
        opened_at=timezone.now() - timedelta(seconds=3 * COOLDOWN),
        probe_started_at=timezone.now(),
    )

    # Every call but the probe is refused meanwhile: a run could only fail.
    assert pull(board) == []

    _age(breaker, field="probe_started_at")
    assert len(pull(board)) == 1


@pytest.mark.django_db
def test_model_call_allowed_does_not_refuse_a_model_whose_breaker_closed_since_it_was_read(
    model_threshold, board
):
    breaker = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key="simulated/sim-small",
        state=State.OPEN,
        opened_at=timezone.now() - timedelta(seconds=COOLDOWN + 1),
    )
    assert (board.pk, "simulated/sim-small") in jidoka.open_models.get()  # read, and cached for a second
    # An answer in another process closes it.
    CircuitBreaker.objects.filter(pk=breaker.pk).update(
        state=State.CLOSED, consecutive_failures=0, opened_at=None
    )

    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is True
    assert CircuitBreaker.objects.get(pk=breaker.pk).state == State.CLOSED


@pytest.mark.django_db
def test_model_call_allowed_lets_one_probe_through_after_the_cooldown(model_threshold, board):
    breaker = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key="simulated/sim-small",
        state=State.OPEN,
        opened_at=timezone.now(),
    )
    assert jidoka.model_call_allowed("simulated", "sim-large", board_id=board.pk) is True
    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is False

    _age(breaker)
    jidoka.open_models.clear()

    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is True
    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is False
    breaker.refresh_from_db()
    assert breaker.state == State.HALF_OPEN and breaker.probe_started_at is not None


@pytest.mark.django_db
def test_a_model_probe_that_never_reports_back_is_given_up_after_the_cooldown(model_threshold, board):
    breaker = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key="simulated/sim-small",
        state=State.HALF_OPEN,
        opened_at=timezone.now() - timedelta(seconds=3 * COOLDOWN),
        probe_started_at=timezone.now(),
    )
    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is False

    _age(breaker, field="probe_started_at")
    jidoka.open_models.clear()

    assert jidoka.model_call_allowed("simulated", "sim-small", board_id=board.pk) is True


@pytest.mark.django_db
def test_a_failed_model_probe_opens_the_breaker_again_and_an_answer_closes_it(model_threshold, board):
    breaker = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key="simulated/sim-small",
        state=State.HALF_OPEN,
        consecutive_failures=THRESHOLD,
        opened_at=timezone.now() - timedelta(seconds=3 * COOLDOWN),
        probe_started_at=timezone.now(),
    )

    assert jidoka.record_model_calls([model_call(error="still down")], board_id=board.pk) == {
        "simulated/sim-small"
    }
    breaker.refresh_from_db()
    assert breaker.state == State.OPEN and breaker.probe_started_at is None

    assert jidoka.record_model_calls([model_call()], board_id=board.pk) == {"simulated/sim-small"}
    breaker.refresh_from_db()
    assert (breaker.state, breaker.consecutive_failures) == (State.CLOSED, 0)


# --- the agents strip ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_agents_strip_shows_breakers_that_are_not_closed_and_no_closed_one(board, flaky, client, user):
    # A closed breaker row (the agent recovered) was shown as "breaker closed":
    # setting the reverse one-to-one to None did not stick, and reading it
    # fetched the row.
    breaker = _open_breaker(board)
    steady = make_agent(boards=[board], name="steady")
    CircuitBreaker.objects.create(scope=CircuitBreaker.Scope.AGENT, agent=steady, state=State.CLOSED)
    CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL, board=board, key="simulated/sim-small", state=State.CLOSED
    )

    agents = {agent.name: agent for agent in board_agents_get(board=board)}
    client.force_login(user)
    html = client.get(board.get_absolute_url()).content.decode()

    assert agents[flaky.name].breaker == breaker
    assert agents[flaky.name].model_breakers == []
    assert "breaker open" in html
    assert "breaker closed" not in html
