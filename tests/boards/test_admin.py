"""The admin: pausing and resuming go through the services; saving a board's
columns or an agent sends the board to browsers and pulls; a board's columns
keep the line's rules; tasks are read-only.

Real commits, a real Redis (the Celery queue, the channel layer) and the real
ASGI application for the websocket, as in test_consumers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client
from django.urls import reverse, reverse_lazy

from boards import broadcast, services
from boards.models import Agent, Board, Column, Task
from kaizen_web.asgi import application
from tests.factories import column, make_agent, make_board
from tests.websockets import ORIGIN, WebsocketCommunicator

Role = Column.Role
Status = Task.Status


# --- helpers ---------------------------------------------------------------------


def _column_rows(board: Board) -> list[dict[str, Any]]:
    """The board's columns as the inline shows them."""
    return [
        {
            "id": c.pk,
            "board": board.pk,
            "position": c.position,
            "name": c.name,
            "role": c.role,
            "wip_limit": c.wip_limit,
            "hard_limit": c.hard_limit,
        }
        for c in board.columns.order_by("position", "pk")
    ]


def _new_rows(*specs: tuple[str, str, int | None]) -> list[dict[str, Any]]:
    """Rows for new columns, left to right: (name, role, WIP limit)."""
    return [
        {"position": i, "name": name, "role": role, "wip_limit": limit, "hard_limit": True}
        for i, (name, role, limit) in enumerate(specs)
    ]


