"""One experiment's page: its row, its Plotly chart (success rate, the evidence
against the lines that decide, cost and time per task, per prompt, one point per
look) and the look history."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from experiments import services as kaizen
from tests.experiments.helpers import chart_of, experiment_in, look, samples, tasks_of
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def _traces(figure: dict) -> dict[tuple[str, str], dict]:
    """The traces by (panel, name): the panels are x (success), x2 (evidence),
    x3 (cost), x4 (time); both prompts have a trace in each."""
    panels = {"x": "success", "x2": "evidence", "x3": "cost", "x4": "time"}
    return {(panels[trace.get("xaxis", "x")], trace["name"]): trace for trace in figure["data"]}


def efficacy_time(look) -> str:
    return timezone.localtime(look.created_at).strftime("%Y-%m-%d %H:%M:%S")


def test_a_handful_of_tasks_is_not_drawn_as_a_rate(client, ana):
    experiment = experiment_in("canary_passed")
    kaizen.experiment_advance(experiment=experiment, user=ana, note="go")
    samples(experiment, tasks_of(experiment.agent, 10), control=(2, 2), treatment=(3, 0))
    look(experiment)
    client.force_login(ana)

    figure = chart_of(client.get(experiment.get_absolute_url()).content.decode(), experiment.pk)

    # 2 of 2 and 0 of 3 would draw 100% and 0%: nothing is drawn below 10 tasks.
    traces = _traces(figure)
    assert traces[("success", "new prompt (v2)")]["y"][-1] is None
    assert traces[("cost", "current prompt (v1)")]["y"][-1] is None
    assert traces[("evidence", "evidence")]["y"][-1] is None


def test_the_url_is_the_experiments_absolute_url(db):
    experiment = experiment_in("running")

    assert experiment.get_absolute_url() == f"/kaizen/experiments/{experiment.pk}/"


def test_the_chart_shows_success_evidence_cost_and_time_per_prompt_at_each_look(client, ana):
    experiment = experiment_in("efficacy")
    canary, efficacy = experiment.looks.order_by("created_at", "pk")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    figure = chart_of(html, experiment.pk)
    traces = _traces(figure)
    current, new = "current prompt (v1)", "new prompt (v2)"
    assert set(traces) == {
        ("success", current),
        ("success", new),
        ("evidence", "evidence"),
        ("evidence", "better above this line: promote"),
        ("evidence", "worse below this line: roll back"),
        ("cost", current),
        ("cost", new),
        ("time", current),
        ("time", new),
    }
    # Plain titles, one point per look at the time it was taken.
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles[:4] == [
        "Success rate: new prompt vs current",
        "Evidence: above green, better; below red, worse",
        "Cost per task",
        "Time per task",
    ]
    # The canary's look, a gap (the 50/50 test counts afresh, its line starts
    # anew), the efficacy stage's look.
    success = traces[("success", new)]
    assert success["x"][1] == success["x"][2] == efficacy_time(efficacy)
    assert success["y"] == pytest.approx([72.0, None, 75.0])
    assert traces[("success", current)]["y"][2] == pytest.approx(70.0)
    # The evidence against the lines that decide (the canary looks only for harm).
    evidence = traces[("evidence", "evidence")]["y"]
    assert evidence == pytest.approx([canary.stats["z"], None, efficacy.stats["z"]])
    better = traces[("evidence", "better above this line: promote")]["y"]
    assert better[0] is None and better[2] == pytest.approx(efficacy.stats["efficacy_boundary"])
    assert traces[("evidence", "worse below this line: roll back")]["y"] == pytest.approx(
        [-canary.stats["harm_boundary"], None, -efficacy.stats["harm_boundary"]]
    )
    # Dollars as people write them, seconds, percent from a padded range.
    assert traces[("cost", new)]["y"][2] == pytest.approx(0.0012)
    layout = figure["layout"]
    assert layout["yaxis3"]["tickformat"] == "$,.4f"
    assert layout["yaxis3"]["range"][0] == 0
    assert traces[("time", current)]["y"][2] == pytest.approx(0.3)
    assert layout["yaxis4"]["ticksuffix"] == " s"
    assert layout["yaxis"]["ticksuffix"] == "%"
    low, high = layout["yaxis"]["range"]
    assert low <= 70 and high >= 75 and high - low >= 20
    # Where the 50/50 test starts.
    assert "50/50 test starts" in titles
    # The chart sits beside its data, and redraws from it.
    assert (
        f'<div class="evo-chart" id="chart-{experiment.pk}" data-chart="chart-data-{experiment.pk}"' in html
    )


def test_the_chart_data_cannot_end_its_script(client, ana):
    experiment = experiment_in("efficacy")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    marker = f'id="chart-data-{experiment.pk}">'
    start = html.index(marker) + len(marker)
    data = html[start : html.index("</script>", start)]
    # The hover templates have tags (<extra>): escaped, as json_script does.
    assert "<" not in data and ">" not in data and "\\u003Cextra\\u003E" in data
    assert "<extra>" in chart_of(html, experiment.pk)["data"][0]["hovertemplate"]


def test_an_experiment_not_yet_looked_at_has_an_empty_chart_that_says_so(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    figure = chart_of(html, experiment.pk)
    assert _traces(figure)[("evidence", "evidence")]["x"] == []
    assert "No looks yet: the first comes at about " in figure["layout"]["annotations"][-1]["text"]
    assert "Not looked at yet: the first look comes at about " in html
    # Percent from 0 to 100 with nothing to show, never a range around nothing.
    assert figure["layout"]["yaxis"]["range"] == [0, 100]
    # No dates on the time axes (an empty date axis reads "Jan 2000 ... Jan 2001").
    time_axes = [key for key in figure["layout"] if key.startswith("xaxis")]
    assert time_axes and all(figure["layout"][key]["showticklabels"] is False for key in time_axes)


def test_a_first_look_with_too_few_tasks_to_draw_has_no_time_axis_and_says_why(client, ana):
    experiment = experiment_in("running")
    look(experiment)  # no tasks yet on either prompt: nothing to draw
    client.force_login(ana)

    figure = chart_of(client.get(experiment.get_absolute_url()).content.decode(), experiment.pk)

    assert not [y for trace in figure["data"] for y in (trace.get("y") or []) if y is not None]
    # One look spans no time: a date axis would read ".999 ... .001" of one second.
    time_axes = [key for key in figure["layout"] if key.startswith("xaxis")]
    assert time_axes and all(figure["layout"][key]["showticklabels"] is False for key in time_axes)
    assert (
        "Too few tasks to draw yet: each prompt's line starts at 10 tasks."
        in (figure["layout"]["annotations"][-1]["text"])
    )


def test_the_look_history_lists_each_look_newest_first(client, ana):
    experiment = experiment_in("efficacy")
    canary, efficacy = experiment.looks.order_by("created_at", "pk")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    assert html.index(f'id="look-{efficacy.pk}"') < html.index(f'id="look-{canary.pk}"')
    row = html[html.index(f'id="look-{efficacy.pk}"') :]
    row = row[: row.index("</tr>")]
    assert '<td class="num">140/200</td>' in row and '<td class="num">150/200</td>' in row
    assert f'<td class="num">{efficacy.stats["z"]:.2f}</td>' in row
    assert f'<td class="num">{efficacy.stats["efficacy_boundary"]:.2f}</td>' in row
    assert f'<td class="num">−{efficacy.stats["harm_boundary"]:.2f}</td>' in row
    assert f"[{100 * efficacy.stats['ci_low']:.1f}, {100 * efficacy.stats['ci_high']:.1f}]" in row
    assert '<span class="evo-decision evo-decision--continue">Continue</span>' in row
    assert efficacy.stats["reason"] in row
    canary_row = html[html.index(f'id="look-{canary.pk}"') :]
    assert "<td>canary</td>" in canary_row[: canary_row.index("</tr>")]


def test_its_actions_post_plainly_and_come_back_here(client, ana):
    experiment = experiment_in("canary_passed")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    assert f'action="/kaizen/experiments/{experiment.pk}/advance/"' in html
    assert "hx-post" not in html
    assert f'<input type="hidden" name="next" value="{experiment.get_absolute_url()}">' in html
    assert '<input type="hidden" name="from" value="experiment">' in html
    assert f'ws-connect="/ws/kaizen/?experiment={experiment.pk}"' in html


def test_its_audit_entries_are_shown(client, ana):
    experiment = experiment_in("canary_passed")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    section = html[html.index(f'id="experiment-audit-{experiment.pk}"') :]
    assert '<td class="evo-audit-action">Canary passed</td>' in section
    assert '<td class="evo-audit-action">Experiment started</td>' in section


def test_the_live_part_is_the_row_looks_and_audit_out_of_band(client, ana):
    experiment = experiment_in("efficacy")
    client.force_login(ana)

    response = client.get(reverse("experiments-detail-live", kwargs={"pk": experiment.pk}))

    html = response.content.decode()
    assert f'<div id="experiment-{experiment.pk}" class="evo-experiment evo-experiment--running"' in html
    assert 'data-status="running" hx-swap-oob="outerHTML">' in html
    assert f'<section id="looks-{experiment.pk}"' in html
    assert f'<section id="experiment-audit-{experiment.pk}"' in html
    assert html.count('hx-swap-oob="outerHTML"') == 3
    assert chart_of(html, experiment.pk)["data"]


def test_an_ended_experiment_keeps_its_chart_and_history(client, ana):
    experiment = experiment_in("efficacy")
    kaizen.experiment_rollback(experiment=experiment, user=ana, note="enough")
    client.force_login(ana)

    html = client.get(experiment.get_absolute_url()).content.decode()

    assert '<span class="evo-status evo-status--rolled_back">Rolled back</span>' in html
    drawn = chart_of(html, experiment.pk)["data"][0]["y"]
    assert len([y for y in drawn if y is not None]) == 2
    assert "/rollback/" not in html


def test_users_without_the_permission_get_403(client):
    experiment = experiment_in("running")
    client.force_login(make_editor())

    assert client.get(experiment.get_absolute_url()).status_code == 403
    assert client.get(reverse("experiments-detail-live", kwargs={"pk": experiment.pk})).status_code == 403


def test_an_unknown_experiment_is_404(client, ana):
    client.force_login(ana)

    assert client.get(reverse("experiments-detail", kwargs={"pk": 999999})).status_code == 404
