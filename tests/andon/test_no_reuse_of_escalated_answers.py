"""An answer waiting for review is never served again: not from the response
cache (which stores an answer only once it passed inspection), not through
reuse (which takes only answers that passed, or that a reviewer approved). Two
identical tasks whose answer is escalated are one inbox row, decided at once.

Runs go through the real runtime (boards.agents.runtime.run) and the simulated
provider, whose answer is the same for the same prompt."""

from __future__ import annotations

import pytest

from andon import selectors
from andon import services as andon_services
from andon.models import Escalation, Inspection
from boards import services
from boards.agents import Output, cascade, response_cache, runtime
from boards.agents.provider_types import ModelResponse
from boards.models import Column, ModelCall, Task
from tests.factories import column, make_agent, make_board, make_reviewer
from tests.response_cache import settled

pytestmark = pytest.mark.django_db

Role = Column.Role
NEVER = [{"check": "regex", "name": "has-part-number", "must_match": "NEVER-MATCHES"}]
# The simulated model's confidence never reaches 1.0: this always escalates.
UNSURE = [{"check": "confidence", "min": 1.0}]
INPUT = "The invoice lists 40 units; we received 36."


def tier(model: str = "sim-small") -> dict:
    return {"provider": "simulated", "model": model, "parameters": {"latency_ms": 0, "error_rate": 0}}


def line(*, checks, review: bool = True, **agent_fields):
    board = make_board()
    if review:
        reviewing = column(board, Role.REVIEW)
        reviewing.wip_limit = None
        reviewing.save()
    else:
        column(board, Role.REVIEW).delete()
    agent = make_agent(
        boards=[board],
        cascade=[tier()],
        quality_checks=checks,
        spike_defects=1000,
        spike_window=1000,
        **agent_fields,
    )
    return board, agent


def run_one(board, *, title: str = "Check the invoice", input: str = INPUT) -> Task:
    task = services.task_create(board=board, title=title, input=input)
    [claim] = [c for c in services.board_pull(board_id=board.pk) if c.task_id == task.pk]
    runtime.run(claim.task_id, str(claim.lease_token))
    task.refresh_from_db()
    return task


def sources(task: Task) -> list[str]:
    return list(task.model_call_rows.order_by("pk").values_list("source", flat=True))


def test_an_escalated_answer_is_not_served_from_the_cache_to_the_next_identical_task(
    django_capture_on_commit_callbacks,
):
    board, _ = line(checks=NEVER, reuse_results=False)
    with django_capture_on_commit_callbacks() as committed:
        first = run_one(board)
    assert first.status == Task.Status.REVIEW
    # What the commit does for the cache runs (it has the answer, and its verdict).
    settled(committed)

    second = run_one(board, title="The same invoice again")

    assert second.status == Task.Status.REVIEW
    # Asked the model again: the answer in Review was not cached.
    assert sources(second) == [ModelCall.Source.MODEL]
    assert second.cache_hits == 0


def test_a_passing_answer_is_cached_once_its_inspection_committed(django_capture_on_commit_callbacks):
    board, _ = line(checks=[], reuse_results=False)
    with django_capture_on_commit_callbacks() as committed:
        first = run_one(board)
    assert first.status == Task.Status.DONE
    # Not committed yet (the test's transaction): not cached yet.
    assert sources(run_one(board, title="Before the commit")) == [ModelCall.Source.MODEL]
    settled(committed)

    second = run_one(board, title="The same invoice again")

    assert sources(second) == [ModelCall.Source.CACHE]
    assert second.output == first.output


def test_a_cached_answer_that_fails_inspection_now_is_dropped_from_the_cache(
    django_capture_on_commit_callbacks,
):
    board, agent = line(checks=[], reuse_results=False)
    with django_capture_on_commit_callbacks() as committed:
        run_one(board)
    settled(committed)
    agent.quality_checks = NEVER
    agent.save()

    with django_capture_on_commit_callbacks() as committed:
        served = run_one(board, title="Served from the cache, then a defect")
    settled(committed)
    again = run_one(board, title="Asks the model again")

    assert sources(served) == [ModelCall.Source.CACHE]
    assert served.status == Task.Status.REVIEW
    assert sources(again) == [ModelCall.Source.MODEL]


