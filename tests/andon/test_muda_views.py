"""The Muda page (/boards/<slug>/muda/) and its CSV downloads."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.andon.muda_history import CACHE_SECONDS, SINCE, UNTIL, build_line

pytestmark = pytest.mark.django_db

# datetime-local values, in the server's time zone, as the form's widget sends them.
WINDOW = {
    "since": timezone.localtime(SINCE).strftime("%Y-%m-%dT%H:%M"),
    "until": timezone.localtime(UNTIL).strftime("%Y-%m-%dT%H:%M"),
}


@pytest.fixture
def line(settings):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    return build_line()


def url(line) -> str:
    return f"/boards/{line.board.slug}/muda/"


def test_it_needs_a_login(client, line):
    response = client.get(url(line))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/") or "login" in response["Location"]


def test_the_board_header_links_to_it(logged_in, line):
    page = logged_in.get(line.board.get_absolute_url()).content.decode()
    assert f'href="/boards/{line.board.slug}/muda/"' in page


def test_it_shows_each_waste_with_value_cost_target_definition_and_chart(logged_in, line):
    response = logged_in.get(url(line), WINDOW)

    assert response.status_code == 200
    page = response.content.decode()
    for name in (
        "overproduction",
        "waiting",
        "transport",
        "over_processing",
        "inventory",
        "motion",
        "defects",
    ):
        assert f'id="waste-{name}"' in page
        assert f'id="chart-data-{name}"' in page
    report = response.context["report"]
    panels = {p.waste.name: p for p in response.context["panels"]}
    assert panels["transport"].value == "1.40 calls/item"
    assert panels["transport"].cost == "$0.30"
    assert panels["transport"].target == "< 1.5 calls/item"
    assert panels["waiting"].cost == "no model spend"
    assert panels["token_efficiency"].value == "46.7%"
    assert report.unreviewed_defects == 1
    assert "Output tokens that did not reach a finished output" in page
    # The seed's targets at the top, with met or not met.
    assert 'id="target-token-efficiency"' in page and "muda-target--missed" in page
    assert f'href="/boards/{line.board.slug}/flow/#predictability"' in page
    # The chart's data: the trend per hour, and its target line.
    figure = json.loads(panels["waiting"].chart)
    trend, target = figure["data"]
    assert len(trend["x"]) == 24 and trend["y"][3] == pytest.approx(200 / 3, abs=1e-3)
    assert target["y"] == [50.0, 50.0]
    # Model names shown with the simulated label.
    assert 'sim-medium</code> <span class="badge badge--sim"' in page


def test_a_window_in_the_past_is_not_live(logged_in, line):
    page = logged_in.get(url(line), WINDOW).content.decode()
    assert "ws-connect" not in page and 'id="live-status-off"' in page
    live = logged_in.get(url(line)).content.decode()
    assert f'ws-connect="/ws/boards/{line.board.slug}/"' in live


def test_the_agent_filter_shows_one_agent_s_wastes(logged_in, line):
    response = logged_in.get(url(line), {**WINDOW, "agent": "beta"})
    assert response.status_code == 200
    assert response.context["report"].waste("transport").value == pytest.approx(1.5)
    assert "of beta" in response.content.decode()


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"since": "soon"}, "since", "Give a date and time"),
        ({"since": WINDOW["until"], "until": WINDOW["since"]}, "until", "must come after its start"),
        ({"agent": "nobody"}, "agent", "does not serve this board"),
    ],
)
def test_bad_filters_are_shown_beside_their_field(logged_in, line, params, field, message):
    response = logged_in.get(url(line), params)
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    page = response.content.decode()
    assert message in page and "field--error" in page
    assert response.context["report"] is None


def test_an_htmx_refresh_gets_the_body_only(logged_in, line):
    response = logged_in.get(url(line), WINDOW, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert page.lstrip().startswith('<div id="muda-body"')
    assert "<html" not in page


def test_a_window_of_one_hour_charts_its_point_on_an_axis_of_hours(logged_in, line):
    # Plotly draws one point on an axis a millisecond wide unless told its range.
    hour = timezone.localtime(SINCE).replace(minute=0, second=0, microsecond=0)
    since, until = hour + timedelta(minutes=10), hour + timedelta(minutes=50)
    window = {"since": since.strftime("%Y-%m-%dT%H:%M"), "until": until.strftime("%Y-%m-%dT%H:%M")}
    response = logged_in.get(url(line), window)

    assert response.status_code == 200
    panels = {p.waste.name: p for p in response.context["panels"]}
    figure = json.loads(panels["waiting"].chart)
    trend, target = figure["data"]
    assert trend["x"] == [since.strftime("%Y-%m-%d %H:%M")]
    around = [(since + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M") for h in (-1, 1)]
    assert figure["layout"]["xaxis"]["range"] == around
    assert figure["layout"]["xaxis"]["type"] == "date"
    assert target["x"] == around  # the target's line spans the axis, not a point


def test_each_chart_s_data_downloads_as_csv(logged_in, line):
    response = logged_in.get(f"/boards/{line.board.slug}/muda/transport.csv", WINDOW)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 24
    assert rows[3]["transport"] == "2.0000" and rows[3]["target"] == "1.5" and rows[3]["unit"] == "calls/item"
    assert rows[0]["transport"] == ""


def test_an_unknown_chart_is_a_404_and_a_bad_window_a_400(logged_in, line):
    assert logged_in.get(f"/boards/{line.board.slug}/muda/speed.csv").status_code == 404
    response = logged_in.get(f"/boards/{line.board.slug}/muda/transport.csv", {"since": "soon"})
    assert response.status_code == 400 and b"since" in response.content


def test_the_csv_needs_a_login(client, line):
    assert client.get(f"/boards/{line.board.slug}/muda/transport.csv").status_code == 302


@pytest.mark.parametrize("copies", [1, 4])
def test_the_page_reads_a_bounded_number_of_queries(
    settings, logged_in, django_assert_max_num_queries, copies
):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    first = build_line()
    for n in range(1, copies):
        build_line(offset=10 * n, board=first.board, alpha=first.alpha, beta=first.beta)
    with django_assert_max_num_queries(16):
        response = logged_in.get(url(first), {**WINDOW, "agent": "alpha"})
    assert response.status_code == 200
