"""Failure warnings in the andon inbox (andon.failure_warnings): an open
escalation is shown how reviewers decided its agent's most similar past
escalations, summed up; unrelated work, another agent's work and the task's own
attempts are not used; nothing is shown when there is nothing similar. At its
decision, the escalation records whether a warning was shown and how long the
decision took; the inbox compares the medians.

Real sentence embeddings (the local MiniLM): past decisions are written by the
reviewers' services and embedded by the knowledge base's own service."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from andon import failure_warnings
from andon import services as andon_services
from andon.demo_reviewer import simulated_reviewer_user
from andon.models import Escalation, has_similar_cases
from andon.selectors import warning_times_get
from boards import services as board_services
from boards.models import Agent, Board, Column
from experiments import knowledge, vectors
from experiments.embeddings import get_embedder
from experiments.models import Pattern
from tests.andon.helpers import DEFECTIVE, claim_one, complete
from tests.factories import column, make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db

URL = "/andon/"

# Draft replies about a double charge: the same kind of task, other details.
REFUNDS = [
    (
        "Reply to #48213 (Laura M.)",
        "Charged 19.90 twice on 4 March (SUB-58812). Refund of 19.90 issued today.",
    ),
    (
        "Reply to #48500 (Mr. Okafor)",
        "Charged 29.00 twice on 9 March (SUB-59120). Refund of 29.00 issued today.",
    ),
    ("Reply to #48777 (Jana)", "Charged 34.50 twice on 12 March (SUB-58001). Refund of 34.50 issued today."),
    (
        "Reply to #49001 (Priya S.)",
        "Charged 9.90 twice on 20 March (SUB-59950). Refund of 9.90 issued today.",
    ),
]
NEW_REFUND = (
    "Reply to #49310 (Tomás R.)",
    "Charged 58.00 twice on 22 March (SUB-58440). Refund of 58.00 issued today.",
)
# Work of another kind for the same agent.
WELCOMES = [
    ("Draft a welcome note for Sam", "Sam joins the warehouse team on Monday as shift lead; likes cycling."),
    ("Draft a welcome note for Noor", "Noor joins the finance team on the 3rd as analyst; likes chess."),
    ("Draft a welcome note for Ada", "Ada joins the marketing team on the 15th as trainee; likes jazz."),
]


@pytest.fixture(autouse=True)
def _fresh_index():
    """The numpy index is kept per process; each test's database is its own."""
    vectors.indexes_clear()
    yield
    vectors.indexes_clear()


def _line(name: str = "Support") -> tuple[Board, Agent]:
    """A board whose agent's every output goes to Review (a low confidence), and
    whose rejected tasks fail rather than come back (one attempt each), so the
    tests' own tasks never wait on a WIP limit."""
    board = make_board(name=name, ready_limit=None, doing_limit=None)
    review = column(board, Column.Role.REVIEW)
    review.wip_limit = None
    review.save()
    agent = make_agent(boards=[board], max_attempts=1, spike_defects=1000, spike_window=1000)
    return board, agent


def _escalate(board: Board, title: str, input: str) -> Escalation:
    task, claim = claim_one(board, title=title, input=input)
    assert complete(claim, confidence=DEFECTIVE)
    return Escalation.objects.select_related("task").get(task=task, status=Escalation.Status.OPEN)


def _history(board: Board, reviewer, decisions: list[tuple[tuple[str, str], str, str]]) -> list[Escalation]:
    """Past escalations of ``board``, each decided ("reject", "approve" or
    "correct") with its reason or note; then embedded, as the embedder's beat would."""
    decided = []
    for (title, input), action, text in decisions:
        escalation = _escalate(board, title, input)
        if action == "reject":
            andon_services.escalation_reject(escalation=escalation, user=reviewer, reason=text)
        elif action == "correct":
            andon_services.escalation_correct(
                escalation=escalation, user=reviewer, output="A better reply. The support team", note=text
            )
        else:
            andon_services.escalation_approve(escalation=escalation, user=reviewer, note=text)
        decided.append(escalation)
    knowledge.patterns_embed(budget_seconds=60)
    return decided


def _warned(escalation: Escalation) -> dict:
    failure_warnings.escalation_warnings_compute()
    escalation.refresh_from_db()
    assert escalation.similar_at is not None
    return escalation.similar


# --- what is found, and how it is said ------------------------------------------------


