"""The Flow page: login, its charts and tables from a fixed history, inline
errors on bad filters, CSV downloads, the htmx partial, and a bounded number of
queries whatever the history."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from django.urls import reverse

from tests.boards.flow_history import T0, add_finished, at, build_history

pytestmark = pytest.mark.django_db

WINDOW = {
    "since": T0.strftime("%Y-%m-%dT%H:%M"),
    "until": at(3 * 3600).strftime("%Y-%m-%dT%H:%M"),
    "resolution": "1h",
}


def url(board) -> str:
    return reverse("boards-flow", kwargs={"slug": board.slug})


def test_it_needs_a_login(client):
    h = build_history()
    response = client.get(url(h["board"]))
    assert response.status_code == 302
    assert "/login" in response["Location"]


def test_the_board_page_links_to_it(client, user):
    h = build_history()
    client.force_login(user)
    html = client.get(h["board"].get_absolute_url()).content.decode()
    assert f'href="{url(h["board"])}"' in html


def test_the_page_draws_every_chart_with_the_histories_numbers(client, user):
    h = build_history()
    client.force_login(user)
    response = client.get(url(h["board"]), WINDOW)
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("aging", "cycle", "throughput", "wip", "cfd", "xmr-cycle", "xmr-throughput"):
        script = re.search(
            rf'<script type="application/json" id="flow-data-{name}">(.*?)</script>', html, re.S
        )
        figure = json.loads(script.group(1))
        assert figure["data"], name
    throughput = json.loads(re.search(r'id="flow-data-throughput">(.*?)</script>', html, re.S).group(1))
    assert throughput["data"][0]["y"] == [2, 2, 0]
    aging = json.loads(re.search(r'id="flow-data-aging">(.*?)</script>', html, re.S).group(1))
    red = [trace for trace in aging["data"] if trace["name"].startswith("Past the 85th")][0]
    assert red["x"] == ["In progress"] and red["y"] == [7800 / 3600]  # hours
    # Cycle time 50th percentile 1500 s = 25 min; 85th 3600 s = 1 h.
    assert '<td class="num">25 min</td>' in html and '<td class="num">1 h</td>' in html
    assert "nearest-rank" in html
    assert "Cycle time: from the start (first claim) to the finish." in html
    # The agent line: alpha finished 2, half of them first time.
    row = re.search(r"<tr><th scope=\"row\">alpha (.*?)</tr>", html, re.S).group(1)
    assert "simulated" in row  # the model is the simulated one, and says so
    assert '<td class="num">2</td><td class="num">50%</td>' in row


def test_bad_filters_are_said_inline(client, user):
    h = build_history()
    client.force_login(user)
    response = client.get(
        url(h["board"]), {"since": "2026-01-02T00:00", "until": "2026-01-01T00:00", "forecast_items": "0"}
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors["forecast_items"]
    html = response.content.decode()
    assert "field--error" in html
    response = client.get(url(h["board"]), {"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"})
    assert response.context["form"].errors["until"] == ["The end of the window must be after its start."]
    assert "The end of the window must be after its start." in response.content.decode()


def test_csv_of_a_chart(client, user):
    h = build_history()
    client.force_login(user)
    response = client.get(url(h["board"]), {**WINDOW, "format": "csv", "chart": "cfd"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["period_start", "backlog", "ready", "running", "review", "done", "failed"]
    assert rows[1] == ["2026-01-05T09:00:00+00:00", "1", "0", "2", "0", "2", "0"]
    response = client.get(url(h["board"]), {**WINDOW, "format": "csv", "chart": "agents"})
    rows = {r[0]: r for r in csv.reader(io.StringIO(response.content.decode()))}
    assert rows["beta"][4] == "1"  # rework by people: the rejection


def test_csv_refuses_an_unknown_chart_or_bad_filters(client, user):
    h = build_history()
    client.force_login(user)
    assert client.get(url(h["board"]), {"format": "csv", "chart": "pie"}).status_code == 400
    response = client.get(url(h["board"]), {"format": "csv", "chart": "cfd", "until": "soon"})
    assert response.status_code == 400 and b"until" in response.content


def test_a_forecast_table(client, user):
    h = build_history()
    client.force_login(user)
    response = client.get(url(h["board"]), {"forecast_items": "3"})
    html = response.content.decode()
    assert 'id="forecast-when"' in html
    assert "When will the next 3 items be done?" in html


def test_htmx_gets_the_charts_alone(client, user):
    h = build_history()
    client.force_login(user)
    response = client.get(url(h["board"]), WINDOW, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="flow-body")
    html = response.content.decode()
    assert 'id="flow-data-cfd"' in html
    assert "<form" not in html


@pytest.mark.parametrize("extra", [3, 30])
def test_bounded_queries(client, user, extra, django_assert_max_num_queries):
    h = build_history()
    add_finished(h["board"], h["alpha"], extra)
    client.force_login(user)
    with django_assert_max_num_queries(24):
        response = client.get(url(h["board"]), {**WINDOW, "forecast_items": "5"})
    assert response.status_code == 200
