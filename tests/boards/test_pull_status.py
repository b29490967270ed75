"""The flow status: whenever agents are not pulling while Ready has work, the board
says why, rule by rule as the pull decides (boards.selectors.board_pull_status_get).

Boards here have no Backlog, so what waits in Ready is what the pull sees: the
status read before a pull must predict exactly what that pull claims."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from andon.models import CircuitBreaker, LineStop
from boards import services
from boards.models import Column, Task
from boards.selectors import HoldLevel, board_columns_get, board_pull_status_get
from tests.andon.helpers import escalate
from tests.factories import column, make_agent, make_board, open_model_breaker

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_open_breakers")]

Role = Column.Role


def _ready(board, n: int, *, capability: str = "", prefix: str = "task") -> list[Task]:
    """``n`` tasks in Ready asking for ``capability``, set after intake: the
    intake refuses a capability no agent offers, which a board can come to
    (an agent leaves, or changes what it offers) with the tasks still waiting."""
    tasks = [
        services.task_create(board=board, title=f"{prefix} {i}", input=f"{prefix} {i}") for i in range(n)
    ]
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(capability=capability)
    return tasks


def _status(board):
    status = board_pull_status_get(board=board)
    columns = board_columns_get(board=board)
    status.explain_cards(columns)
    cards = {card.pk: card for view in columns for card in view.cards if view.column.role == Role.READY}
    return status, cards


def _kinds(status) -> list[str]:
    return [hold.kind for hold in status.holds]


def _hold(status, kind: str):
    return next(hold for hold in status.holds if hold.kind == kind)


def test_nothing_waiting_is_idle_and_says_nothing_is_wrong():
    board = make_board(backlog=False)
    make_agent(boards=[board])

    status, _ = _status(board)

    assert status.state == "idle"
    assert status.waiting == 0
    assert not [h for h in status.holds if h.level == HoldLevel.STOP]


def test_work_an_agent_can_take_is_flowing_and_its_cards_wait_for_nothing():
    board = make_board(backlog=False, doing_limit=2)
    make_agent(boards=[board], concurrency=5)
    first, second, third = _ready(board, 3)

    status, cards = _status(board)

    assert status.state == "flowing"
    # In progress has room for two: the third waits its turn, as the pull would leave it.
    assert cards[first.pk].pull_hold == "" and cards[second.pk].pull_hold == ""
    assert cards[third.pk].pull_hold_level == HoldLevel.BUSY
    assert {c.task_id for c in services.board_pull(board_id=board.pk)} == {first.pk, second.pk}


def test_a_paused_board_says_so():
    board = make_board(backlog=False)
    make_agent(boards=[board])
    [task] = _ready(board, 1)
    services.board_set_paused(board=board, paused=True)
    board.refresh_from_db()

    status, cards = _status(board)

    assert status.state == "stalled"
    assert _kinds(status)[0] == "paused"
    assert "paused" in cards[task.pk].pull_hold


def test_a_hard_review_limit_reached_says_decisions_are_needed_with_a_link_to_the_inbox(board):
    review = column(board, Role.REVIEW)
    review.wip_limit, review.hard_limit = 2, True
    review.save()
    make_agent(boards=[board], concurrency=10)
    escalate(board, input="first")
    escalate(board, input="second")
    services.task_create(board=board, title="waiting", input="third")
    services.board_pull(board_id=board.pk)

    status, _ = _status(board)

    assert status.state == "stalled"
    hold = _hold(status, "review_full")
    assert hold.text == "Waiting for review: Review is full (2/2), 2 decisions are needed in the andon inbox."
    assert hold.url == f"{reverse('andon-inbox')}?board={board.pk}"
    assert status.board_hold == hold


def test_a_soft_review_limit_passed_is_a_signal_and_the_line_keeps_flowing(board):
    review = column(board, Role.REVIEW)
    review.wip_limit, review.hard_limit = 1, False
    review.save()
    make_agent(boards=[board], concurrency=10)
    escalate(board, input="first")
    escalate(board, input="second")
    services.task_create(board=board, title="waiting", input="third")

    status, _ = _status(board)

    hold = _hold(status, "review_over")
    assert hold.level == HoldLevel.SIGNAL
    assert hold.text.startswith("Review is over its soft limit by 1 (2/1): 2 decisions are needed")
    assert hold.url == f"{reverse('andon-inbox')}?board={board.pk}"
    assert status.board_hold is None
    assert len(services.board_pull(board_id=board.pk)) == 1


def test_no_agent_serving_the_board_says_so():
    board = make_board(backlog=False)
    [task] = _ready(board, 1)

    status, cards = _status(board)

    assert status.state == "stalled"
    assert _kinds(status) == ["no_agents"]
    assert cards[task.pk].pull_hold == "Waits: no agent serves this board."


def test_every_agent_paused_says_so():
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="Sleepy")
    services.agent_set_paused(agent=agent, paused=True)
    _ready(board, 1)

    status, _ = _status(board)

    assert status.state == "stalled"
    assert "agents_paused" in _kinds(status)
    assert "Sleepy is paused" in _hold(status, "agent_paused").text


def test_the_line_stopped_on_the_board_says_why_and_links_the_line_stops():
    board = make_board(backlog=False)
    make_agent(boards=[board])
    _ready(board, 1)
    stop = LineStop.objects.create(board=board, kind=LineStop.Kind.CORD, reason="prices look wrong")

    status, _ = _status(board)

    assert status.state == "stalled"
    hold = _hold(status, "line_stopped")
    assert hold.text == "The line is stopped: prices look wrong. A reviewer restarts it from the andon."
    assert hold.url == f"{reverse('andon-line-stops')}#line-stop-{stop.pk}"


def test_an_agent_stopped_by_a_defect_spike_says_why_and_where_to_restart_it():
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="Spiky")
    [task] = _ready(board, 1)
    stop = LineStop.objects.create(
        agent=agent,
        kind=LineStop.Kind.DEFECT_SPIKE,
        reason="defect spike: 3 defects in Spiky's last 10 outputs",
    )

    status, cards = _status(board)

    assert status.state == "stalled"
    hold = _hold(status, "agent_stopped")
    assert (
        hold.text
        == "Spiky stopped: defect spike: 3 defects in Spiky's last 10 outputs. Restart it from the andon."
    )
    assert hold.url.endswith(f"#line-stop-{stop.pk}")
    assert cards[task.pk].pull_hold == "Waits: Spiky is stopped."


def test_an_open_agent_breaker_says_until_when():
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="Flaky", breaker_cooldown_seconds=600)
    _ready(board, 1)
    opened = timezone.now()
    CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.AGENT,
        agent=agent,
        state=CircuitBreaker.State.OPEN,
        consecutive_failures=5,
        opened_at=opened,
    )

    status, _ = _status(board)

    assert status.state == "stalled"
    until = timezone.localtime(opened + timedelta(seconds=600)).strftime("%H:%M")
    assert (
        _hold(status, "breaker_open").text
        == f"Flaky's breaker is open until {until} (5 failed attempts in a row)."
    )


def test_every_model_of_an_agent_out_of_service_says_so():
    board = make_board(backlog=False)
    make_agent(boards=[board], name="Cut off", model="sim-small")
    _ready(board, 1)
    open_model_breaker(board, "sim-small", failures=9)

    status, _ = _status(board)

    assert status.state == "stalled"
    text = _hold(status, "breaker_open").text
    assert text.startswith("Cut off's models are out of service: breaker open for simulated/sim-small until ")


def test_a_capability_no_agent_offers_says_so_on_the_status_and_the_card():
    board = make_board(backlog=False)
    make_agent(boards=[board], capabilities=["writing"])
    [photo] = _ready(board, 1, capability="vision")

    status, cards = _status(board)

    assert status.state == "stalled"
    assert (
        _hold(status, "no_capability").text
        == "No agent on this board offers capability “vision”: 1 task waits for one."
    )
    assert cards[photo.pk].pull_hold == "Waits: no agent on this board offers “vision”."


def test_work_only_a_stopped_agent_can_do_is_stalled_while_the_rest_flows():
    board = make_board(backlog=False)
    seer = make_agent(boards=[board], name="Seer", capabilities=["vision"])
    make_agent(boards=[board], name="Writer", capabilities=["writing"])
    LineStop.objects.create(agent=seer, kind=LineStop.Kind.CORD, reason="blurry")
    [photo] = _ready(board, 1, capability="vision", prefix="photo")
    [letter] = _ready(board, 1, capability="writing", prefix="letter")

    status, cards = _status(board)

    assert status.state == "flowing"
    assert _hold(status, "capability_held").level == HoldLevel.STOP
    assert cards[photo.pk].pull_hold == "Waits: Seer is stopped."
    assert cards[letter.pk].pull_hold == ""


def test_in_progress_full_is_busy_not_a_stall():
    board = make_board(backlog=False, doing_limit=1)
    make_agent(boards=[board], concurrency=5)
    _ready(board, 2)
    services.board_pull(board_id=board.pk)

    status, cards = _status(board)

    assert status.state == "busy"
    hold = _hold(status, "in_progress_full")
    assert hold.level == HoldLevel.BUSY
    assert hold.text.startswith("In progress is full (1/1)")
    assert [c.pull_hold for c in cards.values()] == ["Waits its turn: In progress is full (1/1)."]


def test_every_agent_at_its_concurrency_is_busy():
    board = make_board(backlog=False, doing_limit=None)
    make_agent(boards=[board], name="Solo", concurrency=1)
    _ready(board, 2)
    services.board_pull(board_id=board.pk)

    status, _ = _status(board)

    assert status.state == "busy"
    assert _hold(status, "agents_busy").text == "Every agent is busy: Solo is busy (1/1 running)."


def test_a_board_without_a_done_column_says_agents_pull_nothing():
    board = make_board(backlog=False)
    make_agent(boards=[board])
    _ready(board, 1)
    column(board, Role.DONE).delete()

    status, _ = _status(board)

    assert status.state == "stalled"
    assert _hold(status, "columns").text.startswith("The board has no Done column, so agents pull nothing")


def test_a_blocked_card_says_agents_skip_it():
    board = make_board(backlog=False)
    make_agent(boards=[board])
    [task] = _ready(board, 1)
    services.task_block(task=task, user=None, note="waiting for data")

    status, cards = _status(board)

    assert status.state == "idle"
    assert cards[task.pk].pull_hold == "Blocked: agents skip it until it is unblocked."


# --- the status and the pull agree --------------------------------------------------


def _random_line(rng: random.Random, n: int):
    """A board in a random state: limits, agents (paused, stopped, breakers, busy
    elsewhere), tasks asking for capabilities, some blocked, Review filling up."""
    board = make_board(
        name=f"Random line {n}",
        backlog=False,
        ready_limit=None,
        doing_limit=rng.choice([None, 1, 2, 4]),
        hard=rng.random() < 0.5,
    )
    review = column(board, Role.REVIEW)
    review.wip_limit = rng.choice([None, 1, 2])
    review.hard_limit = rng.random() < 0.5
    review.save()
    capabilities = ["vision", "writing", "maths"]
    agents = []
    for i in range(rng.randint(0, 3)):
        agent = make_agent(
            boards=[board],
            name=f"r{n}-agent-{i}",
            capabilities=rng.sample(capabilities, rng.randint(0, 2)),
            concurrency=rng.randint(1, 3),
            breaker_cooldown_seconds=60,
        )
        agents.append(agent)
        roll = rng.random()
        if roll < 0.15:
            services.agent_set_paused(agent=agent, paused=True)
        elif roll < 0.3:
            LineStop.objects.create(agent=agent, kind=LineStop.Kind.CORD, reason="random stop")
        elif roll < 0.45:
            # Open, and either cooling down or due a probe.
            opened = timezone.now() - timedelta(seconds=rng.choice([5, 120]))
            CircuitBreaker.objects.create(
                scope=CircuitBreaker.Scope.AGENT,
                agent=agent,
                state=CircuitBreaker.State.OPEN,
                consecutive_failures=5,
                opened_at=opened,
            )
    # Some work already under way, and some waiting for a review.
    for i in range(rng.randint(0, 3)):
        task = services.task_create(board=board, title=f"r{n} earlier {i}", input=f"r{n} earlier {i}")
        target = rng.choice([Role.IN_PROGRESS, Role.REVIEW])
        status = Task.Status.RUNNING if target == Role.IN_PROGRESS else Task.Status.REVIEW
        Task.objects.filter(pk=task.pk).update(
            column=column(board, target), status=status, agent=rng.choice(agents) if agents else None
        )
    if rng.random() < 0.15:
        LineStop.objects.create(board=board, kind=LineStop.Kind.CORD, reason="random board stop")
    if rng.random() < 0.1:
        services.board_set_paused(board=board, paused=True)
    for i in range(rng.randint(0, 6)):
        task = services.task_create(board=board, title=f"r{n} task {i}", input=f"r{n} task {i}")
        # Some were tried before (a failed attempt sent them back): a probe takes them last.
        tried = timezone.now() - timedelta(minutes=rng.randint(1, 30)) if rng.random() < 0.3 else None
        Task.objects.filter(pk=task.pk).update(
            capability=rng.choice(["", "", *capabilities]), started_at=tried
        )
        if rng.random() < 0.15:
            services.task_block(task=task, user=None, note="random block")
    board.refresh_from_db()
    return board


def test_the_status_predicts_exactly_what_the_pull_claims_and_a_pull_of_nothing_always_has_a_reason():
    rng = random.Random(20260610)
    stalls = 0
    for n in range(80):
        board = _random_line(rng, n)
        status, cards = _status(board)
        expected = {pk for pk, card in cards.items() if not card.pull_hold and card.blocked_at is None}

        claims = services.board_pull(board_id=board.pk)

        context = f"scenario {n}: {status.state} {[h.text for h in status.holds]}"
        assert {claim.task_id for claim in claims} == expected, context
        assert (status.state == "flowing") == bool(claims), context
        if not claims and status.waiting:
            stalls += 1
            assert status.state in ("stalled", "busy"), context
            reasons = [h for h in status.shown_holds if h.level in (HoldLevel.STOP, HoldLevel.BUSY)]
            assert reasons or status.board_hold is not None, context
            # Every waiting card says why it waits.
            assert all(card.pull_hold for card in cards.values()), context
    # The scenarios exercised the stalls, not only lines that flow.
    assert stalls >= 10


def test_ready_full_of_blocked_tasks_says_nothing_comes_in_from_the_backlog():
    board = make_board(ready_limit=2)
    make_agent(boards=[board])
    for task in [services.task_create(board=board, title=f"stuck {i}") for i in range(3)]:
        services.task_block(task=task, user=None, note="waiting for parts")
    ready = column(board, Role.READY)
    for task in Task.objects.filter(title__in=["stuck 0", "stuck 1"]):
        services.task_move(task=task, to_column=ready, user=None)
    services.task_unblock(task=Task.objects.get(title="stuck 2"), user=None)
    services.board_pull(board_id=board.pk)

    status, _ = _status(board)

    assert status.state == "stalled"
    assert _hold(status, "ready_blocked").text == (
        "Ready is full (2/2) of blocked tasks, so no work comes in from the Backlog: unblock one, or move it back."
    )


def test_while_a_breaker_probes_the_cards_say_untried_work_goes_first():
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="Probing", breaker_cooldown_seconds=60)
    tried, fresh = _ready(board, 2)
    Task.objects.filter(pk=tried.pk).update(started_at=timezone.now() - timedelta(minutes=5))
    CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.AGENT,
        agent=agent,
        state=CircuitBreaker.State.OPEN,
        consecutive_failures=5,
        opened_at=timezone.now() - timedelta(minutes=2),
    )

    status, cards = _status(board)

    # One probe task, and not the one tried last (andon.jidoka.PullGate.candidate_order).
    assert cards[fresh.pk].pull_hold == ""
    assert (
        cards[tried.pk].pull_hold
        == "Waits its turn: a circuit breaker lets one probe task through at a time."
    )
    assert [c.task_id for c in services.board_pull(board_id=board.pk)] == [fresh.pk]
