"""The budgets pages and forms, the budget banners on the board and in the
inbox, and acknowledging an andon alert (reviewers only, with CSRF)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from andon import budget_services, budgets
from andon.models import Alert, AndonRecord, Budget, BudgetPeriod
from boards import services
from tests.andon.helpers import pull
from tests.andon.test_budgets import call, feed, finish
from tests.factories import make_agent, make_board, make_reviewer, make_user, make_user_with

pytestmark = pytest.mark.django_db

BUDGETS = "/andon/budgets/"
INBOX = "/andon/"


@pytest.fixture
def keeper(db):
    return make_user_with("andon.add_budget", "andon.change_budget", "andon.delete_budget")


def _form(**fields) -> dict:
    return {
        "name": "Daily spend",
        "scope": "board",
        "unit": "usd",
        "period": "day",
        "limit": "10",
        "warn_percent": "80",
        **fields,
    }


def _warned(board, keeper, *, spend: str = "8.50") -> Budget:
    """A board budget of $10 a day with ``spend`` charged through the line."""
    make_agent(boards=[board], concurrency=1, name="welder")
    b = budget_services.budget_create(
        user=keeper, name="Daily spend", board=board, unit="usd", period="day", limit=Decimal("10")
    )
    feed(board, 1)
    [claim] = pull(board)
    finish(claim, call(cost=spend))
    return b


# --- the budgets page -------------------------------------------------------------


def test_a_keeper_creates_a_budget_from_the_page(client, keeper, board):
    client.force_login(keeper)

    response = client.post(f"{BUDGETS}?board={board.pk}", _form(board=board.pk))

    b = Budget.objects.get()
    assert (response.status_code, response.url) == (302, reverse("andon-budget", kwargs={"pk": b.pk}))
    assert (b.board, b.agent, b.limit, b.created_by) == (board, None, Decimal("10"), keeper)
    assert AndonRecord.objects.get().action == AndonRecord.Action.BUDGET_CREATED


def test_bad_input_is_shown_inline(client, keeper, board):
    client.force_login(keeper)

    response = client.post(BUDGETS, _form(limit="-1", scope="agent"))

    assert response.status_code == 422
    html = response.content.decode()
    assert "Choose the agent this budget limits." in html
    assert "Ensure this value is greater than or equal to 0.0001." in html
    assert not Budget.objects.exists()


def test_creating_needs_the_permission(client, board):
    client.force_login(make_reviewer())

    assert client.post(BUDGETS, _form(board=board.pk)).status_code == 403
    assert not Budget.objects.exists()


def test_the_form_needs_csrf(keeper, board):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(keeper)

    assert browser.post(BUDGETS, _form(board=board.pk)).status_code == 403


def test_a_keeper_raises_the_limit_on_the_budgets_page(client, keeper, board):
    b = _warned(board, keeper)
    client.force_login(keeper)

    response = client.post(reverse("andon-budget", kwargs={"pk": b.pk}), _form(board=board.pk, limit="17"))

    assert response.status_code == 302
    b.refresh_from_db()
    assert b.limit == Decimal("17")
    page = client.get(response.url).content.decode()
    assert "$8.50 of $17.00 spent (50%)" in page


def test_the_page_lists_spend_this_period_and_says_the_time_zone(client, keeper, board, settings):
    _warned(board, keeper)
    client.force_login(make_user())

    html = client.get(f"{BUDGETS}?board={board.pk}").content.decode()

    assert "$8.50" in html and "$10.00" in html and "85% (warning)" in html
    assert "calendar day, week (Monday to Sunday) or month" in html
    assert f'<span id="budget-tz">{settings.TIME_ZONE}</span>' in html
    assert "Create the budget" not in html  # no permission, no form


@pytest.mark.parametrize("n", [1, 6])
def test_the_budgets_page_answers_in_a_bounded_number_of_queries(
    client, keeper, n, django_assert_max_num_queries
):
    for i in range(n):
        board = make_board()
        agent = make_agent(boards=[board])
        budget_services.budget_create(
            user=keeper, name=f"B{i}", board=board, unit="usd", period="day", limit=Decimal("5")
        )
        budget_services.budget_create(
            user=keeper, name=f"A{i}", agent=agent, unit="tokens", period="month", limit=Decimal("500")
        )
    client.force_login(keeper)
    with django_assert_max_num_queries(12):
        assert client.get(BUDGETS).status_code == 200


# --- banners -----------------------------------------------------------------------


def test_the_board_shows_the_budget_warning(client, keeper, board):
    _warned(board, keeper)
    client.force_login(make_user())

    html = client.get(board.get_absolute_url()).content.decode()

    assert "Budget warning: Daily spend</strong>" in html
    assert "$8.50 of $10.00 spent" in html and "(85%) this day" in html
    period = BudgetPeriod.objects.get()
    assert f"the period ends {period.end:%Y-%m-%d %H:%M}" in html


def test_the_board_has_no_warning_below_the_level(client, keeper, board):
    _warned(board, keeper, spend="7.99")
    client.force_login(make_user())

    assert "Budget warning" not in client.get(board.get_absolute_url()).content.decode()


def test_the_inbox_shows_the_warning_and_the_alert(client, keeper, board):
    _warned(board, keeper)
    client.force_login(make_reviewer())

    html = client.get(INBOX).content.decode()

    assert "Budget warning: Daily spend</strong>" in html
    alert = Alert.objects.get()
    assert f'id="alert-{alert.pk}"' in html and "Daily spend: 80% of the budget spent" in html
    assert "Acknowledge" in html


# --- acknowledging an alert ------------------------------------------------------------


@pytest.fixture
def alert(board, keeper) -> Alert:
    _warned(board, keeper)
    return Alert.objects.get()


def _ack(alert: Alert) -> str:
    return reverse("andon-alert-acknowledge", kwargs={"pk": alert.pk})


def test_a_reviewer_acknowledges_an_alert(client, alert):
    reviewer = make_reviewer()
    client.force_login(reviewer)

    response = client.post(_ack(alert), {"next": INBOX})

    assert (response.status_code, response.url) == (302, INBOX)
    alert.refresh_from_db()
    assert alert.acknowledged_by == reviewer and alert.acknowledged_at is not None
    assert f'id="alert-{alert.pk}"' not in client.get(INBOX).content.decode()
    record = AndonRecord.objects.get(action=AndonRecord.Action.ALERT_ACKNOWLEDGED)
    assert (record.user, record.alert) == (reviewer, alert)


def test_with_htmx_the_answer_is_empty_and_the_page_deletes_the_row(client, alert):
    client.force_login(make_reviewer())

    response = client.post(_ack(alert), headers={"HX-Request": "true"})

    assert (response.status_code, response.content) == (200, b"")
    alert.refresh_from_db()
    assert not alert.is_open


def test_acknowledging_needs_the_reviewer_permission(client, alert, keeper):
    client.force_login(keeper)

    assert client.post(_ack(alert)).status_code == 403
    alert.refresh_from_db()
    assert alert.is_open


def test_acknowledging_needs_csrf(alert):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(make_reviewer())

    assert browser.post(_ack(alert)).status_code == 403
    alert.refresh_from_db()
    assert alert.is_open


def test_acknowledging_twice_changes_nothing(client, alert):
    first, second = make_reviewer(), make_reviewer()
    client.force_login(first)
    client.post(_ack(alert))
    client.force_login(second)

    client.post(_ack(alert))

    alert.refresh_from_db()
    assert alert.acknowledged_by == first
    assert AndonRecord.objects.filter(action=AndonRecord.Action.ALERT_ACKNOWLEDGED).count() == 1


def test_rendered_without_a_request_the_alert_form_has_no_token(alert):
    from django.template.loader import render_to_string

    html = render_to_string("andon/inbox.html#alert-row", {"alert": alert})

    assert "csrfmiddlewaretoken" not in html and f'hx-post="{_ack(alert)}"' in html


def test_the_board_status_names_the_budget(keeper, board):
    from boards.selectors import board_pull_status_get

    _warned(board, keeper, spend="10.00")
    services.task_create(board=board, title="Waiting", input="waiting")

    hold = board_pull_status_get(board=board).board_hold
    assert hold.kind == "budget"
    assert hold.text.startswith("Budget reached: Daily spend, $10.00 of $10.00 (100%) spent this day")
    assert budgets.budget_rules.get()[0].name == "Daily spend"


# --- the admin ------------------------------------------------------------------------


def test_a_budget_made_in_the_admin_goes_through_the_service(client, board):
    admin_user = make_user(is_staff=True, is_superuser=True)
    client.force_login(admin_user)

    response = client.post(
        "/admin/andon/budget/add/",
        {
            "name": "Admin budget",
            "board": board.pk,
            "unit": "tokens",
            "period": "week",
            "limit": "5000",
            "warn_percent": "90",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    b = Budget.objects.get()
    assert (b.name, b.unit, b.period, b.limit, b.created_by) == (
        "Admin budget",
        "tokens",
        "week",
        Decimal("5000"),
        admin_user,
    )
    assert AndonRecord.objects.get().action == AndonRecord.Action.BUDGET_CREATED

    response = client.post(
        f"/admin/andon/budget/{b.pk}/change/",
        {
            "name": "Admin budget",
            "board": board.pk,
            "unit": "tokens",
            "period": "week",
            "limit": "6000",
            "warn_percent": "90",
        },
    )
    assert response.status_code == 302
    changed = AndonRecord.objects.get(action=AndonRecord.Action.BUDGET_CHANGED)
    assert changed.data["changed"] == {"limit": ["5000", "6000"]}


def test_the_admin_refuses_a_budget_of_both_a_board_and_an_agent(client, board):
    client.force_login(make_user(is_staff=True, is_superuser=True))
    agent = make_agent(boards=[board])

    response = client.post(
        "/admin/andon/budget/add/",
        {
            "name": "Both",
            "board": board.pk,
            "agent": agent.pk,
            "unit": "usd",
            "period": "day",
            "limit": "5",
            "warn_percent": "80",
        },
    )

    assert response.status_code == 200 and not Budget.objects.exists()
