"""The andon inbox page: open escalations, newest first, with what a reviewer needs
to decide each; filters; the figures and the line-stop banner; reviewers only;
a bounded number of queries."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from andon import services as andon_services
from andon.models import Escalation
from boards import services
from boards.models import Agent, Board, Column
from tests.andon.helpers import DEFECTIVE, claim_one, complete
from tests.factories import HTMX, column, make_agent, make_board, make_reviewer, make_user

pytestmark = pytest.mark.django_db

URL = "/andon/"
NEVER = [{"check": "regex", "name": "has-part-number", "must_match": "NEVER-MATCHES"}]


def line(*, name: str | None = None, checks: list[dict] | None = None, **agent_fields) -> tuple[Board, Agent]:
    """A board whose agent's every output is a defect (its check never matches),
    with room in Review and no defect-spike stop to get in the way."""
    board = make_board(name=name)
    review = column(board, Column.Role.REVIEW)
    review.wip_limit = None
    review.save()
    agent = make_agent(
        boards=[board],
        quality_checks=checks if checks is not None else NEVER,
        spike_defects=1000,
        spike_window=1000,
        **agent_fields,
    )
    return board, agent


def escalate(board: Board, title: str = "Inspect part 7", *, cost: str | None = "0.0012") -> Escalation:
    """Run a task of ``board`` to a defect through the real completion: its escalation."""
    task, claim = claim_one(board, title=title, input=f"input of {title}")
    assert complete(claim, confidence=DEFECTIVE, cost=cost)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def rows(html: str) -> list[str]:
    """The titles of the inbox's rows, in order."""
    return re.findall(r'class="escalation-title"[^>]*>\s*<a href="[^"]*">([^<]+)</a>', html)


