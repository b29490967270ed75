"""The agent page: its settings, cascade, metrics and latest ledger rows; and, for
people allowed to change agents, the form that proposes a change to its prompt
and cascade (the proposal's life is tested in tests/experiments/
test_agent_page_proposals.py) and the switches saved directly."""

from __future__ import annotations

import re
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from boards import services
from boards.agents import runtime
from boards.models import Agent, ModelCall, Task
from experiments import services as kaizen
from experiments.models import ChangeProposal, PromptVersion
from tests.factories import make_agent, make_board, make_editor

pytestmark = pytest.mark.django_db

TWO_TIERS = [
    {
        "provider": "simulated",
        "model": "sim-small",
        "threshold": 0.8,
        "parameters": {"latency_ms": 0, "error_rate": 0},
    },
    {"provider": "simulated", "model": "sim-large", "parameters": {"latency_ms": 0, "error_rate": 0}},
]


def _url(agent: Agent) -> str:
    return reverse("boards-agent-detail", kwargs={"pk": agent.pk})


class _FormReader(HTMLParser):
    """What a browser would send for the form with id ``form_id``, untouched:
    text fields, selected options, ticked boxes and textareas."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.values: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside:
            return
        name = a.get("name")
        if tag == "input" and name:
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.values[name] = a.get("value") or "on"
            elif a.get("type") != "submit":
                self.values[name] = a.get("value") or ""
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select and ("selected" in a or self._select not in self.values):
            self.values[self._select] = a.get("value") or ""
        elif tag == "textarea":
            self._textarea = name
            self.values[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            # Browsers drop the newline right after <textarea>.
            self.values[self._textarea] += (
                data.removeprefix("\n") if not self.values[self._textarea] else data
            )


def _form(client: Client, agent: Agent, form_id: str = "proposal-form") -> dict[str, str]:
    """The form as loaded; the proposal form with a rationale filled in."""
    reader = _FormReader(form_id)
    reader.feed(client.get(_url(agent)).content.decode())
    assert reader.values, f"the page has no form #{form_id}"
    if form_id == "proposal-form":
        assert reader.values["rationale"] == ""
        reader.values["rationale"] = "Reviewers keep asking for this."
    return reader.values


def _proposal(agent: Agent) -> ChangeProposal:
    (proposal,) = ChangeProposal.objects.filter(agent=agent).select_related("candidate")
    return proposal


def _nothing_proposed(agent: Agent, *, version: int = 1) -> None:
    agent.refresh_from_db()
    assert agent.prompt_version == version
    assert not ChangeProposal.objects.filter(agent=agent).exists()


def _field_errors(html: str, field_id: str) -> str:
    """The error list Django renders for a field (``id_<name>_error``)."""
    match = re.search(rf'<ul class="errorlist" id="{re.escape(field_id)}_error">(.*?)</ul>', html, re.S)
    return match.group(1) if match else ""


def _run_one(board, title: str, input: str) -> Task:
    task = services.task_create(board=board, title=title, input=input)
    (claim,) = services.board_pull(board_id=board.pk)
    assert runtime.run(task.pk, str(claim.lease_token)) == "done"
    task.refresh_from_db()
    return task


def test_it_redirects_anonymous_users_to_login(client, agent):
    response = client.get(_url(agent))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_an_unknown_agent_is_404(client, user):
    client.force_login(user)
    assert client.get(reverse("boards-agent-detail", kwargs={"pk": 999999})).status_code == 404


def test_it_shows_the_cascade_tier_by_tier_with_prices_thresholds_and_the_simulated_badge(client, user):
    board = make_board(name="Support")
    agent = make_agent(
        boards=[board],
        name="triage",
        capabilities=["classify"],
        concurrency=7,
        cascade=[
            {
                "provider": "simulated",
                "model": "sim-small",
                "threshold": 0.75,
                "parameters": {"latency_ms": 5},
            },
            {"provider": "openai", "model": "gpt-4o-mini", "price_in": "0.15", "price_out": "0.6"},
        ],
    )
    client.force_login(user)

    response = client.get(_url(agent))

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>triage</h1>" in html
    rows = re.findall(r'<tr class="tier">(.*?)</tr>', html, re.S)
    assert len(rows) == 2
    small, mini = rows
    assert '<td class="num">1</td>' in small and "<code>sim-small</code>" in small
    assert "badge--sim" in small and "$0.00015" in small and "$0.0006" in small
    assert "≥ 0.75" in small and "latency_ms=5.0" in small
    assert '<td class="num">2</td>' in mini and "openai" in mini and "gpt-4o-mini" in mini
    assert "badge--sim" not in mini and "$0.15" in mini and "$0.6" in mini
    assert "takes any output" in mini
    # boards, capabilities, concurrency, version
    assert board.name in html and board.get_absolute_url() in html
    assert '<span class="tag">classify</span>' in html
    assert "7 tasks at once" in html
    assert "prompt v1" in html


def test_it_shows_the_metrics_and_the_latest_ledger_rows_with_task_links(client, user):
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="writer", cascade=TWO_TIERS)
    tasks = [_run_one(board, f"Task {i}", f"input number {i}") for i in range(3)]
    client.force_login(user)

    html = client.get(_url(agent)).content.decode()

    calls = ModelCall.objects.filter(agent=agent)
    metrics = re.search(r'<dl class="metrics" id="agent-metrics">(.*?)</dl>', html, re.S).group(1)
    assert re.search(r"<dt>Tasks done</dt>\s*<dd>3</dd>", metrics)
    assert re.search(rf"<dt>Model calls</dt>\s*<dd>{calls.count()}</dd>", metrics)
    tokens_in = sum(c.tokens_in for c in calls)
    assert re.search(rf"<dt>Tokens in</dt>\s*<dd>{tokens_in}</dd>", metrics)
    assert "<dt>Total cost</dt>" in metrics and "<dt>Mean latency</dt>" in metrics
    taken = re.search(r'id="accepted-by-tier">(.*?)</p>', html, re.S).group(1)
    assert "tier " in taken
    for task in tasks:
        assert task.get_absolute_url() in html
    assert html.count('class="ledger-row ') == calls.count()
    assert 'badge badge--sim" title="Offline' in html


def test_it_shows_only_the_latest_twenty_ledger_rows_newest_first(client, user):
    board = make_board()
    agent = make_agent(boards=[board])
    task = services.task_create(board=board, title="Chatty")
    ModelCall.objects.bulk_create(
        ModelCall(task=task, board=board, agent=agent, attempt=1, tier=1, provider="simulated", model=f"m{i}")
        for i in range(25)
    )
    client.force_login(user)

    html = client.get(_url(agent)).content.decode()

    shown = [int(pk) for pk in re.findall(r'<tr id="call-(\d+)"', html)]
    newest = list(ModelCall.objects.order_by("-created_at", "-pk").values_list("pk", flat=True)[:20])
    assert shown == newest


def test_a_custom_class_agent_shows_its_class_and_its_own_metrics(client, user):
    agent = make_agent(
        boards=[make_board()], name="keywords", implementation="boards.example_agents.KeywordClassifier"
    )
    client.force_login(user)

    html = client.get(_url(agent)).content.decode()

    assert "<code>boards.example_agents.KeywordClassifier</code>" in html
    assert 'id="custom-class"' in html
    extra = re.search(r'<dl class="facts" id="agent-extra-metrics">(.*?)</dl>', html, re.S).group(1)
    assert re.search(r"<dt>rules</dt><dd>\d+</dd>", extra)
    # and its offered capabilities are its class's own
    assert '<span class="tag">classify</span>' in html


def test_a_user_without_the_change_permission_sees_no_form(client, user, agent):
    client.force_login(user)

    html = client.get(_url(agent)).content.decode()

    assert 'id="edit"' not in html
    assert 'name="prompt_template"' not in html
    assert 'id="operations-form"' not in html
    assert 'id="read-only"' in html


def test_a_user_without_the_change_permission_gets_403_on_post(client, user, agent):
    client.force_login(user)

    for action in ("propose", "preview", "settings"):
        response = client.post(_url(agent), {"action": action, "prompt_template": "Hacked {input}"})
        assert response.status_code == 403
    assert client.post(_url(agent), {"prompt_template": "Hacked {input}"}).status_code == 403

    agent.refresh_from_db()
    assert agent.prompt_template == "{input}"
    assert agent.prompt_version == 1
    assert not ChangeProposal.objects.exists()


def test_the_form_posted_unchanged_proposes_nothing_and_keeps_the_prompt_version(client, agent):
    client.force_login(make_editor())

    response = client.post(_url(agent), _form(client, agent))

    assert response.status_code == 422
    assert "Nothing changes: the proposal is the active version." in response.content.decode()
    _nothing_proposed(agent)


def test_a_multi_line_template_sent_back_with_crlf_is_unchanged(client, agent):
    agent.prompt_template = "Summarise:\n{input}"
    services.agent_save(agent=agent)
    client.force_login(make_editor())
    data = _form(client, agent)
    assert data["prompt_template"] == "Summarise:\n{input}"
    # as a browser sends a textarea
    data["prompt_template"] = data["prompt_template"].replace("\n", "\r\n")

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    assert "Nothing changes" in response.content.decode()
    agent.refresh_from_db()
    assert agent.prompt_template == "Summarise:\n{input}"
    _nothing_proposed(agent, version=2)  # the first save above; the form's is no change


def test_a_permitted_user_proposes_the_template_and_a_threshold_through_the_service(client, monkeypatch):
    agent = make_agent(boards=[make_board()], cascade=TWO_TIERS)
    client.force_login(make_editor())
    proposed = []
    real_create = kaizen.proposal_create
    monkeypatch.setattr(
        kaizen,
        "proposal_create",
        lambda *, agent, **kw: proposed.append(agent.pk) or real_create(agent=agent, **kw),
    )
    data = _form(client, agent)
    data["prompt_template"] = "Answer {customer}: {input}"
    data["prompt_variables"] = "customer"
    data["temperature"] = "0.3"
    data["tier-0-threshold"] = "0.65"

    response = client.post(_url(agent), data, follow=True)

    assert proposed == [agent.pk]
    proposal = _proposal(agent)
    [(location, code)] = response.redirect_chain
    assert code == 302 and location == f"{_url(agent)}?proposed={proposal.pk}#proposal-{proposal.pk}"
    candidate = proposal.candidate
    assert candidate.number == 2
    assert candidate.prompt_template == "Answer {customer}: {input}"
    assert candidate.prompt_variables == ["customer"]
    assert candidate.parameters == {"temperature": 0.3}
    assert candidate.cascade[0]["threshold"] == 0.65
    assert candidate.cascade[1]["model"] == "sim-large"
    assert proposal.rationale == "Reviewers keep asking for this."
    # The agent runs what it ran: the change waits for approval.
    agent.refresh_from_db()
    assert (agent.prompt_template, agent.prompt_version) == ("{input}", 1)
    assert agent.cascade[0]["threshold"] == 0.8
    html = response.content.decode()
    assert "Proposed version 2 of" in html and "waiting for approval" in html
    assert "≥ 0.8" in html  # the cascade shown is still the active one


def test_the_reuse_and_cache_switches_save_without_a_new_prompt_version(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent, "operations-form")
    assert data["reuse_results"] == "on" and data["cache_responses"] == "on"
    assert data["action"] == "settings"
    del data["reuse_results"]

    response = client.post(_url(agent), data, follow=True)

    assert response.redirect_chain == [(_url(agent), 302)]
    assert "reuse results off, cache responses on; the prompt is unchanged (version 1)" in (
        response.content.decode()
    )
    agent.refresh_from_db()
    assert agent.reuse_results is False
    assert agent.cache_responses is True
    _nothing_proposed(agent)


def test_the_switches_leave_a_prompt_saved_meanwhile_alone(client, agent, monkeypatch):
    client.force_login(make_editor())
    data = _form(client, agent, "operations-form")
    del data["cache_responses"]
    real_save = services.agent_save

    def someone_else_first(*, agent, **kwargs):
        other = Agent.objects.get(pk=agent.pk)
        other.prompt_template = "Someone else's prompt: {input}"
        real_save(agent=other)
        return real_save(agent=agent, **kwargs)

    monkeypatch.setattr(services, "agent_save", someone_else_first)

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    assert "Someone else saved a new prompt" in response.content.decode()
    agent.refresh_from_db()
    assert (agent.prompt_template, agent.prompt_version, agent.cache_responses) == (
        "Someone else's prompt: {input}",
        2,
        True,
    )


def test_an_undeclared_template_variable_is_shown_on_the_template_and_nothing_is_proposed(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)
    data["prompt_template"] = "Dear {customer}, {input}"
    data["tier-0-threshold"] = "0.5"  # a valid change alongside: not proposed either

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    html = response.content.decode()
    assert "Nothing was proposed:" in html
    errors = _field_errors(html, "id_prompt_template")
    assert "{customer}" in errors and "not declared" in errors
    # the form keeps what was typed
    assert "Dear {customer}, {input}</textarea>" in html
    agent.refresh_from_db()
    assert agent.prompt_template == "{input}"
    assert agent.cascade[0]["threshold"] is None
    _nothing_proposed(agent)


def test_an_out_of_range_temperature_is_shown_on_its_field(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)
    data["temperature"] = "3"

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    assert "must be between 0 and 2" in _field_errors(response.content.decode(), "id_temperature")
    agent.refresh_from_db()
    assert agent.parameters == {}
    _nothing_proposed(agent)


def test_a_threshold_above_one_is_shown_on_its_tier_and_nothing_is_proposed(client):
    agent = make_agent(boards=[make_board()], cascade=TWO_TIERS)
    client.force_login(make_editor())
    data = _form(client, agent)
    data["tier-0-threshold"] = "1.5"
    data["prompt_template"] = "Changed {input}"

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    html = response.content.decode()
    assert "must be between 0 and 1, got 1.5" in _field_errors(html, "id_tier-0-threshold")
    assert re.search(r'<tr class="tier-row tier-row--error" id="tier-row-0">', html)
    assert not _field_errors(html, "id_tier-1-threshold")
    agent.refresh_from_db()
    assert agent.cascade[0]["threshold"] == 0.8
    assert agent.prompt_template == "{input}"
    _nothing_proposed(agent)


def test_an_unknown_simulated_model_is_shown_on_its_tier(client):
    agent = make_agent(boards=[make_board()], cascade=TWO_TIERS)
    client.force_login(make_editor())
    data = _form(client, agent)
    data["tier-1-model"] = "sim-huge"

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    errors = _field_errors(response.content.decode(), "id_tier-1-model")
    assert "unknown simulated model &#x27;sim-huge&#x27;" in errors and "sim-medium" in errors
    agent.refresh_from_db()
    assert agent.cascade[1]["model"] == "sim-large"
    _nothing_proposed(agent)


def test_tier_parameters_that_are_not_json_or_not_allowed_are_shown_on_the_tier(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)
    data["tier-0-parameters"] = "{latency_ms: 5"

    html = client.post(_url(agent), data).content.decode()
    assert "Parameters must be JSON" in _field_errors(html, "id_tier-0-parameters")

    data["tier-0-parameters"] = '{"base_url": "http://x"}'
    html = client.post(_url(agent), data).content.decode()
    errors = _field_errors(html, "id_tier-0-parameters")
    assert "base_url: unknown for provider simulated" in errors
    agent.refresh_from_db()
    assert agent.cascade[0]["parameters"] == {"latency_ms": 0.0}
    _nothing_proposed(agent)


def test_the_spare_row_adds_a_tier(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)
    assert data["tier-TOTAL_FORMS"] == "2" and data["tier-INITIAL_FORMS"] == "1"
    # The cheap tier needs a threshold once another follows it.
    data["tier-0-threshold"] = "0.9"
    data.update({"tier-1-provider": "simulated", "tier-1-model": "sim-medium", "tier-1-price_in": "0.002"})

    response = client.post(_url(agent), data)

    assert response.status_code == 302
    candidate = _proposal(agent).candidate
    assert [t["model"] for t in candidate.cascade] == ["sim-small", "sim-medium"]
    # a blank price takes the simulated model's list price; a given one is kept
    assert Decimal(candidate.cascade[1]["price_in"]) == Decimal("0.002")
    assert Decimal(candidate.cascade[1]["price_out"]) == Decimal("0.004")
    assert candidate.number == 2
    agent.refresh_from_db()
    assert len(agent.cascade) == 1 and agent.prompt_version == 1


def test_a_tier_that_would_never_run_is_refused_on_the_tier_before_it(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)
    data.update({"tier-1-provider": "simulated", "tier-1-model": "sim-medium"})

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    assert "would never run" in _field_errors(response.content.decode(), "id_tier-0-threshold")
    agent.refresh_from_db()
    assert len(agent.cascade) == 1
    _nothing_proposed(agent)


def test_ticking_remove_deletes_a_tier(client):
    agent = make_agent(boards=[make_board()], cascade=TWO_TIERS)
    client.force_login(make_editor())
    data = _form(client, agent)
    data["tier-0-DELETE"] = "on"

    response = client.post(_url(agent), data)

    assert response.status_code == 302
    candidate = _proposal(agent).candidate
    assert [t["model"] for t in candidate.cascade] == ["sim-large"]
    assert candidate.number == 2
    agent.refresh_from_db()
    assert len(agent.cascade) == 2


def test_positions_reorder_the_tiers(client):
    agent = make_agent(boards=[make_board()], cascade=TWO_TIERS)
    client.force_login(make_editor())
    data = _form(client, agent)
    assert (data["tier-0-ORDER"], data["tier-1-ORDER"]) == ("1", "2")
    data.update(
        {"tier-0-ORDER": "2", "tier-1-ORDER": "1", "tier-1-threshold": "0.99", "tier-0-threshold": ""}
    )

    assert client.post(_url(agent), data).status_code == 302

    candidate = _proposal(agent).candidate
    assert [(t["model"], t["threshold"]) for t in candidate.cascade] == [
        ("sim-large", 0.99),
        ("sim-small", None),
    ]


def test_removing_every_tier_is_refused_above_the_table(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)
    data["tier-0-DELETE"] = "on"

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    html = response.content.decode()
    tiers = html[html.index('id="tiers"') :]
    assert "give at least one tier" in tiers[: tiers.index("<table")]
    agent.refresh_from_db()
    assert len(agent.cascade) == 1
    _nothing_proposed(agent)


def test_a_refusal_by_the_service_is_shown_above_the_form(client, agent, monkeypatch):
    from django.core.exceptions import ValidationError

    def refuse(*, agent, **kwargs):
        raise ValidationError({"implementation": ["'x.Y' is not a registered agent class"]})

    monkeypatch.setattr(kaizen, "proposal_create", refuse)
    client.force_login(make_editor())
    data = _form(client, agent)
    data["prompt_template"] = "New {input}"

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    html = response.content.decode()
    errors = html[html.index('id="edit-errors"') :]
    assert "is not a registered agent class" in errors[: errors.index("</div>")]


def test_proposing_against_a_prompt_someone_else_changed_meanwhile_is_refused(client, agent):
    client.force_login(make_editor())
    data = _form(client, agent)  # the page as this editor loaded it, at version 1
    agent.prompt_template = "Someone else's prompt: {input}"
    services.agent_save(agent=agent)  # a config file changes it first: version 2
    data["prompt_template"] = "My prompt: {input}"

    response = client.post(_url(agent), data)

    assert response.status_code == 422
    assert "active prompt moved on to version 2 while you were editing" in response.content.decode()
    agent.refresh_from_db()
    assert (agent.prompt_template, agent.prompt_version) == ("Someone else's prompt: {input}", 2)
    _nothing_proposed(agent, version=2)


def test_a_custom_class_agent_still_proposes_the_shared_settings(client):
    agent = make_agent(boards=[make_board()], implementation="boards.example_agents.KeywordClassifier")
    client.force_login(make_editor())
    data = _form(client, agent)
    data["max_tokens"] = "256"

    assert client.post(_url(agent), data).status_code == 302

    candidate = _proposal(agent).candidate
    assert candidate.parameters == {"max_tokens": 256}
    assert candidate.implementation == "boards.example_agents.KeywordClassifier"


def test_it_enforces_csrf(agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_editor())
    data = _form(client, agent)
    data["prompt_template"] = "New {input}"

    refused = client.post(_url(agent), {k: v for k, v in data.items() if k != "csrfmiddlewaretoken"})
    assert refused.status_code == 403
    assert not ChangeProposal.objects.exists()

    assert data["csrfmiddlewaretoken"]
    assert client.post(_url(agent), data).status_code == 302
    assert _proposal(agent).candidate.prompt_template == "New {input}"


def test_the_query_count_does_not_grow_with_the_ledger_or_the_history(client, django_assert_max_num_queries):
    board = make_board()
    agent = make_agent(boards=[board, make_board()], cascade=TWO_TIERS)
    tasks = [services.task_create(board=board, title=f"Task {i}") for i in range(30)]
    earlier = tasks[0]
    ModelCall.objects.bulk_create(
        ModelCall(
            task=task,
            board=board,
            agent=agent,
            attempt=1,
            tier=1 + i % 2,
            source=ModelCall.Source.REUSE if i % 5 == 0 else ModelCall.Source.MODEL,
            reused_from=earlier if i % 5 == 0 else None,
            provider="simulated",
            model="sim-small",
            tokens_in=10,
            tokens_out=20,
            cost=Decimal("0.0001"),
            accepted=True,
        )
        for task in tasks
        for i in range(10)
    )
    editor = make_editor()
    for i in range(3):  # versions, audit entries and proposals with their experiments
        agent.prompt_template = f"Version {i + 2}: {{input}}"
        services.agent_save(agent=agent)
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    for template in ("A: {input}", "B: {input}"):
        kaizen.proposal_create(
            agent=agent,
            fields={**fields, "prompt_template": template},
            rationale="Try it.",
            user=editor,
        )
    client.force_login(editor)

    # +2: the nav asks for the user's permissions (the andon link is for reviewers only);
    # +4: the prompt's history (versions, proposals, experiments, audit entries), a query each;
    # +2: the tiers and settings from evidence (the patterns, and their ledger rows).
    with django_assert_max_num_queries(19):
        response = client.get(_url(agent))

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="ledger-row ') == 20
    assert html.count('<li class="version') == 6 and html.count('id="history-proposal-') == 2
