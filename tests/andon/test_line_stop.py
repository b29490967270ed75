"""Stopping the line: an agent whose defects spike stops on its own; a reviewer can
pull the andon cord on a board or an agent; only a reviewer, with a note, restarts
it; and every stop and restart is kept."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction

from andon import selectors
from andon import services as andon_services
from andon.models import Escalation, LineStop
from boards import services
from boards.models import Task
from tests.andon.helpers import DEFECTIVE, claim_one, complete, pull
from tests.factories import column, make_agent, make_board, make_reviewer, make_user

Kind = LineStop.Kind


@pytest.fixture
def spiky(board):
    # Review has room for every escalation these tests make.
    review = column(board, "review")
    review.wip_limit = 20
    review.save()
    return make_agent(boards=[board], concurrency=10, spike_defects=3, spike_window=10)


def _outputs(board, verdicts: str) -> None:
    """Complete one run per letter: P passes, D is a defect."""
    for n, verdict in enumerate(verdicts):
        _, claim = claim_one(board, input=f"output {n}")
        assert complete(claim, confidence=0.95 if verdict == "P" else DEFECTIVE)


def _waiting(board, n: int = 1) -> None:
    for i in range(n):
        services.task_create(board=board, title=f"waiting {i}", input=f"waiting {i}")


# --- the defect spike ------------------------------------------------------------------


@pytest.mark.django_db
def test_three_defects_in_the_last_ten_outputs_stop_the_agents_line(board, spiky):
    _outputs(board, "PDPPDP")
    assert not LineStop.objects.exists()

    _outputs(board, "D")

    stop = LineStop.objects.get()
    assert (stop.kind, stop.agent_id, stop.board_id) == (Kind.DEFECT_SPIKE, spiky.pk, None)
    assert stop.is_active and stop.stopped_by is None
    assert "3 defects" in stop.reason and spiky.name in stop.reason


@pytest.mark.django_db
def test_defects_older_than_the_window_do_not_count(board, spiky):
    _outputs(board, "DD" + "P" * 9 + "D")

    assert not LineStop.objects.exists()


@pytest.mark.django_db
def test_a_stopped_agent_pulls_nothing_while_others_on_the_board_do(board, spiky):
    _outputs(board, "DDD")
    _waiting(board)
    assert pull(board) == []

    other = make_agent(boards=[board])

    [claim] = pull(board)
    assert Task.objects.get(pk=claim.task_id).agent_id == other.pk


@pytest.mark.django_db
def test_restarting_the_line_needs_a_reviewer(board, spiky):
    _outputs(board, "DDD")
    stop = LineStop.objects.get()

    with pytest.raises(PermissionDenied):
        andon_services.line_restart(line_stop=stop, user=make_user(), note="fixed the prompt")

    assert LineStop.objects.get().is_active


@pytest.mark.django_db
def test_restarting_the_line_needs_a_note(board, spiky):
    _outputs(board, "DDD")
    stop = LineStop.objects.get()

    with pytest.raises(ValidationError) as error:
        andon_services.line_restart(line_stop=stop, user=make_reviewer(), note="   ")

    assert "note" in error.value.message_dict
    assert LineStop.objects.get().is_active


@pytest.mark.django_db
def test_after_a_restart_the_agent_pulls_again(board, spiky):
    _outputs(board, "DDD")
    _waiting(board)
    who = make_reviewer()

    stop = andon_services.line_restart(
        line_stop=LineStop.objects.get(), user=who, note="tightened the prompt"
    )

    assert (stop.restarted_by, stop.restart_note) == (who, "tightened the prompt")
    assert stop.restarted_at is not None and not stop.is_active
    [claim] = pull(board)
    assert Task.objects.get(pk=claim.task_id).agent_id == spiky.pk


@pytest.mark.django_db
def test_a_line_is_restarted_once(board, spiky):
    _outputs(board, "DDD")
    first = make_reviewer(username="ana")
    andon_services.line_restart(line_stop=LineStop.objects.get(), user=first, note="fixed")

    with pytest.raises(ValidationError, match="already restarted by ana"):
        andon_services.line_restart(line_stop=LineStop.objects.get(), user=make_reviewer(), note="me too")


@pytest.mark.django_db
def test_after_a_restart_the_defects_that_stopped_the_line_do_not_stop_it_again(board, spiky):
    _outputs(board, "DDD")
    andon_services.line_restart(
        line_stop=LineStop.objects.get(), user=make_reviewer(), note="fixed the prompt"
    )

    _outputs(board, "D")

    assert not LineStop.objects.filter(restarted_at__isnull=True).exists()


@pytest.mark.django_db
def test_every_stop_and_restart_is_kept(board, spiky):
    who = make_reviewer()
    _outputs(board, "DDD")
    andon_services.line_restart(line_stop=LineStop.objects.get(), user=who, note="first fix")
    _outputs(board, "DDD")
    andon_services.line_restart(
        line_stop=LineStop.objects.get(restarted_at__isnull=True), user=who, note="second fix"
    )

    history = selectors.line_stops_history_get()

    assert [(s.kind, s.restart_note) for s in history] == [
        (Kind.DEFECT_SPIKE, "second fix"),
        (Kind.DEFECT_SPIKE, "first fix"),
    ]
    assert all(s.restarted_by == who for s in history)


# --- the andon cord ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_reviewer_stops_a_board_and_nothing_is_pulled(board, agent):
    who = make_reviewer()
    _waiting(board)

    stop = andon_services.line_stop(user=who, board=board, reason="wrong input files loaded")

    assert (stop.kind, stop.board_id, stop.agent_id, stop.stopped_by) == (Kind.CORD, board.pk, None, who)
    assert pull(board) == []
    assert Task.objects.filter(board=board, status=Task.Status.READY).count() == 1


@pytest.mark.django_db
def test_a_board_stop_leaves_other_boards_running(board, agent):
    elsewhere = make_board()
    make_agent(boards=[elsewhere])
    _waiting(elsewhere)

    andon_services.line_stop(user=make_reviewer(), board=board, reason="wrong input files loaded")

    assert len(pull(elsewhere)) == 1


@pytest.mark.django_db
def test_a_reviewer_stops_one_agent_and_the_others_keep_pulling(board):
    stopped = make_agent(boards=[board], concurrency=10)
    _waiting(board, 2)

    andon_services.line_stop(user=make_reviewer(), agent=stopped, reason="answers in the wrong language")

    assert pull(board) == []
    running = make_agent(boards=[board], concurrency=10)
    assert {Task.objects.get(pk=c.task_id).agent_id for c in pull(board)} == {running.pk}


@pytest.mark.django_db
def test_restarting_a_cord_stop_lets_the_board_pull_again(board, agent):
    who = make_reviewer()
    stop = andon_services.line_stop(user=who, board=board, reason="wrong input files loaded")
    _waiting(board)

    andon_services.line_restart(line_stop=stop, user=who, note="reloaded the inputs")

    assert len(pull(board)) == 1


@pytest.mark.django_db
def test_a_non_reviewer_cannot_pull_the_cord(board, agent):
    with pytest.raises(PermissionDenied):
        andon_services.line_stop(user=make_user(), board=board, reason="looks wrong")
    with pytest.raises(PermissionDenied):
        andon_services.line_stop(user=make_user(), agent=agent, reason="looks wrong")

    assert not LineStop.objects.exists()


@pytest.mark.django_db
def test_pulling_the_cord_needs_a_reason(board):
    with pytest.raises(ValidationError) as error:
        andon_services.line_stop(user=make_reviewer(), board=board, reason="")

    assert "reason" in error.value.message_dict
    assert not LineStop.objects.exists()


@pytest.mark.django_db
def test_a_cord_stops_a_board_or_an_agent_not_both(board, agent):
    with pytest.raises(ValidationError, match="either a board or an agent"):
        andon_services.line_stop(user=make_reviewer(), board=board, agent=agent, reason="everything")

    assert not LineStop.objects.exists()


@pytest.mark.django_db
def test_pulling_the_cord_twice_keeps_one_active_stop(board, agent):
    who = make_reviewer()
    first = andon_services.line_stop(user=who, board=board, reason="wrong inputs")
    second = andon_services.line_stop(user=make_reviewer(), board=board, reason="still wrong")

    assert second.pk == first.pk
    assert LineStop.objects.filter(board=board, restarted_at__isnull=True).count() == 1
    assert LineStop.objects.get().reason == "wrong inputs"


@pytest.mark.django_db
def test_the_cord_on_an_agent_already_stopped_by_a_spike_returns_that_stop(board, spiky):
    _outputs(board, "DDD")

    stop = andon_services.line_stop(user=make_reviewer(), agent=spiky, reason="I saw it too")

    assert stop.kind == Kind.DEFECT_SPIKE
    assert LineStop.objects.count() == 1


@pytest.mark.django_db
def test_a_boards_active_stops_include_its_agents_stops_only(board, agent):
    who = make_reviewer()
    elsewhere = make_board()
    stranger = make_agent(boards=[elsewhere])
    board_stop = andon_services.line_stop(user=who, board=board, reason="board")
    agent_stop = andon_services.line_stop(user=who, agent=agent, reason="agent")
    andon_services.line_stop(user=who, agent=stranger, reason="another board's agent")
    restarted = andon_services.line_stop(user=who, board=elsewhere, reason="other board")
    andon_services.line_restart(line_stop=restarted, user=who, note="done")

    stops = selectors.active_line_stops_get(board=board)

    assert {s.pk for s in stops} == {board_stop.pk, agent_stop.pk}
    assert len(selectors.active_line_stops_get()) == 3


# --- a spike racing another stop of the same agent ---------------------------------------


@pytest.mark.postgres
@pytest.mark.redis  # its claims are sent to Celery
@pytest.mark.django_db(transaction=True)
def test_a_spike_racing_a_cord_on_the_same_agent_still_completes_the_run():
    board = make_board()
    agent = make_agent(boards=[board], spike_defects=1, spike_window=1)
    task, claim = claim_one(board)
    inserted, waited, errors = threading.Event(), threading.Event(), []

    def cord_in_another_transaction() -> None:
        # Inserts the agent's stop and holds it uncommitted until the completion
        # below waits on the unique index, then commits: the spike's INSERT fails.
        try:
            with transaction.atomic():
                LineStop.objects.create(agent=agent, kind=Kind.CORD, reason="pulled at the same moment")
                inserted.set()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                        )
                        if cursor.fetchone()[0]:
                            waited.set()
                            break
                    time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    cord = threading.Thread(target=cord_in_another_transaction)
    cord.start()
    assert inserted.wait(60)
    try:
        assert complete(claim, confidence=DEFECTIVE)
    finally:
        cord.join()

    assert errors == []
    assert waited.is_set(), "the completion never waited on the other stop"
    assert Task.objects.get(pk=task.pk).status == Task.Status.REVIEW
    assert Escalation.objects.filter(task=task, status=Escalation.Status.OPEN).count() == 1
    assert list(LineStop.objects.values_list("kind", flat=True)) == [Kind.CORD]
