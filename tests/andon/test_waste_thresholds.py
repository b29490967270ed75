"""Waste thresholds (andon.waste_thresholds, andon.waste_services): a fixed
history of inspections and escalations of one agent, so the escalation rate
over its last 20 outputs is worked out by hand; the periodic tick raises one
alert per crossing with the evidence, stays quiet while the waste stays over
the limit, and raises again only after it came back within it. With stop_line
the agent's line stops (the pull claims nothing, the board says why) until a
reviewer restarts it. The services' permissions and checks, and the record."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from andon import muda, muda_rollups, waste_services, waste_thresholds
from andon import services as andon_services
from andon.models import Alert, AndonRecord, Escalation, Inspection, LineStop, WasteThreshold
from andon.tasks import budgets_tick
from boards import services
from boards.models import Column, Task
from boards.selectors import board_pull_status_get
from tests.andon.helpers import pull
from tests.factories import make_agent, make_board, make_reviewer, make_user, make_user_with

Action = AndonRecord.Action


@pytest.fixture
def keeper(db):
    """Kim keeps the thresholds."""
    return make_user_with(
        "andon.add_wastethreshold", "andon.change_wastethreshold", "andon.delete_wastethreshold"
    )


class History:
    """Outputs of one agent, one second apart, starting a day ago: each an
    inspection, some escalated (and already decided, so no task waits)."""

    def __init__(self, board, agent) -> None:
        self.board = board
        self.agent = agent
        self.start = timezone.now() - timedelta(days=1)
        self.n = 0
        self.task = Task.objects.create(
            board=board,
            column=board.columns.get(role=Column.Role.DONE),
            title="Earlier parts",
            status=Task.Status.DONE,
            agent=agent,
        )

    def outputs(self, count: int, *, escalated: set[int] = frozenset()) -> None:
        """``count`` outputs; those whose index (0-based, in this batch) is in
        ``escalated`` failed inspection and went to a person."""
        for i in range(count):
            at = self.start + timedelta(seconds=self.n)
            self.n += 1
            inspection = Inspection.objects.create(
                task=self.task, board=self.board, agent=self.agent, passed=i not in escalated, tokens_out=10
            )
            Inspection.objects.filter(pk=inspection.pk).update(created_at=at)
            if i in escalated:
                escalation = Escalation.objects.create(
                    task=self.task,
                    board=self.board,
                    agent=self.agent,
                    inspection=inspection,
                    status=Escalation.Status.APPROVED,
                )
                Escalation.objects.filter(pk=escalation.pk).update(created_at=at)
        # Written straight to the tables, back-dated: the Muda rollups are rebuilt from them.
        muda_rollups.rebuild()


@pytest.fixture
def line(db):
    board = make_board()
    agent = make_agent(boards=[board], name="welder")
    return History(board, agent)


def escalation_threshold(keeper, line, **fields) -> WasteThreshold:
    values = {"waste": "escalation_rate", "limit": 5.0, "window_outputs": 20, "agent": line.agent}
    return waste_services.threshold_create(user=keeper, **{**values, **fields})


def waste_alerts() -> list[Alert]:
    return list(Alert.objects.filter(kind=Alert.Kind.WASTE_THRESHOLD).order_by("pk"))


def actions() -> list[str]:
    return list(AndonRecord.objects.order_by("pk").values_list("action", flat=True))


def test_crossing_raises_one_alert_with_the_evidence_then_again_after_recovering(keeper, line):
    # 10 clean outputs long ago (out of the window of 20), then 20 with 2 escalated.
    line.outputs(10)
    line.outputs(20, escalated={3, 11})
    threshold = escalation_threshold(keeper, line)
    # By hand: 2 escalations / 20 outputs = 10% > 5%.
    assert muda.waste_value("escalation_rate", agent=line.agent, last_outputs=20) == 10.0

    tick = waste_thresholds.thresholds_tick()
    [alert] = waste_alerts()
    assert tick.alerts == [alert] and tick.stops == []
    assert alert.agent_id == line.agent.pk and alert.threshold_id == threshold.pk
    evidence = alert.evidence
    assert evidence["value"] == 10.0
    assert evidence["limit"] == 5.0
    assert evidence["unit"] == "%"
    assert evidence["window"] == "last 20 outputs"
    assert evidence["outputs"] == 20
    assert evidence["counts"] == {"escalations": 2, "inspected": 20}
    assert evidence["definition"] == muda.DEFINITIONS["escalation_rate"]
    assert alert.summary.startswith(
        "Human escalation rate 10% over the last 20 outputs (escalations 2, inspected 20), above the limit of 5%."
    )
    threshold.refresh_from_db()
    assert threshold.crossed_at is not None and threshold.last_value == 10.0

    # Still over the limit: quiet.
    assert waste_thresholds.thresholds_tick().alerts == []
    assert len(waste_alerts()) == 1

    # 20 clean outputs: the last 20 hold no escalation, 0% — back within the limit.
    line.outputs(20)
    tick = waste_thresholds.thresholds_tick()
    assert tick.alerts == [] and tick.recovered == [threshold.pk]
    threshold.refresh_from_db()
    assert threshold.crossed_at is None and threshold.last_value == 0.0

    # 20 more, 3 escalated: 3 / 20 = 15%, a new crossing, a new alert.
    line.outputs(20, escalated={0, 1, 19})
    tick = waste_thresholds.thresholds_tick()
    first, second = waste_alerts()
    assert tick.alerts == [second]
    assert second.evidence["value"] == 15.0 and second.evidence["counts"] == {
        "escalations": 3,
        "inspected": 20,
    }
    assert second.key != first.key
    assert actions() == [
        Action.THRESHOLD_CREATED,
        Action.THRESHOLD_CROSSED,
        Action.THRESHOLD_RECOVERED,
        Action.THRESHOLD_CROSSED,
    ]
    crossed = AndonRecord.objects.filter(action=Action.THRESHOLD_CROSSED).order_by("pk")
    assert [r.alert_id for r in crossed] == [first.pk, second.pk]
    assert all(r.threshold_id == threshold.pk and r.agent_id == line.agent.pk for r in crossed)


def test_at_the_limit_is_within_it_and_a_higher_is_better_waste_alarms_below(keeper, line):
    # 1 escalation in 20: exactly 5%, not above the limit of 5%.
    line.outputs(20, escalated={7})
    escalation_threshold(keeper, line)
    assert waste_thresholds.thresholds_tick().alerts == []
    assert waste_thresholds.is_worse("token_efficiency", 79.9, 80.0)
    assert not waste_thresholds.is_worse("token_efficiency", 80.0, 80.0)
    assert waste_thresholds.is_worse("transport", 1.6, 1.5)


def test_a_window_without_outputs_raises_nothing(keeper, line):
    threshold = escalation_threshold(keeper, line)
    assert waste_thresholds.thresholds_tick().alerts == []
    threshold.refresh_from_db()
    assert threshold.checked_at is not None and threshold.last_value is None


def test_a_disabled_threshold_is_not_checked(keeper, line):
    line.outputs(20, escalated={1, 2})
    escalation_threshold(keeper, line, enabled=False)
    assert waste_thresholds.thresholds_tick().checked == 0
    assert waste_alerts() == []


def test_hours_window(keeper, line):
    # The history is a day old: a 2-hour window holds nothing, a 48-hour one all.
    line.outputs(20, escalated={1, 2})
    escalation_threshold(keeper, line, window_outputs=None, window_hours=2)
    assert waste_thresholds.thresholds_tick().alerts == []
    wide = escalation_threshold(keeper, line, window_outputs=None, window_hours=48)
    [alert] = waste_thresholds.thresholds_tick().alerts
    assert alert.threshold_id == wide.pk and alert.evidence["window"] == "last 48 hours"
    assert alert.evidence["value"] == 10.0


@pytest.mark.redis  # the periodic task sends the inbox its banner
def test_stop_line_stops_the_agent_until_a_reviewer_restarts_it(keeper, line):
    board, agent = line.board, line.agent
    line.outputs(20, escalated={3, 11})
    threshold = escalation_threshold(keeper, line, stop_line=True)
    services.task_create(board=board, title="Part 8", input="dent on the lid")

    result = budgets_tick()  # the periodic task itself
    assert result["waste_alerts"] == 1 and result["waste_stops"] == 1
    stop = LineStop.objects.get(restarted_at__isnull=True)
    assert (stop.kind, stop.agent_id, stop.board_id, stop.threshold_id) == (
        LineStop.Kind.WASTE,
        agent.pk,
        None,
        threshold.pk,
    )
    assert stop.reason.startswith(
        "Waste threshold crossed: Human escalation rate 10% over the last 20 outputs"
    )
    [alert] = waste_alerts()
    assert "line is stopped" in alert.summary

    # The pull claims nothing; the board's status says why.
    assert pull(board) == []
    texts = " ".join(hold.text for hold in board_pull_status_get(board=board).holds)
    assert "welder stopped: Waste threshold crossed: Human escalation rate 10%" in texts

    # Still crossed: no second stop, no second alert.
    assert waste_thresholds.thresholds_tick().stops == []

    # A reviewer restarts the line: the agent pulls again, and the crossing
    # (still in force) does not stop it again.
    ana = make_reviewer(username="ana")
    andon_services.line_restart(line_stop=stop, user=ana, note="Tightened the prompt's rubric.")
    claims = pull(board)
    assert len(claims) == 1
    assert waste_thresholds.thresholds_tick().stops == []
    assert not LineStop.objects.filter(restarted_at__isnull=True).exists()
    restarted = AndonRecord.objects.get(action=Action.LINE_RESTARTED)
    assert (restarted.user, restarted.threshold_id, restarted.line_stop_id) == (ana, threshold.pk, stop.pk)
    assert actions() == [
        Action.THRESHOLD_CREATED,
        Action.THRESHOLD_CROSSED,
        Action.WASTE_LINE_STOPPED,
        Action.LINE_RESTARTED,
    ]


def test_a_board_threshold_stops_the_board(keeper, line):
    line.outputs(20, escalated={3, 11})
    escalation_threshold(keeper, line, agent=None, board=line.board, stop_line=True)
    [stop] = waste_thresholds.thresholds_tick().stops
    assert (stop.board_id, stop.agent_id) == (line.board.pk, None)
    services.task_create(board=line.board, title="Part 9", input="crack")
    assert pull(line.board) == []
    texts = " ".join(hold.text for hold in board_pull_status_get(board=line.board).holds)
    assert "The line is stopped: Waste threshold crossed" in texts


def test_a_line_already_stopped_gets_the_alert_and_no_second_stop(keeper, line):
    line.outputs(20, escalated={3, 11})
    cord = LineStop.objects.create(agent=line.agent, kind=LineStop.Kind.CORD, reason="Checking the welds")
    escalation_threshold(keeper, line, stop_line=True)
    tick = waste_thresholds.thresholds_tick()
    assert len(tick.alerts) == 1 and tick.stops == []
    assert list(LineStop.objects.filter(restarted_at__isnull=True)) == [cord]
    assert AndonRecord.objects.get(action=Action.WASTE_LINE_STOPPED).data == {"stopped": False}


def test_deleting_or_disabling_a_threshold_lifts_its_stop(keeper, line):
    line.outputs(20, escalated={3, 11})
    threshold = escalation_threshold(keeper, line, stop_line=True)
    [stop] = waste_thresholds.thresholds_tick().stops
    waste_services.threshold_update(threshold=threshold, user=keeper, enabled=False)
    stop.refresh_from_db()
    assert stop.restarted_at is not None and stop.restart_note == "The waste threshold was disabled."

    other = escalation_threshold(keeper, line, stop_line=True, limit=4.0)
    [stop] = waste_thresholds.thresholds_tick().stops
    assert stop.threshold_id == other.pk
    waste_services.threshold_delete(threshold=other, user=keeper)
    stop.refresh_from_db()
    assert stop.restart_note == "The waste threshold was deleted."
    assert not WasteThreshold.objects.filter(pk=other.pk).exists()
    deleted = AndonRecord.objects.get(action=Action.THRESHOLD_DELETED)
    assert deleted.user == keeper and deleted.agent_id == line.agent.pk
    assert deleted.data["rule"] == "Human escalation rate above 4% over the last 20 outputs"


def test_a_change_rearms_the_threshold_and_is_recorded(keeper, line):
    line.outputs(20, escalated={3, 11})
    threshold = escalation_threshold(keeper, line)
    assert len(waste_thresholds.thresholds_tick().alerts) == 1
    waste_services.threshold_update(threshold=threshold, user=keeper, limit=8.0)
    changed = AndonRecord.objects.get(action=Action.THRESHOLD_CHANGED)
    assert changed.data["changed"]["limit"] == [5.0, 8.0]
    assert changed.user == keeper
    # 10% is still above 8%: the re-armed threshold alerts under its new rule.
    [alert] = waste_thresholds.thresholds_tick().alerts
    assert alert.evidence["limit"] == 8.0


def test_services_need_their_permissions(line):
    nobody = make_user()
    with pytest.raises(PermissionDenied):
        waste_services.threshold_create(user=nobody, waste="escalation_rate", limit=5, agent=line.agent)
    adder = make_user_with("andon.add_wastethreshold")
    threshold = waste_services.threshold_create(
        user=adder, waste="escalation_rate", limit=5, agent=line.agent
    )
    with pytest.raises(PermissionDenied):
        waste_services.threshold_update(threshold=threshold, user=adder, limit=6)
    with pytest.raises(PermissionDenied):
        waste_services.threshold_delete(threshold=threshold, user=adder)
    assert actions() == [Action.THRESHOLD_CREATED]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"waste": "sloth"}, "waste", "Choose one of the wastes"),
        ({"limit": -1}, "limit", "cannot be negative"),
        ({"limit": 120}, "limit", "between 0 and 100"),
        ({"window_hours": 3}, "window_outputs", "either as a number of outputs or as a number of hours"),
        ({"window_outputs": None}, "window_outputs", "either as a number of outputs or as a number of hours"),
        ({"window_outputs": 0}, "window_outputs", "between 1 and 10,000 outputs"),
        ({"board": "board"}, "__all__", "either a board's or an agent's"),
    ],
)
def test_bad_input_is_refused_with_the_field(keeper, line, fields, field, message):
    values = {"waste": "escalation_rate", "limit": 5.0, "agent": line.agent}
    if fields.get("board") == "board":
        fields = {"board": line.board}
    with pytest.raises(ValidationError) as refused:
        waste_services.threshold_create(user=keeper, **{**values, **fields})
    assert message in " ".join(refused.value.message_dict[field])
    assert not WasteThreshold.objects.exists() and not AndonRecord.objects.exists()


def test_transport_limits_are_not_percentages(keeper, line):
    threshold = waste_services.threshold_create(user=keeper, waste="transport", limit=150, board=line.board)
    assert (
        waste_thresholds.rule_sentence(threshold)
        == "Transport above 150 calls/item over the last 200 outputs"
    )


# --- the pages --------------------------------------------------------------------------

THRESHOLDS = "/andon/thresholds/"


def _form(**fields) -> dict:
    return {
        "scope": "agent",
        "waste": "escalation_rate",
        "limit": "5",
        "window": "outputs",
        "window_size": "200",
        "enabled": "on",
        **fields,
    }


def test_a_keeper_adds_a_threshold_from_the_page(client, keeper, line):
    client.force_login(keeper)
    response = client.post(THRESHOLDS, _form(agent=line.agent.pk, stop_line="on"))
    threshold = WasteThreshold.objects.get()
    assert (response.status_code, response.url) == (302, f"/andon/thresholds/{threshold.pk}/")
    assert (threshold.agent, threshold.board, threshold.waste, threshold.limit) == (
        line.agent,
        None,
        "escalation_rate",
        5.0,
    )
    assert (threshold.window_outputs, threshold.window_hours, threshold.stop_line, threshold.enabled) == (
        200,
        None,
        True,
        True,
    )
    assert threshold.created_by == keeper
    page = client.get(THRESHOLDS).content.decode()
    assert "Human escalation rate above 5% over the last 200 outputs" in page
    assert "not checked yet" in page


def test_bad_input_is_shown_inline(client, keeper, line):
    client.force_login(keeper)
    response = client.post(THRESHOLDS, _form(limit="150", window_size="0"))
    assert response.status_code == 422
    html = response.content.decode()
    assert "Choose the agent this threshold watches." in html
    assert "Ensure this value is greater than or equal to 1." in html

    # The service's own check (a percentage above 100), inline on its field.
    response = client.post(THRESHOLDS, _form(agent=line.agent.pk, limit="150"))
    assert response.status_code == 422
    assert "This waste is a percentage: give a limit between 0 and 100." in response.content.decode()
    response = client.post(THRESHOLDS, _form(agent=line.agent.pk, waste="sloth"))
    assert response.status_code == 422
    assert "Select a valid choice. sloth is not one of the available choices." in response.content.decode()
    assert not WasteThreshold.objects.exists()


def test_hours_window_from_the_form(client, keeper, line):
    client.force_login(keeper)
    client.post(THRESHOLDS, _form(scope="board", board=line.board.pk, window="hours", window_size="24"))
    threshold = WasteThreshold.objects.get()
    assert (threshold.board, threshold.window_outputs, threshold.window_hours) == (line.board, None, 24)
    response = client.post(
        THRESHOLDS, _form(scope="board", board=line.board.pk, window="hours", window_size="9000")
    )
    assert response.status_code == 422
    assert "Count between 1 and 8,784 hours." in response.content.decode()


def test_the_pages_need_their_permissions(client, keeper, line):
    threshold = escalation_threshold(keeper, line)
    client.force_login(make_reviewer())
    page = client.get(THRESHOLDS).content.decode()
    assert "Human escalation rate above 5% over the last 20 outputs" in page
    assert 'id="threshold-form"' not in page
    assert client.post(THRESHOLDS, _form(agent=line.agent.pk)).status_code == 403
    url = f"/andon/thresholds/{threshold.pk}/"
    assert client.post(url, _form(agent=line.agent.pk, limit="9")).status_code == 403
    assert client.post(f"{url}delete/").status_code == 403
    threshold.refresh_from_db()
    assert threshold.limit == 5.0
    client.logout()
    assert client.get(THRESHOLDS).status_code == 302  # to the login page


def test_change_and_delete_from_the_page(client, keeper, line):
    threshold = escalation_threshold(keeper, line)
    client.force_login(keeper)
    url = f"/andon/thresholds/{threshold.pk}/"
    page = client.get(url).content.decode()
    assert 'value="20"' in page and "Not checked yet." in page
    response = client.post(url, _form(agent=line.agent.pk, limit="7.5", window_size="50"))
    assert response.status_code == 302
    threshold.refresh_from_db()
    assert (threshold.limit, threshold.window_outputs) == (7.5, 50)
    response = client.post(url, _form(agent=line.agent.pk, limit="-2"))
    assert response.status_code == 422
    assert "Ensure this value is greater than or equal to 0." in response.content.decode()
    assert client.post(f"{url}delete/").status_code == 302
    assert not WasteThreshold.objects.exists()
    assert actions() == [Action.THRESHOLD_CREATED, Action.THRESHOLD_CHANGED, Action.THRESHOLD_DELETED]


def test_the_form_needs_csrf(keeper, line):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(keeper)
    assert browser.post(THRESHOLDS, _form(agent=line.agent.pk)).status_code == 403
    assert not WasteThreshold.objects.exists()


def test_linked_from_budgets_and_muda(client, keeper, line):
    client.force_login(keeper)
    budgets_page = client.get(f"/andon/budgets/?board={line.board.pk}").content.decode()
    assert f'href="/andon/thresholds/?board={line.board.pk}"' in budgets_page
    muda_page = client.get(f"/boards/{line.board.slug}/muda/").content.decode()
    assert f'href="/andon/thresholds/?board={line.board.pk}"' in muda_page


@pytest.mark.parametrize("count", [1, 6])
def test_the_list_page_queries_are_bounded(client, keeper, line, count, django_assert_max_num_queries):
    for i in range(count):
        escalation_threshold(keeper, line, limit=float(i))
        waste_services.threshold_create(user=keeper, waste="transport", limit=2.0, board=line.board)
    line.outputs(20, escalated={1})
    waste_thresholds.thresholds_tick()
    client.force_login(keeper)
    with django_assert_max_num_queries(12):
        response = client.get(f"{THRESHOLDS}?board={line.board.pk}")
    assert response.content.decode().count('class="is-over"') == (1 if count == 1 else 5)


def test_the_inbox_shows_the_alert_with_its_evidence(client, keeper, line):
    line.outputs(20, escalated={3, 11})
    threshold = escalation_threshold(keeper, line)
    waste_thresholds.thresholds_tick()
    client.force_login(make_reviewer())
    html = client.get("/andon/").content.decode()
    assert "Waste threshold: Human escalation rate threshold crossed: agent welder" in html
    assert "Evidence: Human escalation rate 10.0 % against a limit of 5.0 % (lower is better)" in html
    assert "Counts: escalations 2, inspected 20." in html
    assert muda.DEFINITIONS["escalation_rate"] in html
    assert f'href="/andon/thresholds/{threshold.pk}/"' in html


def test_the_admin_goes_through_the_services(client, line):
    admin = make_user(is_staff=True, is_superuser=True)
    client.force_login(admin)
    url = "/admin/andon/wastethreshold/add/"
    form = {"agent": line.agent.pk, "waste": "escalation_rate", "limit": "5", "window_outputs": "200"}
    response = client.post(url, {**form, "limit": "250"})
    assert response.status_code == 200
    assert "This waste is a percentage: give a limit between 0 and 100." in response.content.decode()
    assert client.post(url, {**form, "enabled": "on"}).status_code == 302
    threshold = WasteThreshold.objects.get()
    assert (threshold.limit, threshold.created_by, threshold.enabled) == (5.0, admin, True)
    assert actions() == [Action.THRESHOLD_CREATED]
