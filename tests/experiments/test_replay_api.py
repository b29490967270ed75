"""POST /api/v1/agents/{name}/replays and GET /api/v1/replays/{id}, and
``manage.py replay``: starting a replay, its errors, following it to its verdict."""

from __future__ import annotations

from io import StringIO
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command

from boards.models import ApiToken
from experiments import genchi
from experiments.models import Replay
from tests.boards.api_support import client_for, post_json, token_for
from tests.experiments.genchi_support import BETTER, history_agent, version
from tests.factories import make_user, make_user_with

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_replays")]


@pytest.fixture
def api():
    return client_for(token_for(make_user_with("boards.change_agent", "boards.add_task")))


def test_a_replay_is_queued_and_followed_to_its_verdict(api):
    agent = history_agent(tasks=40, name="triage bot")
    candidate = version(agent, BETTER)
    response = post_json(
        api,
        f"/api/v1/agents/{quote(agent.name, safe='')}/replays",
        {"candidate": candidate.number, "sample": 30},
    )
    assert response.status_code == 202, response.content
    body = response.json()
    replay = Replay.objects.get(pk=body["id"])
    assert body["state"] == "queued"
    assert body["url"].endswith(f"/api/v1/replays/{replay.pk}")
    assert replay.total == 30 and replay.created_by is not None

    queued = api.get(f"/api/v1/replays/{replay.pk}").json()
    assert queued["progress"] == {"done": 0, "total": 30}
    assert queued["verdict"] is None and queued["pairs"] is None

    while genchi.replay_step(replay.pk, seconds=60, hand_on=False) not in ("finished", "ended"):
        pass
    done = api.get(f"/api/v1/replays/{replay.pk}").json()
    assert done["state"] == "done"
    assert done["progress"] == {"done": 30, "total": 30}
    assert done["pairs"] == 30
    assert done["both_pass"] + done["only_baseline"] + done["only_candidate"] + done["neither"] == 30
    assert done["baseline_pass"] == done["both_pass"] + done["only_baseline"]
    assert done["candidate_pass"] == done["both_pass"] + done["only_candidate"]
    assert 0 <= done["mcnemar_p"] <= 1 and 0 <= done["noninferiority_p"] <= 1
    assert done["noninferiority_margin"] == 0.05
    assert done["verdict"] in ("pass", "fail")
    assert len(done["cost_delta_ci"]) == 2 and len(done["latency_delta_ci"]) == 2
    assert float(done["spent_usd"]) > 0


def test_unknown_agents_and_versions_are_404_and_a_running_replay_409(api):
    agent = history_agent(tasks=10)
    other = history_agent(tasks=10)
    candidate = version(agent, BETTER)
    assert post_json(api, "/api/v1/agents/nobody/replays", {"candidate": 2}).status_code == 404
    foreign = version(other, BETTER)
    response = post_json(api, f"/api/v1/agents/{agent.name}/replays", {"candidate": foreign.number + 5})
    assert response.status_code == 404
    assert "has no prompt version" in response.json()["detail"]
    first = post_json(api, f"/api/v1/agents/{agent.name}/replays", {"candidate": candidate.number})
    assert first.status_code == 202
    again = post_json(api, f"/api/v1/agents/{agent.name}/replays", {"candidate": candidate.number})
    assert again.status_code == 409
    assert f"id {first.json()['id']}" in again.json()["detail"]
    assert Replay.objects.count() == 1


def test_bad_bodies_are_400_with_the_field_named(api):
    agent = history_agent(tasks=10)
    path = f"/api/v1/agents/{agent.name}/replays"
    for body, field in (
        ({}, "candidate"),
        ({"candidate": "2"}, "candidate"),
        ({"candidate": 2, "sample": 0}, "sample"),
        ({"candidate": 2, "colour": "red"}, "colour"),
    ):
        response = post_json(api, path, body)
        assert response.status_code == 400, body
        assert field in response.json()["errors"], (body, response.json())
    active = genchi.ensure_version(agent)
    response = post_json(api, path, {"candidate": active.number})
    assert response.status_code == 400
    assert "active version" in response.json()["errors"]["candidate"][0]
    assert not Replay.objects.exists()


def test_starting_a_replay_needs_a_write_token_of_someone_who_may_change_agents():
    agent = history_agent(tasks=10)
    candidate = version(agent, BETTER)
    path = f"/api/v1/agents/{agent.name}/replays"
    reader = client_for(token_for(make_user_with("boards.change_agent"), access=ApiToken.Access.READ))
    assert post_json(reader, path, {"candidate": candidate.number}).status_code == 403
    writer = client_for(token_for(make_user_with("boards.add_task")))
    response = post_json(writer, path, {"candidate": candidate.number})
    assert response.status_code == 403
    assert "boards.change_agent" in response.json()["detail"]
    assert post_json(client_for("kz_nonsense"), path, {"candidate": candidate.number}).status_code == 401
    elsewhere = history_agent(tasks=1).boards.get()
    scoped = client_for(
        token_for(make_user_with("boards.change_agent", "boards.add_task"), boards=[elsewhere])
    )
    assert post_json(scoped, path, {"candidate": candidate.number}).status_code == 403
    assert not Replay.objects.exists()
    assert (
        client_for(token_for(make_user(), access=ApiToken.Access.READ)).get("/api/v1/replays/999").status_code
        == 404
    )


def test_the_operations_are_in_the_openapi_schema(client):
    schema = client.get("/api/v1/openapi.json").json()
    post = schema["paths"]["/api/v1/agents/{name}/replays"]["post"]
    assert post["operationId"] == "replay_create"
    assert {"202", "404", "409"} <= set(post["responses"])
    get = schema["paths"]["/api/v1/replays/{replay_id}"]["get"]
    assert get["operationId"] == "replay_detail"
    out = schema["components"]["schemas"]["ReplayOut"]["properties"]
    for name in (
        "state",
        "progress",
        "pairs",
        "mcnemar_p",
        "noninferiority_p",
        "cost_delta_ci",
        "latency_delta_ci",
    ):
        assert name in out


def test_the_command_replays_with_a_progress_bar_and_prints_the_verdict():
    agent = history_agent(tasks=40)
    candidate = version(agent, BETTER)
    out = StringIO()
    call_command(
        "replay",
        agent.name,
        "--candidate",
        str(candidate.number),
        "--sample",
        "25",
        "--seed",
        "4",
        stdout=out,
    )
    text = out.getvalue()
    assert f"Replaying v{candidate.number} against v1 of {agent.name} on 25 of 40 past tasks (seed 4;" in text
    assert "replayed: 25/25 (100%)" in text
    assert "pairs 25:" in text
    assert "exact McNemar p = " in text
    assert "verdict: PASS" in text or "verdict: FAIL" in text
    replay = Replay.objects.get()
    assert replay.state == "done" and replay.done == 25


def test_the_command_names_what_is_wrong():
    agent = history_agent(tasks=5, name="reader")
    with pytest.raises(CommandError, match="There is no agent 'nobody' \\(agents: .*reader"):
        call_command("replay", "nobody", "--candidate", "2")
    with pytest.raises(CommandError, match="reader has no prompt version 7 \\(versions: v1\\)"):
        call_command("replay", "reader", "--candidate", "7")
    candidate = version(agent, BETTER)
    with pytest.raises(CommandError, match="--sample must be at least 1"):
        call_command("replay", "reader", "--candidate", str(candidate.number), "--sample", "0")
    assert not Replay.objects.exists()
