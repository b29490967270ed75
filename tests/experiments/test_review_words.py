"""What the evolution review says to an admin who is not a statistician: the
sentence under each experiment (what the latest look found, what it decided,
what happens next), dollars written as people write them, and percent axes
that do not magnify one point into a cliff."""

from __future__ import annotations

import pytest

from experiments import services as kaizen
from experiments.charts import money, percent_range
from experiments.selectors import experiment_get
from tests.experiments.helpers import experiment_in, line_agent, look, samples, started, tasks_of
from tests.factories import make_approver

pytestmark = pytest.mark.django_db


def summary(experiment) -> str:
    return experiment_get(experiment.pk).summary


def test_dollars_keep_two_significant_digits_never_micro_signs():
    assert money(0.0012) == "$0.0012"
    assert money(0.000045) == "$0.000045"
    assert money(0.12) == "$0.12"
    assert money(12.5) == "$12.50"
    assert money(0) == "$0.0000"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([100.0], [80.0, 100.0]),  # one point at 100%: 80-100, not 99-101
        ([50.0], [40.0, 60.0]),
        ([0.0, 3.0], [0.0, 20.0]),
        ([60.0, 88.0], [55.0, 93.0]),
        ([], [0.0, 100.0]),
        ([None, 70.0], [60.0, 80.0]),
    ],
)
def test_percent_axes_are_padded_and_never_narrower_than_twenty_points(values, expected):
    assert percent_range(values) == pytest.approx(expected)


def test_a_new_experiment_says_it_waits_for_its_first_tasks_and_when_it_looks():
    experiment = started(line_agent(name="welder"))

    text = summary(experiment)

    assert text.startswith(
        "The new prompt (v2) gets 5% of welder's tasks; none has finished yet; next look at about "
    )


def test_too_few_tasks_says_too_early_and_how_many_a_decision_needs():
    agent = line_agent(name="welder")
    experiment = started(agent)
    samples(experiment, tasks_of(agent, 60), control=(50, 35), treatment=(3, 3))
    look(experiment)

    text = summary(experiment)

    assert text.startswith(
        "After 53 tasks (3 on the new prompt), the new prompt (v2) succeeds 100% vs 70% for the current one (v1). "
        "Too early to judge: a decision needs 100 tasks on each prompt; next look at about "
    )


def test_a_canary_without_harm_says_how_many_tasks_are_left():
    agent = line_agent(name="welder")
    experiment = started(agent)
    samples(experiment, tasks_of(agent, 2200), control=(2000, 1400), treatment=(120, 85))
    look(experiment)

    text = summary(experiment)

    assert "the new prompt (v2) succeeds 71% vs 70% for the current one (v1): no sign of harm so far." in text
    assert "The canary is done at 200 tasks on the new prompt (80 to go); next look at about " in text


def test_an_undecided_efficacy_look_says_not_yet_conclusive_with_the_likely_difference():
    experiment = experiment_in("efficacy")

    text = summary(experiment)

    assert text.startswith(
        "After 400 tasks (200 on the new prompt), the new prompt (v2) succeeds 75% vs 70% for the current one "
        "(v1): not yet conclusive (the difference is likely between "
    )
    assert "The test decides by 2,000 tasks on each prompt; next look at about " in text


def test_the_human_gates_say_what_a_person_does_next():
    assert "Next: a person advances it to a 50/50 test, or rolls it back." in summary(
        experiment_in("canary_passed")
    )
    promotable = summary(experiment_in("promote_ready"))
    assert promotable.startswith("The new prompt is better: after 800 tasks (400 on the new prompt)")
    assert "Next: a person promotes it to make it " in promotable
    assert summary(experiment_in("paused")).startswith("Paused: the tasks were not split as planned")


def test_an_automatic_rollback_says_the_new_prompt_did_worse_and_what_runs_now():
    agent = line_agent(name="welder")
    experiment = started(agent)
    samples(experiment, tasks_of(agent, 2200), control=(1900, 1330), treatment=(110, 20))
    look(experiment)
    experiment.refresh_from_db()
    assert experiment.status == "rolled_back"

    text = summary(experiment)

    assert text.startswith("Rolled back automatically at ")
    assert (
        "the new prompt did worse; after 2,010 tasks (110 on the new prompt), the new prompt (v2) succeeds 18% vs 70%"
        in text
    )
    assert text.endswith("welder runs the current prompt (v1) again.")


def test_a_rollback_by_a_person_quotes_their_note():
    experiment = experiment_in("canary_passed")
    kaizen.experiment_rollback(experiment=experiment, user=make_approver(), note="Outputs got longer.")

    assert "Rolled back by a person at " in summary(experiment)
    assert "“Outputs got longer.”" in summary(experiment)


def test_the_review_page_shows_the_sentence_and_the_cost_in_dollars(client):
    experiment = experiment_in("efficacy")
    client.force_login(make_approver())

    html = client.get("/kaizen/").content.decode()

    assert f'<p class="evo-summary" id="experiment-{experiment.pk}-summary">After 400 tasks' in html
    assert '<td class="num">$0.0012</td>' in html and '<td class="num">$0.0010</td>' in html
    assert "Current prompt v1" in html and "New prompt v2" in html


def test_a_boundary_known_at_one_look_only_is_still_drawn():
    """The first looks decide nothing, so they have no boundary: the harm line
    of a canary's first deciding look is one value among empty ones, which a
    dashed line alone does not draw. Markers show it."""
    from experiments.charts import experiment_figure
    from experiments.models import ExperimentLook

    agent = line_agent(name="welder")
    experiment = started(agent)
    tasks = tasks_of(agent, 2200)
    samples(experiment, tasks[:40], control=(20, 14), treatment=(20, 14))
    look(experiment)  # too few: no boundary yet
    samples(experiment, tasks[40:], control=(1980, 1386), treatment=(100, 71))
    look(experiment)

    looks = list(ExperimentLook.objects.filter(experiment=experiment).order_by("created_at", "pk"))
    figure = experiment_figure(looks, experiment)
    [harm] = [trace for trace in figure.data if trace.name == "worse below this line: roll back"]

    [boundary] = [y for y in harm.y if y is not None]
    assert boundary < -1
    assert "markers" in harm.mode
