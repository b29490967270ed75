"""Every place that shows an output says "simulated" when the simulated model wrote it:
its text carries no "[simulated]" prefix any more (it broke JSON checks), so the
task page, the escalation page and the andon inbox badge the output itself."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from andon.models import Escalation
from boards import services
from boards.agents import runtime
from boards.models import Task
from tests.factories import make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db

OUTPUT_BADGE = re.compile(
    r'<h[23][^>]*>(?:The agent\'s output|Output)\s*<span class="badge badge--sim"[^>]*>simulated</span>'
)


def _escalated_simulated_run() -> Task:
    """A task run by the simulated model whose output stops in Review: a confidence
    floor it never reaches (its confidence stays below 1)."""
    board = make_board()
    make_agent(boards=[board], quality_checks=[{"check": "confidence", "min": 1.0}])
    task = services.task_create(board=board, title="Classify a message", input="Do you ship to Iceland?")
    [claim] = services.board_pull(board_id=board.pk)
    runtime.run(claim.task_id, str(claim.lease_token))
    task.refresh_from_db()
    assert task.status == Task.Status.REVIEW
    assert task.output and "[simulated" not in task.output
    return task


def test_the_task_page_badges_a_simulated_output(client):
    task = _escalated_simulated_run()
    client.force_login(make_reviewer())

    html = client.get(task.get_absolute_url()).content.decode()

    assert OUTPUT_BADGE.search(html)


def test_the_escalation_page_and_the_inbox_badge_a_simulated_output(client):
    task = _escalated_simulated_run()
    escalation = Escalation.objects.get(task=task)
    assert escalation.confidence_source == "simulated"
    client.force_login(make_reviewer())

    page = client.get(escalation.get_absolute_url()).content.decode()
    inbox = client.get(reverse("andon-inbox")).content.decode()

    assert OUTPUT_BADGE.search(page)
    assert OUTPUT_BADGE.search(inbox)


def test_an_output_from_elsewhere_is_not_badged_simulated(client, user):
    board = make_board(backlog=False)
    # A custom agent's or a real model's output: not written by the simulated model.
    make_agent(boards=[board], quality_checks=[])
    task = services.task_create(board=board, title="Write it", input="The brief")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_complete(
        task_id=task.pk, lease_token=claim.lease_token, output="The answer", confidence=0.91
    )
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    assert "The answer" in html
    assert not OUTPUT_BADGE.search(html)