def _board_form(board: Board | None, rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """What the board's change form (or, with ``board=None``, the add form) posts."""
    data: dict[str, Any] = {"name": "New line", "slug": "new-line", "description": "", "demo_tasks": "[]"}
    if board is not None:
        data.update(
            name=board.name,
            slug=board.slug,
            description=board.description,
            demo_tasks=json.dumps(board.demo_tasks),
        )
    data.update(fields)
    data.update(
        {
            "columns-TOTAL_FORMS": str(len(rows)),
            "columns-INITIAL_FORMS": str(sum(1 for row in rows if row.get("id"))),
            "columns-MIN_NUM_FORMS": "0",
            "columns-MAX_NUM_FORMS": "1000",
        }
    )
    for i, row in enumerate(rows):
        for key, value in row.items():
            if value is False:
                continue  # an unticked checkbox is not sent
            data[f"columns-{i}-{key}"] = "on" if value is True else "" if value is None else str(value)
    return data


def _agent_form(agent: Agent, **fields: Any) -> dict[str, Any]:
    """What the agent's change form posts."""
    data: dict[str, Any] = {
        "name": agent.name,
        "boards": [b.pk for b in agent.boards.all()],
        "capabilities": json.dumps(agent.capabilities),
        "prompt_template": agent.prompt_template,
        "prompt_variables": json.dumps(agent.prompt_variables),
        "parameters": json.dumps(agent.parameters),
        "cascade": json.dumps(agent.cascade),
        "reuse_results": "on" if agent.reuse_results else "",
        "cache_responses": "on" if agent.cache_responses else "",
        "implementation": agent.implementation,
        "concurrency": str(agent.concurrency),
        "max_attempts": str(agent.max_attempts),
        "quality_checks": json.dumps(agent.quality_checks),
        "breaker_threshold": str(agent.breaker_threshold),
        "breaker_cooldown_seconds": str(agent.breaker_cooldown_seconds),
        "spike_defects": str(agent.spike_defects),
        "spike_window": str(agent.spike_window),
    }
    data.update(fields)
    return data


def _change_url(obj: Board | Agent) -> str:
    return reverse(f"admin:boards_{obj._meta.model_name}_change", args=[obj.pk])


def _list_url(model: type) -> str:
    return reverse(f"admin:boards_{model._meta.model_name}_changelist")


def _action(client: Client, model: type, action: str, objs: list) -> Any:
    return client.post(
        _list_url(model), {"action": action, "_selected_action": [o.pk for o in objs]}, follow=True
    )


def _watch(board: Board, client: Client, action: Callable[[], Any]) -> tuple[Any, str]:
    """A browser's websocket on ``board`` (with ``client``'s session) while
    ``action`` runs: the action's result and the first update pushed."""
    cookie = (
        b"cookie",
        f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode(),
    )

    async def scenario() -> tuple[Any, str]:
        communicator = WebsocketCommunicator(
            application, f"/ws/boards/{board.slug}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect()
        assert connected
        result = await database_sync_to_async(action)()
        html = await communicator.receive_from()
        await communicator.disconnect()
        return result, html

    try:
        return async_to_sync(scenario)()
    finally:
        broadcast.flush()


def _errors(response) -> str:
    """Every error the admin form shows, as text."""
    return " ".join(
        re.sub(r"<[^>]+>", " ", e)
        for e in re.findall(r'<ul class="errorlist[^"]*"[^>]*>.*?</ul>', response.content.decode(), re.S)
    )


# --- pausing and resuming ----------------------------------------------------------


@pytest.mark.parametrize("model", [Board, Agent])
def test_paused_cannot_be_edited_on_the_change_form(admin_client, model):
    board = make_board()
    obj = board if model is Board else make_agent(boards=[board])

    page = admin_client.get(_change_url(obj)).content.decode()
    form = _board_form(board, _column_rows(board)) if model is Board else _agent_form(obj)
    response = admin_client.post(_change_url(obj), {**form, "paused": "on"})

    assert 'name="paused"' not in page
    assert "Pause it with the “Pause selected" in page
    assert response.status_code == 302
    obj.refresh_from_db()
    assert obj.paused is False


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_pausing_a_board_stops_the_line_and_tells_the_browsers(admin_client):
    board = make_board()

    response, html = _watch(board, admin_client, lambda: _action(admin_client, Board, "pause", [board]))

    board.refresh_from_db()
    assert board.paused is True
    assert "Paused 1 board: agents pull nothing from them until resumed." in response.content.decode()
    assert re.search(r'<div id="board-banner"[^>]*hx-swap-oob="outerHTML"', html)
    assert "The line is stopped:" in html


@pytest.mark.django_db(transaction=True)
def test_resuming_a_board_pulls_what_waits(admin_client, empty_queue):
    board = make_board(backlog=False)
    make_agent(boards=[board])
    services.board_set_paused(board=board, paused=True)
    waiting = services.task_create(board=board, title="Waits for the line")
    empty_queue.clear()

    response = _action(admin_client, Board, "resume", [board])

    assert "Resumed 1 board." in response.content.decode()
    assert empty_queue.pulls_requested() == [board.pk]
    services.pull_requested_run(board_id=board.pk)  # what the worker does with it
    waiting.refresh_from_db()
    assert waiting.status == Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_pausing_and_resuming_agents_goes_through_the_service(admin_client, empty_queue):
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="Summariser")

    response = _action(admin_client, Agent, "pause", [agent])
    agent.refresh_from_db()
    assert agent.paused is True
    assert "Paused 1 agent: they take no new tasks and finish what they run." in response.content.decode()
    task = services.task_create(board=board, title="Nobody takes it")
    services.pull_requested_run(board_id=board.pk)
    assert Task.objects.get(pk=task.pk).status == Status.READY
    empty_queue.clear()

    response = _action(admin_client, Agent, "resume", [agent])

    agent.refresh_from_db()
    assert agent.paused is False
    assert "Resumed 1 agent." in response.content.decode()
    # The service asks the workers to pull every board the agent serves.
    assert empty_queue.pulls_requested() == [board.pk]
    services.pull_requested_run(board_id=board.pk)
    assert Task.objects.get(pk=task.pk).status == Status.RUNNING


# --- saving columns and agents ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_wip_limit_changed_in_the_admin_shows_live(admin_client, empty_queue):
    board = make_board(ready_limit=5)
    rows = _column_rows(board)
    ready = column(board, Role.READY)
    next(row for row in rows if row["id"] == ready.pk)["wip_limit"] = 2

    response, html = _watch(
        board, admin_client, lambda: admin_client.post(_change_url(board), _board_form(board, rows))
    )

    assert response.status_code == 302
    # Every column, whole, out of band: the browsers' headers show the new limit.
    assert {int(pk) for pk in re.findall(r'<section id="column-(\d+)"[^>]*hx-swap-oob', html)} == set(
        board.columns.values_list("pk", flat=True)
    )
    ready_html = html[html.index(f'<section id="column-{ready.pk}"') :].split("</section>")[0]
    assert re.search(r"wip-count[^>]*>\s*0 / 2<", ready_html)


@pytest.mark.django_db(transaction=True)
def test_a_raised_wip_limit_lets_the_agents_pull_more(admin_client, empty_queue):
    board = make_board(backlog=False, doing_limit=1)
    make_agent(boards=[board], concurrency=5)
    tasks = [services.task_create(board=board, title=f"Task {i}") for i in range(3)]
    services.pull_requested_run(board_id=board.pk)
    assert Task.objects.filter(board=board, status=Status.RUNNING).count() == 1
    empty_queue.clear()
    rows = _column_rows(board)
    doing = column(board, Role.IN_PROGRESS)
    next(row for row in rows if row["id"] == doing.pk)["wip_limit"] = 3

    response = admin_client.post(_change_url(board), _board_form(board, rows))

    assert response.status_code == 302
    assert empty_queue.pulls_requested() == [board.pk]
    services.pull_requested_run(board_id=board.pk)  # what the worker does with it
    assert Task.objects.filter(pk__in=[t.pk for t in tasks], status=Status.RUNNING).count() == 3


@pytest.mark.django_db(transaction=True)
def test_saving_a_board_without_column_changes_sends_nothing(admin_client, empty_queue):
    board = make_board()

    response = admin_client.post(
        _change_url(board), _board_form(board, _column_rows(board), description="Renamed")
    )

    assert response.status_code == 302
    assert empty_queue.task_names() == []
    assert empty_queue.pulls_requested() == []


@pytest.mark.django_db(transaction=True)
def test_a_raised_agent_concurrency_lets_it_pull_more(admin_client, empty_queue):
    board = make_board(backlog=False, doing_limit=None)
    agent = make_agent(boards=[board], concurrency=1)
    tasks = [services.task_create(board=board, title=f"Task {i}") for i in range(3)]
    services.pull_requested_run(board_id=board.pk)
    empty_queue.clear()

    response = admin_client.post(_change_url(agent), _agent_form(agent, concurrency="3"))

    assert response.status_code == 302
    assert empty_queue.pulls_requested() == [board.pk]
    services.pull_requested_run(board_id=board.pk)
    assert Task.objects.filter(pk__in=[t.pk for t in tasks], status=Status.RUNNING).count() == 3


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_board_an_agent_leaves_stops_showing_it(admin_client):
    board, other = make_board(), make_board()
    agent = make_agent(boards=[board, other], name="Leaving agent")

    response, html = _watch(
        board,
        admin_client,
        lambda: admin_client.post(_change_url(agent), _agent_form(agent, boards=[other.pk])),
    )

    assert response.status_code == 302
    assert re.search(r'<section id="board-agents"[^>]*hx-swap-oob="outerHTML"', html)
    assert "Leaving agent" not in html


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_deleted_agent_leaves_the_boards_it_served(admin_client):
    board = make_board()
    agent = make_agent(boards=[board], name="Retired agent")
    url = reverse("admin:boards_agent_delete", args=[agent.pk])

    response, html = _watch(board, admin_client, lambda: admin_client.post(url, {"post": "yes"}))

    assert response.status_code == 302
    assert not Agent.objects.filter(pk=agent.pk).exists()
    assert re.search(r'<section id="board-agents"[^>]*hx-swap-oob="outerHTML"', html)
    assert "Retired agent" not in html


# --- the rules a board's columns keep ------------------------------------------------


def test_a_board_is_created_with_the_roles_the_line_needs(admin_client):
    rows = _new_rows(("Queue", Role.READY, 4), ("Doing", Role.IN_PROGRESS, 2), ("Finished", Role.DONE, None))

    response = admin_client.post(reverse("admin:boards_board_add"), _board_form(None, rows))

    assert response.status_code == 302, _errors(response)
    board = Board.objects.get(slug="new-line")
    assert list(board.columns.order_by("position").values_list("role", "wip_limit")) == [
        (Role.READY, 4),
        (Role.IN_PROGRESS, 2),
        (Role.DONE, None),
    ]


def test_the_add_form_offers_a_row_per_role_in_flow_order(admin_client):
    html = admin_client.get(reverse("admin:boards_board_add")).content.decode()

    selected = re.findall(r'name="columns-(\d)-role"[^>]*>.*?<option value="(\w+)" selected>', html, re.S)
    assert selected == [
        ("0", "backlog"),
        ("1", "ready"),
        ("2", "in_progress"),
        ("3", "review"),
        ("4", "done"),
    ]


def test_a_board_without_the_required_roles_is_refused(admin_client):
    rows = _new_rows(("Backlog", Role.BACKLOG, None), ("Ready", Role.READY, 3))

    response = admin_client.post(reverse("admin:boards_board_add"), _board_form(None, rows))

    assert response.status_code == 200
    assert (
        "No In progress or Done column: every board needs a Ready, an In progress and a Done column"
        in _errors(response)
    )
    assert not Board.objects.filter(slug="new-line").exists()


def test_deleting_a_required_column_is_refused(admin_client):
    board = make_board()
    rows = _column_rows(board)
    next(row for row in rows if row["role"] == Role.IN_PROGRESS)["DELETE"] = True

    response = admin_client.post(_change_url(board), _board_form(board, rows))

    assert response.status_code == 200
    assert "No In progress column: every board needs" in _errors(response)
    assert board.columns.filter(role=Role.IN_PROGRESS).exists()


def test_two_columns_with_one_role_are_refused(admin_client):
    rows = _new_rows(
        ("Ready", Role.READY, None),
        ("Also ready", Role.READY, None),
        ("Doing", Role.IN_PROGRESS, 2),
        ("Done", Role.DONE, None),
    )

    response = admin_client.post(reverse("admin:boards_board_add"), _board_form(None, rows))

    assert response.status_code == 200
    assert "A board has one column per role: give each column a different role." in _errors(response)
    assert not Board.objects.filter(slug="new-line").exists()


def test_a_wip_limit_on_done_is_refused(admin_client):
    board = make_board()
    rows = _column_rows(board)
    next(row for row in rows if row["role"] == Role.DONE)["wip_limit"] = 10

    response = admin_client.post(_change_url(board), _board_form(board, rows))

    assert response.status_code == 200
    assert "Done collects finished work; it takes no WIP limit." in _errors(response)
    assert column(board, Role.DONE).wip_limit is None


def test_columns_out_of_flow_order_are_refused(admin_client):
    rows = _new_rows(("Done", Role.DONE, None), ("Ready", Role.READY, 3), ("Doing", Role.IN_PROGRESS, 2))

    response = admin_client.post(reverse("admin:boards_board_add"), _board_form(None, rows))

    assert response.status_code == 200
    assert "“Ready” (Ready) comes after “Done” (Done): order the columns as work flows" in _errors(response)


def test_two_columns_in_one_position_are_refused(admin_client):
    rows = _new_rows(("Ready", Role.READY, 3), ("Doing", Role.IN_PROGRESS, 2), ("Done", Role.DONE, None))
    rows[1]["position"] = rows[0]["position"]

    response = admin_client.post(reverse("admin:boards_board_add"), _board_form(None, rows))

    assert response.status_code == 200
    assert "“Ready” and “Doing” have the same position (0)" in _errors(response)


def test_the_role_of_a_column_holding_tasks_cannot_change(admin_client):
    board = make_board(backlog=False)
    task = services.task_create(board=board, title="In Ready")
    rows = _column_rows(board)
    next(row for row in rows if row["role"] == Role.READY)["role"] = Role.BACKLOG

    response = admin_client.post(_change_url(board), _board_form(board, rows))

    assert response.status_code == 200
    assert "“Ready” holds tasks; move them out before changing its role." in _errors(response)
    assert Task.objects.get(pk=task.pk).column.role == Role.READY


# --- tasks -----------------------------------------------------------------------


def test_tasks_cannot_be_deleted_in_the_admin(admin_client, board):
    task = services.task_create(board=board, title="Keep me")

    delete_page = admin_client.get(reverse("admin:boards_task_delete", args=[task.pk]))
    action = admin_client.post(
        _list_url(Task), {"action": "delete_selected", "_selected_action": [task.pk], "post": "yes"}
    )
    changelist = admin_client.get(_list_url(Task)).content.decode()

    assert delete_page.status_code == 403
    assert 'value="delete_selected"' not in changelist
    assert action.status_code in (200, 302)
    assert Task.objects.filter(pk=task.pk).exists()


def test_a_superuser_cannot_take_a_defect_out_of_review_in_the_admin(admin_client, board, agent):
    # The task and its escalation are read-only there: the andon inbox decides.
    from andon.models import Escalation
    from tests.andon.helpers import escalate

    escalation = escalate(board)
    task = escalation.task
    done = column(board, Role.DONE)

    task_change = admin_client.post(
        reverse("admin:boards_task_change", args=[task.pk]),
        {"column": done.pk, "status": Status.DONE, "title": task.title, "board": board.pk},
    )
    escalation_change = admin_client.post(
        reverse("admin:andon_escalation_change", args=[escalation.pk]),
        {"status": Escalation.Status.APPROVED},
    )
    escalation_delete = admin_client.get(reverse("admin:andon_escalation_delete", args=[escalation.pk]))

    assert task_change.status_code == 403
    assert escalation_change.status_code == 403
    assert escalation_delete.status_code == 403
    assert Task.objects.get(pk=task.pk).status == Status.REVIEW
    assert Escalation.objects.get(pk=escalation.pk).status == Escalation.Status.OPEN


# --- an agent's prompt and cascade ---------------------------------------------------------


def _new_agent_form(board: Board, **fields: Any) -> dict[str, Any]:
    """What the add form posts for a new agent serving ``board``."""
    data: dict[str, Any] = {
        "name": "Newcomer",
        "boards": [board.pk],
        "capabilities": json.dumps(["general"]),
        "prompt_template": "{input}",
        "prompt_variables": "[]",
        "parameters": "{}",
        "cascade": json.dumps([{"provider": "simulated", "model": "sim-small"}]),
        "reuse_results": "on",
        "cache_responses": "on",
        "implementation": "",
        "concurrency": "4",
        "max_attempts": "3",
        "quality_checks": "[]",
        "breaker_threshold": "5",
        "breaker_cooldown_seconds": "60",
        "spike_defects": "3",
        "spike_window": "10",
    }
    data.update(fields)
    return data


ADD_URL = reverse_lazy("admin:boards_agent_add")
PROMPT_FIELDS = ["prompt_template", "prompt_variables", "parameters", "cascade", "implementation"]


def test_an_existing_agents_prompt_fields_are_read_only_with_a_pointer_to_the_agent_page(admin_client):
    agent = make_agent(boards=[make_board()])

    page = admin_client.get(_change_url(agent)).content.decode()

    for name in PROMPT_FIELDS:
        assert f'name="{name}"' not in page
    assert 'name="concurrency"' in page and 'name="reuse_results"' in page
    assert "as a proposal" in page and f'href="{agent.get_absolute_url()}#edit"' in page


def test_a_prompt_or_cascade_posted_for_an_existing_agent_changes_nothing_but_the_rest_saves(admin_client):
    agent = make_agent(boards=[make_board()])
    cascade = [
        {"provider": "simulated", "model": "sim-small", "threshold": 0.8},
        {"provider": "simulated", "model": "sim-large"},
    ]

    response = admin_client.post(
        _change_url(agent),
        _agent_form(
            agent,
            cascade=json.dumps(cascade),
            prompt_template="Hacked {input}",
            implementation="boards.example_agents.KeywordClassifier",
            concurrency="6",
        ),
    )

    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.concurrency == 6
    assert agent.prompt_version == 1
    assert (agent.prompt_template, agent.implementation) == ("{input}", "")
    assert [t.model for t in agent.tiers] == ["sim-small"]


def test_a_new_agent_sets_its_prompt_and_cascade_in_the_admin(admin_client):
    board = make_board()
    cascade = [
        {"provider": "simulated", "model": "sim-small", "threshold": 0.8},
        {"provider": "simulated", "model": "sim-large"},
    ]

    page = admin_client.get(ADD_URL).content.decode()
    response = admin_client.post(
        ADD_URL, _new_agent_form(board, cascade=json.dumps(cascade), prompt_template="Hi {input}")
    )

    assert 'name="cascade"' in page and 'name="prompt_template"' in page
    assert response.status_code == 302
    agent = Agent.objects.get(name="Newcomer")
    assert agent.prompt_version == 1 and agent.prompt_template == "Hi {input}"
    assert [(t.model, t.threshold) for t in agent.tiers] == [("sim-small", 0.8), ("sim-large", None)]
    assert agent.cascade[1]["price_out"] == "0.015"  # stored with the model's list price


def test_the_admin_refuses_an_undeclared_template_variable_and_a_bad_tier(admin_client):
    board = make_board()
    cascade = [{"provider": "simulated", "model": "sim-small", "threshold": 2}]

    response = admin_client.post(
        ADD_URL,
        _new_agent_form(board, prompt_template="Dear {customer}: {input}", cascade=json.dumps(cascade)),
    )

    assert response.status_code == 200
    errors = _errors(response)
    assert "{customer}" in errors and "not declared" in errors
    assert "cascade[0].threshold: must be between 0 and 1" in errors
    assert not Agent.objects.filter(name="Newcomer").exists()


def test_the_admin_offers_only_registered_agent_classes(admin_client, settings):
    board = make_board()

    page = admin_client.get(ADD_URL).content.decode()
    response = admin_client.post(ADD_URL, _new_agent_form(board, implementation="os.system"))

    assert '<option value="boards.example_agents.KeywordClassifier">' in page
    assert response.status_code == 200
    assert "not a registered agent class" in _errors(response)
    assert not Agent.objects.filter(name="Newcomer").exists()


@pytest.mark.parametrize("url", ["admin:index", "admin:boards_board_changelist", "admin:boards_board_add"])
def test_the_admin_gets_the_kaizen_icon_where_the_browser_looks_for_it(admin_client, url):
    # The admin's pages name no icon, so the browser asks for /favicon.ico (a
    # 404 in its console before): it is sent on to the icon our pages name.
    page = admin_client.get(reverse(url)).content.decode()
    assert 'rel="icon"' not in page
    assert "Django administration" in page  # the admin's own templates, as Django draws them
    icon = Client().get("/favicon.ico", follow=True)  # a browser asks before anyone logs in
    assert icon.redirect_chain == [("/static/favicon.svg", 302)]
    assert icon.status_code == 200 and icon["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(icon.streaming_content)
