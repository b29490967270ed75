"""The task page: the task, its output, confidence and agent, and its history."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from boards import services
from boards.agents import runtime
from boards.models import ModelCall
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def test_it_redirects_anonymous_users_to_login(client, board):
    task = services.task_create(board=board, title="Private")
    response = client.get(task.get_absolute_url())
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_shows_the_output_confidence_agent_and_history(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], name="writer", model="sim-large")
    task = services.task_create(board=board, title="Write it", input="The brief", user=user)
    (claim,) = services.board_pull(board_id=board.pk)
    services.task_complete(
        task_id=task.pk, lease_token=claim.lease_token, output="The answer", confidence=0.91
    )
    client.force_login(user)

    response = client.get(task.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Write it</h1>" in html
    assert "The brief" in html
    assert "The answer" in html
    assert "91%" in html
    assert "writer" in html and "sim-large" in html
    assert '<span class="badge badge--sim">simulated</span>' in html
    # created by the user, claimed and completed by the agent, in order
    kinds = ["Created", "Claimed", "Completed"]
    positions = [html.index(f"<td>{kind}</td>") for kind in kinds]
    assert positions == sorted(positions)
    assert "Ready → In progress" in html
    assert "In progress → Done" in html
    assert f"{user.get_username()} <span" in html


def test_it_offers_block_and_move_forms_that_work_without_javascript(client, user, board):
    task = services.task_create(board=board, title="Plain")
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    assert f'action="{reverse("boards-task-block", kwargs={"slug": board.slug, "pk": task.pk})}"' in html
    assert f'action="{reverse("boards-task-move", kwargs={"slug": board.slug, "pk": task.pk})}"' in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_a_task_of_another_board_is_404(client, user, board):
    task = services.task_create(board=make_board(), title="Elsewhere")
    client.force_login(user)

    url = reverse("boards-task-detail", kwargs={"slug": board.slug, "pk": task.pk})
    assert client.get(url).status_code == 404


def _run(board, task):
    (claim,) = services.board_pull(board_id=board.pk)
    assert runtime.run(task.pk, str(claim.lease_token)) == "done"
    task.refresh_from_db()
    return task


CASCADE = [
    {"provider": "simulated", "model": "sim-small", "threshold": 0.999, "parameters": {"error_rate": 0}},
    {"provider": "simulated", "model": "sim-large", "parameters": {"error_rate": 0}},
]


def test_it_shows_the_ledger_totals_and_every_model_call(client, user):
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="writer", cascade=CASCADE)
    task = _run(board, services.task_create(board=board, title="Escalates", input="a hard one"))
    calls = list(ModelCall.objects.filter(task=task).order_by("pk"))
    assert [c.tier for c in calls] == [1, 2]
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    totals = re.search(r'<dl class="metrics" id="ledger-totals">(.*?)</dl>', html, re.S).group(1)
    assert f"<dt>Cost</dt><dd>${task.cost:.6f}</dd>" in totals
    assert "<dt>Model calls</dt><dd>2</dd>" in totals
    assert f"<dd>{task.tokens_in} / {task.tokens_out}</dd>" in totals
    assert "<dt>Tier taken</dt><dd>2</dd>" in totals
    assert f"<dt>Prompt version</dt><dd>{agent.prompt_version}</dd>" in totals
    rows = re.findall(r'<tr id="call-(\d+)" class="([^"]+)">(.*?)</tr>', html, re.S)
    assert [int(pk) for pk, _, _ in rows] == [c.pk for c in calls]
    (_, _, cheap), (_, taken_class, strong) = rows
    assert "sim-small" in cheap and "below threshold" in cheap and "badge--sim" in cheap
    assert "ledger-row--accepted" in taken_class and "sim-large" in strong and ">taken<" in strong
    assert f"${calls[1].cost:.6f}" in strong
    assert f"{calls[1].tokens_in} / {calls[1].tokens_out}" in strong
    assert "(simulated)" in strong  # the confidence's source
    assert f'<a href="{agent.get_absolute_url()}">writer</a>' in html


def test_a_failed_call_shows_its_error(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], error_rate=1.0, max_attempts=1)
    task = services.task_create(board=board, title="Unlucky")
    (claim,) = services.board_pull(board_id=board.pk)
    runtime.run(task.pk, str(claim.lease_token))
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    (row,) = re.findall(r'<tr id="call-\d+" class="[^"]*ledger-row--error[^"]*">(.*?)</tr>', html, re.S)
    assert "simulated error" in row
    assert ">failed<" in row


def test_a_reused_result_links_the_task_it_came_from(client, user):
    board = make_board(backlog=False)
    # No checks: the first result is done (and so reusable) whatever the model's draw.
    make_agent(boards=[board], error_rate=0.0, quality_checks=[])
    first = _run(board, services.task_create(board=board, title="First", input="same words"))
    second = _run(board, services.task_create(board=board, title="Second", input="same words"))
    assert second.reused_from_id == first.pk
    client.force_login(user)

    html = client.get(second.get_absolute_url()).content.decode()

    assert f'Reused the result of <a href="{first.get_absolute_url()}">task {first.pk}</a>' in html
    (row,) = re.findall(r'<tr id="call-\d+" class="ledger-row ledger-row--reuse[^"]*">(.*?)</tr>', html, re.S)
    assert "Reused result" in row and f'<a href="{first.get_absolute_url()}">task {first.pk}</a>' in row


def test_a_task_without_model_calls_says_so(client, user, board):
    task = services.task_create(board=board, title="Waiting")
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    assert "No model calls yet" in html
    assert 'id="ledger-totals"' not in html


def test_the_query_count_does_not_grow_with_the_ledger(client, user, django_assert_max_num_queries):
    board = make_board()
    agent = make_agent(boards=[board])
    earlier = services.task_create(board=board, title="Earlier")
    task = services.task_create(board=board, title="Busy")
    ModelCall.objects.bulk_create(
        ModelCall(
            task=task,
            board=board,
            agent=agent,
            attempt=1 + i // 10,
            tier=1,
            source=ModelCall.Source.REUSE if i % 3 == 0 else ModelCall.Source.MODEL,
            reused_from=earlier if i % 3 == 0 else None,
            provider="simulated",
            model="sim-small",
        )
        for i in range(60)
    )
    client.force_login(user)

    # +2: the nav asks for the user's permissions (the andon link is for reviewers only);
    # +2: the inspections and their escalations.
    with django_assert_max_num_queries(12):
        html = client.get(task.get_absolute_url()).content.decode()

    assert html.count('<tr id="call-') == 60


def test_the_ledger_shows_a_late_results_calls_as_stale_not_taken(client, user, board):
    from boards.agents import CallRecord, Output

    make_agent(boards=[board])
    task = services.task_create(board=board, title="Late", input="late answer")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="lease expired")
    call = CallRecord(source="model", tier=1, provider="simulated", model="sim-small", accepted=True)
    late = Output(text="late", confidence=0.9, tier=1, calls=(call,))
    assert services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output=late) is False
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    row = html[html.index(f'id="call-{ModelCall.objects.get(task=task).pk}"') :].split("</tr>")[0]
    assert "ledger-row--stale" in row
    assert "stale (late result ignored)" in row
    assert ">taken<" not in row