def test_anonymous_users_are_sent_to_log_in(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_a_user_who_is_not_a_reviewer_gets_403(client):
    client.force_login(make_user())

    assert client.get(URL).status_code == 403


def test_a_superuser_is_a_reviewer(client):
    client.force_login(make_user(is_superuser=True))

    assert client.get(URL).status_code == 200


def test_its_count_is_red_only_while_something_waits(client, ana):
    client.force_login(ana)
    empty = client.get(URL).content.decode()
    board, _ = line()
    escalate(board)
    waiting = client.get(URL).content.decode()

    assert '<span class="inbox-count inbox-count--none" id="inbox-count" aria-live="off">0</span>' in empty
    assert '<span class="inbox-count" id="inbox-count" aria-live="off">1</span>' in waiting


def test_it_lists_open_escalations_newest_first(client, ana):
    board, _ = line()
    escalate(board, "First")
    escalate(board, "Second")
    escalate(board, "Third")
    client.force_login(ana)

    response = client.get(URL)

    assert response.status_code == 200
    assert rows(response.content.decode()) == ["Third", "Second", "First"]


def test_decided_escalations_are_not_listed(client, ana):
    board, _ = line()
    decided = escalate(board, "Decided")
    escalate(board, "Still open")
    andon_services.escalation_approve(escalation=decided, user=ana)
    client.force_login(ana)

    assert rows(client.get(URL).content.decode()) == ["Still open"]


def test_the_title_counts_the_items_shown(client, ana):
    board, _ = line()
    for title in ("A", "B", "C"):
        escalate(board, title)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    assert "<title>(3) Andon inbox · Kaizen</title>" in html


def test_the_title_counts_only_what_the_filters_show(client, ana):
    board, _ = line()
    other, _ = line()
    escalate(board, "Mine")
    escalate(other, "Elsewhere")
    client.force_login(ana)

    html = client.get(URL, {"board": board.pk}).content.decode()

    assert "<title>(1) Andon inbox · Kaizen</title>" in html


def test_it_filters_by_board(client, ana):
    welds, _ = line(name="Welds")
    paint, _ = line(name="Paint")
    escalate(welds, "Weld seam")
    escalate(paint, "Paint run")
    client.force_login(ana)

    html = client.get(URL, {"board": welds.pk}).content.decode()

    assert rows(html) == ["Weld seam"]
    assert f'<option value="{welds.pk}" selected>Welds</option>' in html


def test_it_filters_by_agent(client, ana):
    board = make_board()
    review = column(board, Column.Role.REVIEW)
    review.wip_limit = None
    review.save()
    first = make_agent(boards=[board], quality_checks=NEVER, capabilities=["weld"], name="welder")
    make_agent(boards=[board], quality_checks=NEVER, capabilities=["paint"], name="painter")
    for title, capability in (("Weld seam", "weld"), ("Paint run", "paint")):
        services.task_create(board=board, title=title, input=title, capability=capability)
    for claim in services.board_pull(board_id=board.pk):
        complete(claim, confidence=DEFECTIVE)
    client.force_login(ana)

    html = client.get(URL, {"agent": first.pk}).content.decode()

    assert rows(html) == ["Weld seam"]


def test_it_filters_by_failed_check(client, ana):
    regex_board, _ = line()
    confident_board, _ = line(checks=[{"check": "confidence", "min": 0.7}])
    escalate(regex_board, "No part number")
    escalate(confident_board, "Unsure")
    client.force_login(ana)

    html = client.get(URL, {"check": "confidence"}).content.decode()

    assert rows(html) == ["Unsure"]
    assert '<option value="confidence" selected>confidence</option>' in html
    assert '<option value="has-part-number">has-part-number</option>' in html


def test_a_filter_that_is_not_a_number_is_ignored(client, ana):
    board, _ = line()
    escalate(board, "Shown")
    client.force_login(ana)

    response = client.get(URL, {"board": "welds"})

    assert response.status_code == 200
    assert rows(response.content.decode()) == ["Shown"]


def test_the_filter_form_works_without_javascript_and_is_boosted(client, ana):
    client.force_login(ana)

    html = client.get(URL).content.decode()

    form = re.search(r'<form class="inbox-filters"[^>]*>', html).group(0)
    assert 'method="get"' in form and f'action="{URL}"' in form
    assert 'hx-boost="true"' in form


def test_the_websocket_url_carries_the_filters(client, ana):
    board, agent = line()
    client.force_login(ana)

    html = client.get(
        URL, {"board": board.pk, "agent": agent.pk, "check": "has-part-number"}
    ).content.decode()

    assert f'ws-connect="/ws/andon/?board={board.pk}&amp;agent={agent.pk}&amp;check=has-part-number"' in html


def test_the_catch_up_url_carries_the_filters(client, ana):
    board, _ = line()
    client.force_login(ana)

    html = client.get(URL, {"board": board.pk}).content.decode()

    assert f'data-live-url="{reverse("andon-inbox-live")}?board={board.pk}"' in html


def test_a_row_shows_what_the_reviewer_needs_to_decide(client, ana):
    board, agent = line(name="Welds")
    escalation = escalate(board, "Weld seam 12", cost="0.0012")
    client.force_login(ana)

    html = client.get(URL).content.decode()

    row = html[html.index(f'<li id="escalation-{escalation.pk}"') :]
    assert f'href="{escalation.task.get_absolute_url()}">Weld seam 12</a>' in row
    assert "Welds" in row
    assert agent.name in row
    assert '<span class="badge badge--sim"' in row
    assert "input of Weld seam 12" in row
    assert escalation.output in row
    assert "<strong>has-part-number</strong>" in row
    assert "does not match /NEVER-MATCHES/" in row
    assert "20%" in row and "(simulated)" in row
    assert "$0.001200" in row
    assert "sim-small" in row and "attempt 1, tier 1" in row
    assert "1 defect in its last 1 output (100%)" in row
    assert "Unclaimed" in row


def test_a_row_says_who_claimed_it(client, ana):
    board, _ = line()
    escalation = escalate(board)
    bob = make_reviewer(username="bob")
    andon_services.escalation_claim(escalation=escalation, user=bob)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    assert "Claimed by <strong>bob</strong>" in html
    assert "is-mine" not in html
    assert "Take over" in html


def test_a_row_claimed_by_the_reader_offers_release(client, ana):
    board, _ = line()
    escalation = escalate(board)
    andon_services.escalation_claim(escalation=escalation, user=ana)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    assert re.search(r'<li id="escalation-\d+"\s+class="escalation is-mine"', html)
    assert 'name="release" value="1"' in html


def test_each_row_has_forms_that_work_without_javascript(client, ana):
    board, _ = line()
    escalation = escalate(board)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    for name in ("claim", "approve", "correct", "reject"):
        url = reverse(f"andon-escalation-{name}", kwargs={"pk": escalation.pk})
        assert f'action="{url}"' in html
        assert f'hx-post="{url}"' in html
    assert html.count('name="csrfmiddlewaretoken"') >= 4
    # The edit field starts with the agent's output.
    assert re.search(r'<textarea id="escalation-\d+-output"[^>]*>' + re.escape(escalation.output), html)


def test_it_shows_the_figures_against_the_target(client, ana):
    board, _ = line()
    escalate(board)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    stats = html[html.index('id="inbox-stats"') :]
    assert "<dt>Open</dt><dd>1</dd>" in stats
    assert "100%" in stats and "1 of 1 outputs" in stats
    assert "over the 5% target" in stats
    assert "metric--over" in stats
    assert "Median time to decision" in stats and "p90 time to decision" in stats


def test_it_shows_the_time_to_decision(client, ana):
    board, _ = line()
    andon_services.escalation_approve(escalation=escalate(board), user=ana)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    assert re.search(r"<dt>Median time to decision</dt><dd>\d+ s</dd>", html)


def test_it_shows_active_line_stops_with_a_link_to_restart(client, ana):
    board, _ = line(name="Welds")
    stop = andon_services.line_stop(user=ana, board=board, reason="porosity everywhere")
    client.force_login(ana)

    html = client.get(URL).content.decode()

    banner = html[html.index('id="inbox-banner"') :]
    assert "The line is stopped for board Welds." in banner
    assert "porosity everywhere" in banner
    assert f'href="{reverse("andon-line-stops")}#stop-{stop.pk}"' in banner


def test_the_nav_links_to_the_inbox_for_reviewers_only(client, ana):
    client.force_login(ana)
    assert f'href="{URL}"' in client.get(reverse("boards-list")).content.decode()

    client.force_login(make_user())
    assert f'href="{URL}"' not in client.get(reverse("boards-list")).content.decode()


def test_the_query_count_does_not_grow_with_the_number_of_escalations(
    client, ana, django_assert_max_num_queries
):
    board, _ = line()
    client.force_login(ana)
    escalate(board, "first")
    with CaptureQueriesContext(connection) as few:
        client.get(URL)

    for i in range(12):
        escalate(board, f"more {i}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(URL)
    assert len(rows(response.content.decode())) == 13


def test_the_live_part_is_the_list_with_the_figures_and_banner_out_of_band(client, ana):
    board, _ = line()
    escalate(board, "Caught up")
    client.force_login(ana)

    html = client.get(reverse("andon-inbox-live"), headers=HTMX).content.decode()

    assert html.lstrip().startswith('<ol id="escalation-list"')
    assert rows(html) == ["Caught up"]
    assert re.search(r'id="inbox-stats"[^>]*hx-swap-oob="outerHTML"', html)
    assert re.search(r'id="inbox-banner"[^>]*hx-swap-oob="outerHTML"', html)
    assert "<html" not in html


def test_the_live_part_is_for_reviewers_only(client):
    client.force_login(make_user())

    assert client.get(reverse("andon-inbox-live")).status_code == 403
