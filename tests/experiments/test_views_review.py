"""The evolution review page (/kaizen/): proposals waiting for approval with
their diff and evidence, running and recently ended experiments, the latest
audit entries; approvers only; a bounded number of queries whatever it shows.

The builders are tests.experiments.helpers, shared by the other evolution review tests."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments import services as kaizen
from experiments.models import AuditEntry, PromptVersion
from tests.experiments.helpers import (
    HTMX,
    NEW_TEMPLATE,
    RATIONALE,
    chart_of,
    experiment_in,
    fields_of,
    line_agent,
    major_proposal,
)
from tests.factories import make_editor, make_user

pytestmark = pytest.mark.django_db

REVIEW = "/kaizen/"


# --- tests ----------------------------------------------------------------------------------


def test_the_url_is_named_experiments_review():
    assert reverse("experiments-review") == REVIEW


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(REVIEW)

    assert response.status_code == 302
    assert response.url == f"/accounts/login/?next={REVIEW}"


def test_users_without_the_approve_permission_get_403(client):
    client.force_login(make_editor())

    assert client.get(REVIEW).status_code == 403
    assert client.get(reverse("experiments-review-live")).status_code == 403


def test_a_pending_proposal_shows_agent_kind_author_rationale_evidence_and_diff(client, ana):
    agent = line_agent(name="welder")
    proposal = major_proposal(
        agent,
        user=make_editor(username="eve"),
        evidence={
            "rejected_outputs": 14,
            "window": "the last 7 days",
            "examples": [{"task": 12, "note": "order wrong <b>"}, {"task": 19, "note": "missing defect"}],
            "checks": ["length", "regex"],
            "by_tier": {"sim-small": 9, "sim-large": 5},
        },
    )
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    item = html[html.index(f'id="proposal-{proposal.pk}"') :]
    item = item[: item.index("</ol>")]
    assert "welder" in item
    assert '<span class="evo-kind evo-kind--major">Major</span>' in item
    assert "the template changes beyond a small edit" in item
    assert '<strong class="evo-author">eve</strong>' in item
    assert RATIONALE in item
    # The evidence, readably: a value, a table of records, a list, pairs; escaped.
    assert "<dt>Rejected outputs</dt>" in item and "14" in item
    # (PostgreSQL's jsonb keeps keys in its own order, not the author's.)
    assert '<th scope="col">Task</th>' in item and '<th scope="col">Note</th>' in item
    assert "order wrong &lt;b&gt;" in item
    assert "<li>length</li><li>regex</li>" in item
    assert "<dt>Sim-small</dt><dd>9</dd>" in item
    # The diff, coloured per line.
    assert '<span class="evo-diff-line evo-diff-line--file">--- v1</span>' in item
    assert '<span class="evo-diff-line evo-diff-line--hunk">@@ -1 +1,3 @@</span>' in item
    assert (
        '<span class="evo-diff-line evo-diff-line--add">+You are a meticulous inspector. Describe the defect first, '
        "then classify it.</span>" in item
    )
    assert '<span class="evo-diff-line evo-diff-line--context"> {input}</span>' in item
    # Both actions, each asking for a note.
    assert f'hx-post="/kaizen/proposals/{proposal.pk}/approve/"' in item
    assert f'hx-post="/kaizen/proposals/{proposal.pk}/reject/"' in item
    assert item.count('name="note"') == 2 and item.count("required") >= 2
    assert "<title>(1) Evolution review · Kaizen</title>" in html


def test_evidence_given_as_pairs_keeps_its_order(client, ana):
    major_proposal(line_agent(), evidence=[["zeta", 1], ["alpha", ["a", "b"]], ["mid", {"k": "v"}]])
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    assert html.index("<dt>Zeta</dt>") < html.index("<dt>Alpha</dt>") < html.index("<dt>Mid</dt>")
    assert "<li>a</li><li>b</li>" in html and "<dt>K</dt><dd>v</dd>" in html


def test_a_proposal_of_the_kaizen_loop_says_so(client, ana):
    agent = line_agent()
    kaizen.proposal_create(
        agent=agent,
        fields=fields_of(agent, prompt_template=NEW_TEMPLATE),
        rationale="Rejected outputs put the class first.",
        source=PromptVersion.Source.KAIZEN,
    )
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    assert '<strong class="evo-author">kaizen loop</strong>' in html


def test_a_running_experiment_shows_stage_status_counts_and_its_latest_look(client, ana):
    experiment = experiment_in("efficacy", agent=line_agent(name="welder"))
    latest = experiment.looks.order_by("-created_at", "-pk").first()
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    row = html[html.index(f'<div id="experiment-{experiment.pk}"') :]
    row = row[: row.index('<script type="application/json"')]
    assert f'href="/kaizen/experiments/{experiment.pk}/"' in row
    assert "welder: v1 against v2" in row
    assert '<span class="evo-stage">Efficacy at 50% of tasks</span>' in row
    assert '<span class="evo-status evo-status--running">Running</span>' in row
    assert '<td class="num">200</td><td class="num">140</td><td class="num">70.0%</td>' in row
    assert '<td class="num">200</td><td class="num">150</td><td class="num">75.0%</td>' in row
    assert '<span class="evo-decision evo-decision--continue">Continue</span>' in row
    assert latest.stats["reason"] in row
    assert f'hx-post="/kaizen/experiments/{experiment.pk}/rollback/"' in row
    # Its chart, drawn from the data in its row.
    assert f'data-chart="chart-data-{experiment.pk}"' in html
    assert chart_of(html, experiment.pk)["data"]


def test_each_status_offers_its_actions_and_rollback_is_always_there(client, ana):
    canary = experiment_in("canary_passed")
    paused = experiment_in("paused")
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    assert f"/kaizen/experiments/{canary.pk}/advance/" in html
    assert f"/kaizen/experiments/{paused.pk}/resume/" in html
    assert f"/kaizen/experiments/{paused.pk}/advance/" not in html
    for experiment in (canary, paused):
        assert f"/kaizen/experiments/{experiment.pk}/rollback/" in html
        assert f"/kaizen/experiments/{experiment.pk}/promote/" not in html


def test_an_ended_experiment_is_listed_without_actions_or_chart(client, ana):
    experiment = experiment_in("running")
    kaizen.experiment_rollback(experiment=experiment, user=ana, note="Wrong base prompt.")
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    assert "Recently ended" in html
    row = html[html.index(f'<div id="experiment-{experiment.pk}"') :]
    row = row[: row.index("</li>")]
    assert '<span class="evo-status evo-status--rolled_back">Rolled back</span>' in row
    assert "Wrong base prompt." in row
    assert "/rollback/" not in row
    assert f'id="chart-{experiment.pk}"' not in html


def test_the_audit_log_shows_the_latest_entries_newest_first_with_a_link_to_all(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    section = html[html.index('id="audit-recent"') :]
    actions = re.findall(r'<td class="evo-audit-action">([^<]+)</td>', section)
    assert actions[:3] == ["Experiment started", "Approved", "Proposed"]
    assert "The diff reads well." in section
    assert f'href="/kaizen/experiments/{experiment.pk}/"' in section
    assert 'href="/kaizen/audit/"' in section


def test_the_audit_log_on_the_page_stops_at_50(client, ana):
    agent = line_agent()
    for i in range(60):
        AuditEntry.objects.create(agent=agent, action=AuditEntry.Action.VERSION, reason=f"entry {i}")
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    assert html.count('class="evo-audit-row') == 50
    assert "entry 59" in html and "entry 9<" not in html


def test_the_page_uses_a_bounded_number_of_queries(client, ana):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(REVIEW).status_code == 200
        return len(captured)

    client.force_login(ana)
    experiment_in("efficacy")
    major_proposal(line_agent())
    few = queries()

    for _ in range(3):
        experiment_in("canary_passed")
    for _ in range(4):
        major_proposal(line_agent())
    ended = experiment_in("running")
    kaizen.experiment_rollback(experiment=ended, user=ana, note="enough")
    many = queries()

    assert many == few
    assert few <= 16


def test_the_live_part_is_the_sections_out_of_band(client, ana):
    major_proposal(line_agent())
    client.force_login(ana)

    response = client.get(reverse("experiments-review-live"), headers=HTMX)

    html = response.content.decode()
    assert response.status_code == 200
    for section in ("proposals", "experiments", "audit-recent"):
        assert re.search(rf'<section id="{section}"[^>]*hx-swap-oob="outerHTML"', html)
    assert "<html" not in html


def test_the_nav_links_to_the_review_for_approvers_only(client, ana):
    client.force_login(ana)
    assert 'href="/kaizen/"' in client.get("/boards/").content.decode()

    client.force_login(make_user())
    assert 'href="/kaizen/"' not in client.get("/boards/").content.decode()


def test_plotly_js_is_served_from_the_plotly_package_with_long_caching(client, ana):
    client.force_login(make_user())

    response = client.get(reverse("experiments-plotly-js"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert "max-age=31536000" in response["Cache-Control"]
    head = b"".join(response.streaming_content)[:2000]
    assert b"plotly" in head.lower()


def test_plotly_js_needs_a_login(client):
    response = client.get(reverse("experiments-plotly-js"))

    assert response.status_code == 302


def test_the_review_page_loads_plotly_and_its_script(client, ana):
    client.force_login(ana)

    html = client.get(REVIEW).content.decode()

    assert re.search(r'<script src="/kaizen/plotly.min.js\?v=[\d.]+" defer></script>', html)
    assert '<script src="/static/js/evolution.js" defer></script>' in html
    assert 'ws-connect="/ws/kaizen/"' in html


def test_evidence_figures_read_as_money_percents_and_short_numbers(client, ana):
    major_proposal(
        line_agent(),
        evidence={
            "upper_tier_cost": 0.161765,
            "waste_share": 0.1234,
            "pass_confidence": 0.123456789,
            "tier1_threshold": {"current": 0.8, "proposed": 0.75},
            "examples": [{"task": 3, "upper_cost": 0.0123456}],
            "ok": True,
        },
    )
    client.force_login(ana)

    html = re.sub(r">\s+", ">", re.sub(r"\s+<", "<", client.get(REVIEW).content.decode()))

    assert "<dt>Upper tier cost</dt><dd>$0.1618</dd>" in html
    assert "<dt>Waste share</dt><dd>12.3%</dd>" in html
    assert "<dt>Pass confidence</dt><dd>0.1235</dd>" in html
    assert "<dt>Proposed</dt><dd>0.75</dd>" in html
    assert "$0.0123" in html and "0.0123456" not in html
    assert "<dt>Ok</dt><dd>yes</dd>" in html
