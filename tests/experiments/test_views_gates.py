"""The gates in the browser's pages: a proposal's page shows its gates live
(the socket, the catch-up endpoint), a replay's page its progress and evidence,
the review lists each proposal's gates with the running one's progress and what
seeing cost; a gate is skipped or overridden with a note, from the review (htmx)
or the proposal's page (plainly), a missing note answered 422 with the form kept
open; a replay is cancelled. Approvers only."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from boards.models import ModelCall
from experiments import services as kaizen
from experiments.charts import money
from experiments.models import AuditEntry, ChangeProposal, Gate, Replay
from tests.experiments.genchi_support import BROKEN, history_agent, proposal_in_gates, replay_chunk
from tests.experiments.helpers import HTMX
from tests.factories import make_editor, make_reviewer, make_user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_replays")]

Status = ChangeProposal.Status


@pytest.fixture
def proposal(db) -> ChangeProposal:
    """In its gates: a replay of 60 past tasks running (24 done), then the probes."""
    agent = history_agent(tasks=60, name="triage", gates={"shadow": "never", "replay_sample": 60})
    proposal = proposal_in_gates(agent)
    replay_chunk(proposal.gates.get(kind="replay").replay_id)
    return proposal


def _gate(proposal: ChangeProposal, kind: str = "replay") -> Gate:
    return proposal.gates.select_related("replay").get(kind=kind)


def _override(gate: Gate) -> str:
    return reverse("experiments-gate-override", kwargs={"pk": gate.pk})


def _failed_gate_proposal(*, probes: bool = False) -> ChangeProposal:
    """Rejected by its replay gate: a broken template, replayed to its verdict
    (with ``probes``, its probes gate never ran)."""
    gates = {"adversarial": "every" if probes else "never", "shadow": "never", "replay_sample": 300}
    agent = history_agent(tasks=300, seed=4, name="triage", gates=gates)
    proposal = proposal_in_gates(agent, BROKEN)
    replay_id = _gate(proposal).replay_id
    while Replay.objects.get(pk=replay_id).is_open:
        replay_chunk(replay_id)
    kaizen.gates_advance(proposal_id=proposal.pk)
    proposal.refresh_from_db()
    assert proposal.status == Status.REJECTED and _gate(proposal).state == Gate.State.FAILED
    return proposal


# --- the proposal's page ---------------------------------------------------------------------


def test_a_proposal_page_shows_its_gates_live_with_the_running_ones_progress(client, ana, proposal):
    client.force_login(ana)
    gate = _gate(proposal)

    html = client.get(proposal.get_absolute_url()).content.decode()

    assert f'ws-connect="/ws/kaizen/?proposal={proposal.pk}"' in html
    assert f'data-live-url="/kaizen/proposals/{proposal.pk}/live/"' in html
    assert '<span class="evo-status evo-status--validating">In its gates</span>' in html
    section = html[html.index(f'<div id="gates-{proposal.pk}"') :]
    assert section.index("Replay on past work") < section.index("Adversarial probes")
    assert '<span class="evo-status evo-status--running">Running</span>' in section
    assert '<span class="evo-status evo-status--waiting">Waiting</span>' in section
    assert re.search(r'<progress class="replay-bar" max="60" value="24"', section)
    assert '<span class="replay-count">24 / 60</span>' in section
    assert re.search(r'<span class="muted replay-eta">about \d+ (s|min) left</span>', section)
    # The skip form of each gate not decided yet, plain (it comes back here), with its CSRF token.
    assert f'<details class="evo-action evo-action--skip" id="gate-{gate.pk}-skip">' in html
    form = html[html.index(f'id="gate-{gate.pk}-skip"') :]
    form = form[: form.index("</form>")]
    assert f'action="{_override(gate)}"' in form and "hx-post" not in form
    assert '<input type="hidden" name="from" value="proposal">' in form
    assert "csrfmiddlewaretoken" in form
    # Rejecting it stops its gates: offered while it is in them.
    assert f'action="/kaizen/proposals/{proposal.pk}/reject/"' in html


def test_the_proposal_pages_live_parts_are_out_of_band(client, ana, proposal):
    client.force_login(ana)

    response = client.get(reverse("experiments-proposal-live", kwargs={"pk": proposal.pk}))

    assert response.status_code == 200
    html = response.content.decode()
    for element in (
        f'<p class="task-badges" id="proposal-badges-{proposal.pk}"',
        f'<div id="proposal-decision-{proposal.pk}"',
        f'<div id="gates-{proposal.pk}"',
        f'<div id="proposal-experiment-{proposal.pk}"',
        f'<section id="proposal-audit-{proposal.pk}"',
    ):
        assert re.search(re.escape(element) + r'[^>]*hx-swap-oob="outerHTML"', html), element
    # Items inside a part are not swapped on their own.
    assert html.count("hx-swap-oob") == 5
    assert "<html" not in html


def test_a_failed_gate_offers_its_override_on_the_proposal_page(client, ana):
    proposal = _failed_gate_proposal(probes=True)
    gate = _gate(proposal)
    client.force_login(ana)

    html = client.get(proposal.get_absolute_url()).content.decode()

    assert '<span class="evo-status evo-status--failed">Failed</span>' in html
    # The probes never ran, and never will unless the failure is overridden: not "waiting".
    probes = html[html.index(f'id="gate-{_gate(proposal, "adversarial").pk}"') :]
    assert '<span class="evo-status evo-status--cancelled">Not run</span>' in probes[: probes.index("</li>")]
    assert "Starts once the gates before it have passed." not in html
    assert f'id="gate-{gate.pk}-override"' in html
    assert '<table class="data-table replay-stats">' in html
    assert '<span class="verdict verdict--fail">Fail</span>' in html
    assert "Passed before, fail now" in html


# --- the replay's page -----------------------------------------------------------------------


def test_a_replay_page_is_live_and_says_its_outputs_are_simulated(client, ana, proposal):
    replay = _gate(proposal).replay
    client.force_login(ana)

    html = client.get(replay.get_absolute_url()).content.decode()

    assert f'ws-connect="/ws/kaizen/?replay={replay.pk}"' in html
    assert f'data-live-url="/kaizen/replays/{replay.pk}/live/"' in html
    assert '<span class="replay-count">24 / 60</span>' in html
    assert f'<div id="replay-cancel-{replay.pk}">' in html and "Cancel this replay" in html
    # The agent runs the simulated model: its outputs say so, beside each.
    assert "Both versions run the offline simulated model" in html
    item = html[html.index('class="replay-item replay-item--done"') :]
    item = item[: item.index("</tr>")]
    assert item.count('<span class="badge badge--sim"') == 2
    assert html.count('class="replay-item replay-item--pending"') == 36


def test_the_replay_pages_live_parts_are_out_of_band(client, ana, proposal):
    replay = _gate(proposal).replay
    client.force_login(ana)

    response = client.get(reverse("experiments-replay-live", kwargs={"pk": replay.pk}))

    html = response.content.decode()
    assert response.status_code == 200
    for element in (
        f'<div id="replay-{replay.pk}"',
        f'<div id="replay-cancel-{replay.pk}"',
        f'<section id="replay-items-{replay.pk}"',
        f'<section id="replay-audit-{replay.pk}"',
    ):
        assert re.search(re.escape(element) + r'[^>]*hx-swap-oob="outerHTML"', html), element
    assert html.count("hx-swap-oob") == 4


def test_only_the_version_that_runs_the_simulated_model_is_called_simulated(client, ana):
    agent = history_agent(tasks=30, gates={"shadow": "never", "adversarial": "never"})
    # The candidate runs a real model; the active version (v1) the simulated one.
    agent.cascade = [
        {"provider": "openai", "model": "gpt-4o-mini", "price_in": "0.00015", "price_out": "0.0006"}
    ]
    proposal = proposal_in_gates(agent)
    client.force_login(ana)

    html = client.get(_gate(proposal).replay.get_absolute_url()).content.decode()

    assert "v1 runs the offline simulated model: its outputs are made up." in html
    assert "Both versions run" not in html


def test_an_approver_cancels_a_replay(client, ana, proposal):
    replay = _gate(proposal).replay
    client.force_login(ana)

    response = client.post(
        reverse("experiments-replay-cancel", kwargs={"pk": replay.pk}), {"note": "Seen enough."}
    )

    assert (response.status_code, response.url) == (302, replay.get_absolute_url())
    replay.refresh_from_db()
    assert replay.state == Replay.State.CANCELLED
    entry = AuditEntry.objects.get(replay=replay, action="replay_cancelled")
    assert (entry.user, "Seen enough." in entry.reason) == (ana, True)
    page = client.get(response.url).content.decode()
    assert "Cancelled the replay of v2." in page
    assert "Cancel this replay" not in page


# --- the review page -------------------------------------------------------------------------


def test_the_review_lists_a_proposals_gates_with_the_running_ones_progress(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)

    html = client.get(reverse("experiments-review")).content.decode()

    item = html[html.index(f'<li id="proposal-{proposal.pk}"') :]
    strip = item[item.index(f'<div id="proposal-{proposal.pk}-gates"') :]
    strip = strip[: strip.index('<div class="evo-columns">')]
    assert re.findall(r'<span class="gate-chip-kind">([^<]+)</span>', strip) == [
        "Replay on past work",
        "Adversarial probes",
    ]
    assert '<li class="gate-chip gate-chip--running"' in strip
    assert '<span class="replay-count">24 / 60</span>' in strip
    assert f'href="/kaizen/replays/{gate.replay_id}/"' in strip
    # The review's forms post with htmx.
    assert f'hx-post="{_override(gate)}"' in strip
    assert "In its gates: seen on real work before its canary" in item


def test_the_review_says_what_seeing_cost_in_the_last_seven_days(client, ana, proposal):
    spent = sum(ModelCall.every.exclude(purpose="live").values_list("cost", flat=True))
    assert spent > 0
    client.force_login(ana)

    html = client.get(reverse("experiments-review")).content.decode()

    assert (
        f"Seeing changes cost {money(float(spent))} in the last 7 days (replays, shadows, probes), "
        "apart from production cost." in html
    )


# --- skipping and overriding ---------------------------------------------------------------------


def test_skipping_a_gate_from_the_proposal_page_comes_back_with_a_message(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)

    response = client.post(
        _override(gate),
        {"note": "Replayed by hand yesterday.", "next": proposal.get_absolute_url(), "from": "proposal"},
    )

    assert (response.status_code, response.url) == (302, proposal.get_absolute_url())
    gate.refresh_from_db()
    assert (gate.state, gate.note, gate.decided_by) == (
        Gate.State.SKIPPED,
        "Replayed by hand yesterday.",
        ana,
    )
    assert gate.replay.state == Replay.State.CANCELLED
    assert _gate(proposal, "adversarial").state == Gate.State.RUNNING
    page = client.get(response.url).content.decode()
    assert "Replay on past work skipped for the change to triage (v2): it goes on to its next gate." in page
    assert "ana:</span> Replayed by hand yesterday." in page


def test_a_skip_without_a_note_is_422_with_the_gates_form_open_on_the_proposal_page(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)

    response = client.post(
        _override(gate), {"note": "  ", "next": proposal.get_absolute_url(), "from": "proposal"}
    )

    assert response.status_code == 422
    html = response.content.decode()
    assert f'<details class="evo-action evo-action--skip" id="gate-{gate.pk}-skip" open>' in html
    assert 'aria-invalid="true"' in html
    assert "Say why: it goes to the audit log with the change." in html
    assert f'<li class="gate gate--running evo-item--error" id="gate-{gate.pk}">' in html
    gate.refresh_from_db()
    assert gate.state == Gate.State.RUNNING
    assert not AuditEntry.objects.filter(proposal=proposal, action="gate_skipped").exists()


def test_a_skip_with_htmx_from_the_review_answers_its_sections_and_the_message(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)

    response = client.post(_override(gate), {"note": "Urgent."}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'<section id="proposals"[^>]*hx-swap-oob="outerHTML"', html)
    assert "Replay on past work skipped for the change to triage (v2)" in html
    assert '<li class="gate-chip gate-chip--skipped"' in html
    gate.refresh_from_db()
    assert gate.state == Gate.State.SKIPPED


def test_a_skip_without_a_note_with_htmx_is_422_with_the_form_open_in_the_review(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)

    response = client.post(_override(gate), {"note": ""}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert f'<details class="evo-action evo-action--skip" id="gate-{gate.pk}-skip" open>' in html
    assert '<p class="flash flash--error">Say why: it goes to the audit log with the change.</p>' in html
    gate.refresh_from_db()
    assert gate.state == Gate.State.RUNNING


def test_a_gate_decided_meanwhile_is_409(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)
    client.post(_override(gate), {"note": "Urgent."}, headers=HTMX)

    response = client.post(_override(gate), {"note": "Urgent, again."}, headers=HTMX)

    assert response.status_code == 409
    assert "there is nothing to skip or override" in response.content.decode()
    assert AuditEntry.objects.filter(proposal=proposal, action="gate_skipped").count() == 1


def test_overriding_a_failed_gate_puts_the_proposal_back_on_its_way(client, ana):
    proposal = _failed_gate_proposal()
    gate = _gate(proposal)
    client.force_login(ana)

    missing = client.post(_override(gate), {"note": "", "from": "proposal"})
    assert missing.status_code == 422
    assert f'id="gate-{gate.pk}-override" open>' in missing.content.decode()

    response = client.post(
        _override(gate),
        {
            "note": "The history is from the old form.",
            "next": proposal.get_absolute_url(),
            "from": "proposal",
        },
    )
    assert response.status_code == 302
    gate.refresh_from_db()
    proposal.refresh_from_db()
    assert gate.state == Gate.State.OVERRIDDEN
    assert proposal.status == Status.EXPERIMENTING
    page = client.get(response.url).content.decode()
    assert (
        "Replay on past work overridden for the change to triage (v2): its gates are cleared, "
        "and its canary experiment has started." in page
    )


# --- who may ----------------------------------------------------------------------------------


@pytest.mark.parametrize("person", [make_editor, make_reviewer, make_user])
def test_people_without_the_approve_permission_get_403_on_every_new_page_and_post(client, proposal, person):
    gate = _gate(proposal)
    replay = gate.replay
    client.force_login(person())
    entries = AuditEntry.objects.count()

    for url in (
        proposal.get_absolute_url(),
        reverse("experiments-proposal-live", kwargs={"pk": proposal.pk}),
        replay.get_absolute_url(),
        reverse("experiments-replay-live", kwargs={"pk": replay.pk}),
    ):
        assert client.get(url).status_code == 403, url
    for url in (_override(gate), reverse("experiments-replay-cancel", kwargs={"pk": replay.pk})):
        assert client.post(url, {"note": "x"}).status_code == 403, url
        assert client.post(url, {"note": "x"}, headers=HTMX).status_code == 403, url

    gate.refresh_from_db()
    replay.refresh_from_db()
    assert (gate.state, replay.state) == (Gate.State.RUNNING, Replay.State.RUNNING)
    assert AuditEntry.objects.count() == entries


def test_unknown_proposals_replays_and_gates_are_404(client, ana):
    client.force_login(ana)

    for name in ("experiments-proposal-live", "experiments-replay", "experiments-replay-live"):
        assert client.get(reverse(name, kwargs={"pk": 999999})).status_code == 404, name
    for name in ("experiments-gate-override", "experiments-replay-cancel"):
        assert client.post(reverse(name, kwargs={"pk": 999999}), {"note": "x"}).status_code == 404, name


def test_the_new_pages_want_get_and_the_posts_want_post(client, ana, proposal):
    gate = _gate(proposal)
    client.force_login(ana)

    assert client.post(reverse("experiments-proposal-live", kwargs={"pk": proposal.pk})).status_code == 405
    assert client.post(reverse("experiments-replay-live", kwargs={"pk": gate.replay_id})).status_code == 405
    assert client.get(_override(gate)).status_code == 405