def test_similar_rejected_escalations_warn_an_open_one_with_their_commonest_reason():
    board, _ = _line()
    ana = make_reviewer(username="ana")
    past = _history(
        board,
        ana,
        [
            (REFUNDS[0], "reject", "Tone too informal."),
            (REFUNDS[1], "reject", "Tone too  informal"),
            (REFUNDS[2], "reject", "Does not give the refund's timing."),
            (REFUNDS[3], "approve", ""),
        ],
    )
    open_ = _escalate(board, *NEW_REFUND)

    similar = _warned(open_)

    assert similar["summary"] == "3 of 4 similar tasks were rejected: Tone too informal (2 of the 3)"
    assert similar["tone"] == "warn"
    assert similar["counts"] == {"rejected": 3, "corrected": 0, "approved": 1}
    cases = similar["cases"]
    assert {case["task"] for case in cases} == {e.task_id for e in past}
    assert [case["similarity"] for case in cases] == sorted((c["similarity"] for c in cases), reverse=True)
    assert all(case["similarity"] >= 0.7 for case in cases)
    first = next(case for case in cases if case["task"] == past[0].task_id)
    assert first["verdict"] == "rejected"
    assert first["reason"] == "Tone too informal."
    assert first["reviewer"] == "ana" and first["simulated"] is False
    assert first["title"] == REFUNDS[0][0] and first["board"] == board.slug
    assert first["escalation"] == past[0].pk


def test_reasons_that_say_the_same_thing_in_other_words_are_counted_together():
    embedder = get_embedder()
    reasons = ["Tone too informal.", "the tone is too casual", "Missing the signature"]

    assert failure_warnings.commonest_reason(reasons) == failure_warnings.CommonReason("Tone too informal", 1)
    assert failure_warnings.commonest_reason(reasons, embedder) == failure_warnings.CommonReason(
        "Tone too informal", 2
    )


def test_the_simulated_reviewers_label_and_figures_do_not_split_its_reasons():
    reasons = [
        "Simulated reviewer: fails the under 150 words check (151 words, more than the maximum 150); fix that.",
        "Simulated reviewer: fails the under 150 words check (180 words, more than the maximum 150); fix that.",
    ]

    common = failure_warnings.commonest_reason(reasons)

    assert common is not None and common.count == 2
    assert common.text.startswith("fails the under 150 words check (151 words")


def test_mostly_approved_similar_work_is_said_neutrally():
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(board, ana, [(refund, "approve", "") for refund in REFUNDS])
    open_ = _escalate(board, *NEW_REFUND)

    similar = _warned(open_)

    assert similar["summary"] == "4 similar tasks were approved"
    assert similar["tone"] == "info"


def test_unrelated_past_work_of_the_same_agent_gives_no_warning():
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(board, ana, [(welcome, "reject", "Tone too informal.") for welcome in WELCOMES])
    open_ = _escalate(board, *NEW_REFUND)

    similar = _warned(open_)

    assert similar["cases"] == []
    assert "summary" not in similar
    assert open_.similar_warning is None


def test_another_agents_escalations_are_not_used():
    board, _ = _line()
    other_board, _ = _line("Other support")
    ana = make_reviewer(username="ana")
    _history(other_board, ana, [(refund, "reject", "Tone too informal.") for refund in REFUNDS])
    open_ = _escalate(board, *NEW_REFUND)

    assert _warned(open_)["cases"] == []


def test_the_tasks_own_earlier_attempts_are_not_used():
    board, agent = _line()
    agent.max_attempts = 3
    agent.save()
    ana = make_reviewer(username="ana")
    first = _escalate(board, *NEW_REFUND)
    andon_services.escalation_reject(escalation=first, user=ana, reason="Tone too informal.")
    knowledge.patterns_embed(budget_seconds=60)
    # The same task, back from Ready, escalated again.
    [claim] = [c for c in board_services.board_pull(board_id=board.pk) if c.task_id == first.task_id]
    assert complete(claim, confidence=DEFECTIVE)
    again = Escalation.objects.get(task_id=first.task_id, status=Escalation.Status.OPEN)

    assert _warned(again)["cases"] == []