def test_the_cascade_stores_nothing_itself_and_hands_the_entries_to_the_completion():
    board, agent = line(checks=NEVER, reuse_results=False)
    task = services.task_create(board=board, title="Check", input=INPUT)

    output = cascade.implementation_for(agent).process(task)

    [(key, response)] = output.cache_entries
    assert response.text == output.text
    assert response_cache.cached_response(key) is None


def test_an_answer_in_review_is_not_reused():
    board, _ = line(checks=NEVER)
    first = run_one(board)
    assert first.status == Task.Status.REVIEW

    second = run_one(board, title="The same invoice again")

    assert second.reused_from_id is None
    assert ModelCall.Source.REUSE not in sources(second)


def test_a_defect_sent_to_done_by_a_board_without_review_is_not_reused():
    board, _ = line(checks=NEVER, review=False)
    first = run_one(board)
    assert first.status == Task.Status.DONE
    assert Inspection.objects.get(task=first).passed is False

    second = run_one(board, title="The same invoice again")

    assert second.reused_from_id is None
    assert ModelCall.Source.REUSE not in sources(second)


def test_an_answer_that_passed_is_still_reused():
    board, _ = line(checks=[])
    first = run_one(board)

    second = run_one(board, title="The same invoice again")

    assert second.reused_from_id == first.pk
    assert sources(second) == [ModelCall.Source.REUSE]


def test_an_approved_answer_is_reused_with_the_reviewers_word_for_it():
    board, _ = line(checks=UNSURE)
    first = run_one(board)
    escalation = Escalation.objects.get(task=first)
    andon_services.escalation_approve(escalation=escalation, user=make_reviewer())

    second = run_one(board, title="The same invoice again")

    # The model's doubt, which the reviewer settled, does not escalate it again.
    assert second.reused_from_id == first.pk
    assert (second.status, second.output) == (Task.Status.DONE, first.output)
    assert (second.confidence, second.confidence_source) == (1.0, runtime.REVIEWED)


def test_a_corrected_answer_is_reused_as_corrected():
    board, _ = line(checks=UNSURE)
    first = run_one(board)
    escalation = Escalation.objects.get(task=first)
    andon_services.escalation_correct(
        escalation=escalation, user=make_reviewer(), output="36 of 40 units arrived."
    )

    second = run_one(board, title="The same invoice again")

    assert second.reused_from_id == first.pk
    assert (second.status, second.output) == (Task.Status.DONE, "36 of 40 units arrived.")


def test_two_identical_escalated_tasks_are_one_inbox_row_and_one_decision_decides_both():
    board, _ = line(checks=NEVER)
    first = run_one(board, title="Invoice 1187")
    second = run_one(board, title="Invoice 1187, resent")

    [row] = selectors.inbox_groups_get()
    assert [m.task_id for m in row.members] == [first.pk, second.pk]

    result = andon_services.escalations_approve(escalations=row.members, user=make_reviewer())

    assert len(result.decided) == 2
    for task in (first, second):
        task.refresh_from_db()
        assert task.status == Task.Status.DONE
        assert Escalation.objects.get(task=task).status == Escalation.Status.APPROVED


def test_a_batch_keeps_a_fresh_answer_stored_under_the_key_a_defect_of_it_was_served_from():
    # One batch: a defect served from entry K (dropped), and a run whose fresh
    # answer for K passed (stored): the fresh answer is what the cache keeps.
    key = "response:one-key"
    fresh = ModelResponse(
        text="Short by 4 units.", confidence=0.9, tokens_in=12, tokens_out=16, latency_ms=5.0
    )
    served = Output(text="Short by 2 units.", confidence=0.9, cached_from=key)
    answered = Output(text=fresh.text, confidence=0.9, cache_entries=((key, fresh),))

    response_cache.settle_cache([(served, False), (answered, True)])

    assert response_cache.cached_response(key) == fresh