def test_an_escalation_opened_before_any_history_shows_nothing(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    open_ = _escalate(board, *NEW_REFUND)

    assert _warned(open_)["cases"] == []
    client.force_login(ana)
    html = client.get(URL).content.decode()
    assert NEW_REFUND[0] in html
    assert "similar-warning" not in html.split('id="escalation-list"')[1]


def test_warnings_wait_for_the_history_before_them_to_be_embedded():
    board, _ = _line()
    ana = make_reviewer(username="ana")
    past = _escalate(board, *REFUNDS[0])
    andon_services.escalation_reject(escalation=past, user=ana, reason="Tone too informal.")
    open_ = _escalate(board, *NEW_REFUND)

    assert failure_warnings.escalation_warnings_compute() == []
    knowledge.patterns_embed(budget_seconds=60)
    # An attempt that passed meanwhile, not embedded yet: warnings do not use it, nor wait for it.
    _, claim = claim_one(board, title="Another reply", input="Thanks for your order.")
    assert complete(claim)
    assert Pattern.objects.filter(vector__isnull=True, verdict=Pattern.Verdict.PASSED).exists()
    assert failure_warnings.escalation_warnings_compute() == [open_.pk]

    open_.refresh_from_db()
    assert open_.similar["summary"] == "1 similar task was rejected: Tone too informal"
    # Computed once: a second call has nothing to do.
    assert failure_warnings.escalation_warnings_compute() == []


def test_the_embedder_beat_embeds_the_history_then_warns_the_open_escalations():
    from experiments import tasks

    board, _ = _line()
    ana = make_reviewer(username="ana")
    past = _escalate(board, *REFUNDS[0])
    andon_services.escalation_reject(escalation=past, user=ana, reason="Tone too informal.")
    open_ = _escalate(board, *NEW_REFUND)

    assert tasks.embed_patterns() >= 1

    open_.refresh_from_db()
    assert open_.similar["summary"] == "1 similar task was rejected: Tone too informal"


def test_a_call_gives_at_least_one_warning_and_stops_once_its_time_is_spent():
    board, _ = _line()
    first = _escalate(board, *NEW_REFUND)
    second = _escalate(board, *WELCOMES[0])

    assert failure_warnings.escalation_warnings_compute(budget_seconds=0) == [first.pk]
    assert failure_warnings.escalation_warnings_compute(budget_seconds=0) == [second.pk]


def test_a_warning_is_not_written_to_an_escalation_decided_meanwhile():
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(board, ana, [(REFUNDS[0], "reject", "Tone too informal.")])
    open_ = _escalate(board, *NEW_REFUND)
    andon_services.escalation_approve(escalation=open_, user=ana)

    assert failure_warnings.escalation_warnings_compute() == []
    open_.refresh_from_db()
    assert open_.similar is None and open_.warned is False


# --- the inbox ------------------------------------------------------------------------


def test_the_inbox_shows_the_warning_and_its_cases_to_a_reviewer(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    past = _history(
        board,
        ana,
        [(REFUNDS[0], "reject", "Tone too informal."), (REFUNDS[1], "reject", "Tone too informal")],
    )
    open_ = _escalate(board, *NEW_REFUND)
    failure_warnings.escalation_warnings_compute()
    client.force_login(ana)

    html = client.get(URL).content.decode()

    row = html[html.index(f'id="escalation-{open_.pk}"') :]
    section = row[row.index(f'id="escalation-{open_.pk}-similar"') :]
    section = section[: section.index("</section>")]
    assert "similar-warning--warn" in row[: row.index("</section>", row.index("similar-warning"))]
    assert (
        '<strong class="similar-flag">Warning:</strong> 2 similar tasks were rejected: Tone too informal'
        in section
    )
    assert "(2 rejected)" in section
    for escalation in past:
        task_url = f"/boards/{board.slug}/tasks/{escalation.task_id}/"
        assert f'href="{task_url}">{escalation.task.title}</a>' in section
        assert f'href="/andon/{escalation.pk}/"' in section
    assert re.search(r"\d+% similar", section)
    assert "“Tone too informal.”" in section and "by ana" in section
    # The disclosure is closed until the reviewer opens it.
    assert '<details class="similar-cases">' in section


def test_mostly_approved_similar_work_is_not_shown_as_a_warning(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(
        board, ana, [(refund, "approve", "") for refund in REFUNDS[:2]] + [(REFUNDS[2], "reject", "No.")]
    )
    open_ = _escalate(board, *NEW_REFUND)
    failure_warnings.escalation_warnings_compute()
    client.force_login(ana)

    html = client.get(URL).content.decode()

    row = html[html.index(f'id="escalation-{open_.pk}"') :]
    assert "similar-warning--info" in row
    assert "2 of 3 similar tasks were approved" in row
    assert "similar-flag" not in row and "Warning:" not in row


def test_the_escalation_page_shows_the_warning(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(board, ana, [(REFUNDS[0], "reject", "Tone too informal.")])
    open_ = _escalate(board, *NEW_REFUND)
    failure_warnings.escalation_warnings_compute()
    client.force_login(ana)

    html = client.get(open_.get_absolute_url()).content.decode()

    assert "How similar work was decided" in html
    assert "1 similar task was rejected: Tone too informal" in html


def test_the_simulated_reviewers_decisions_are_labelled_in_the_warning(client):
    board, _ = _line()
    robot = simulated_reviewer_user()
    _history(
        board, robot, [(refund, "reject", "Simulated reviewer: tone too informal.") for refund in REFUNDS[:2]]
    )
    open_ = _escalate(board, *NEW_REFUND)

    similar = _warned(open_)

    assert similar["summary"] == "2 similar tasks were rejected: tone too informal"
    assert similar["simulated"] == 2
    client.force_login(make_reviewer(username="ana"))
    row = client.get(URL).content.decode()
    assert "all by the simulated reviewer" in row


# --- time to decision, with a warning and without --------------------------------------


def _opened_ago(escalation: Escalation, seconds: float) -> None:
    Escalation.objects.filter(pk=escalation.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))
    escalation.refresh_from_db()


def test_a_decision_records_whether_a_warning_was_shown_and_how_long_it_took(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(board, ana, [(REFUNDS[0], "reject", "Tone too informal.")])
    warned = _escalate(board, *NEW_REFUND)
    plain = _escalate(board, *WELCOMES[0])
    failure_warnings.escalation_warnings_compute()
    _opened_ago(warned, 40)
    _opened_ago(plain, 90)

    andon_services.escalation_reject(escalation=warned, user=ana, reason="Tone too informal.")
    andon_services.escalation_approve(escalation=plain, user=ana)

    warned.refresh_from_db()
    plain.refresh_from_db()
    assert has_similar_cases(warned.similar) and warned.warned is True
    assert plain.warned is False
    assert 40 <= warned.decision_seconds < 45
    assert 90 <= plain.decision_seconds < 95
    client.force_login(ana)
    assert (
        "Failure warning</dt><dd>shown when it was decided"
        in client.get(warned.get_absolute_url()).content.decode()
    )
    assert (
        "Failure warning</dt><dd>none shown when it was decided"
        in client.get(plain.get_absolute_url()).content.decode()
    )


def test_a_group_decided_from_a_row_with_a_warning_counts_as_warned():
    board, _ = _line()
    ana = make_reviewer(username="ana")
    _history(board, ana, [(REFUNDS[0], "reject", "Tone too informal.")])
    leader = _escalate(board, *NEW_REFUND)
    failure_warnings.escalation_warnings_compute()
    twin = _escalate(board, *NEW_REFUND)  # identical, opened after: no warning of its own yet
    leader.refresh_from_db()
    twin.refresh_from_db()
    assert has_similar_cases(leader.similar) and twin.similar is None

    andon_services.escalations_approve(escalations=[leader, twin], user=ana)

    warned = Escalation.objects.filter(pk__in=[leader.pk, twin.pk]).values_list("warned", flat=True)
    assert list(warned) == [True, True]


def test_the_medians_with_and_without_a_warning_leave_the_simulated_reviewer_out(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    robot = simulated_reviewer_user()
    one_case = {"cases": [{"task": 1, "verdict": "rejected"}]}
    decided = []
    for seconds, similar, who in (
        (30, one_case, ana),
        (50, one_case, ana),
        (70, one_case, ana),
        (80, None, ana),
        (120, {"cases": []}, ana),
        (5, one_case, robot),
        (6, None, robot),
    ):
        escalation = _escalate(board, f"Task of {seconds} s", f"input {seconds}")
        Escalation.objects.filter(pk=escalation.pk).update(similar=similar)
        _opened_ago(escalation, seconds)
        andon_services.escalation_approve(escalation=escalation, user=who)
        decided.append(escalation)
    # Decided more than 30 days ago, and before warnings were recorded: not counted.
    old = _escalate(board, "Old", "old")
    andon_services.escalation_approve(escalation=old, user=ana)
    Escalation.objects.filter(pk=old.pk).update(decided_at=timezone.now() - timedelta(days=31))
    Escalation.objects.filter(pk=decided[0].pk).update(warned=None)  # as if decided before the feature

    times = warning_times_get()

    assert (times.warned, times.unwarned, times.simulated) == (2, 2, 2)
    assert 60 <= times.warned_median_s < 65  # median of 50 and 70
    assert 100 <= times.unwarned_median_s < 105  # median of 80 and 120
    client.force_login(ana)
    html = client.get(URL).content.decode()
    stats = html[html.index('id="warning-times"') :]
    stats = re.sub(r"\s+", " ", stats[: stats.index("</div>")])
    assert re.search(r"Decided in 6\d s <span[^>]*>\(median, 2 with a warning\)</span> vs 2 min", stats)
    assert "(2 without)" in stats
    assert "the simulated reviewer's 2 are left out" in stats


def test_the_figures_say_when_no_decision_had_a_warning_yet(client):
    board, _ = _line()
    ana = make_reviewer(username="ana")
    escalation = _escalate(board, *NEW_REFUND)
    _opened_ago(escalation, 30)
    andon_services.escalation_approve(escalation=escalation, user=ana)
    client.force_login(ana)

    html = client.get(URL).content.decode()

    stats = html[html.index('id="warning-times"') :]
    stats = re.sub(r"\s+", " ", stats[: stats.index("</div>")])
    assert re.search(r"Decided in 3\d s <span[^>]*>\(median, 1 without a warning; none with one yet\)", stats)
