"""andon.example_checks.figures_from_input: an output that states a figure its
task never gave (the invented figure a model writes to fill a gap) is a defect;
copied figures pass, however they are written."""

from __future__ import annotations

import pytest

from andon.example_checks import figures_from_input
from andon.inspection import InspectionContext, inspect, parse_checks

REPORT = "Bore A nominal 42.000 mm, tol +0.025/-0.000, measured 42.031. Lot size 1,200; 7 of 20 oversize."


def check(text: str, *, title: str = "CMM report: HX-220, lot 4471", **params) -> str | None:
    return figures_from_input(
        text, confidence=0.9, context=InspectionContext(title=title, input=REPORT), params=params
    )


def test_figures_copied_from_the_input_or_the_title_pass():
    assert check("Bore A | 42.000 | +0.025/-0.000 | 42.031 | OUT; lot 4471 of HX-220, 7 of 20.") is None
    # One figure, however it is written: 1,200 and 1200, 42.0 and 42.000.
    assert check("1200 parts in the lot; nominal 42.0") is None


def test_an_invented_figure_is_a_defect_that_names_it():
    assert check("Bore A measured 42.013, 7 of 20 oversize") == "states 42.013, which the input does not give"
    assert (
        check("52.000 and 41 and 9 and 3") == "states 52.000, 41, 9 and 1 more, which the input does not give"
    )


def test_figures_a_prompt_sets_may_be_allowed():
    assert check("Under 150 words: 7 of 20.", allow=[150]) is None
    with pytest.raises(ValueError, match='"allow" must be a list of numbers'):
        check("7", allow="150")


def test_it_is_registered_by_default_and_runs_as_a_custom_check():
    checks = parse_checks([{"check": "custom", "path": "andon.example_checks.figures_from_input"}])

    verdict = inspect(
        "Measured 42.040", confidence=0.95, checks=checks, context=InspectionContext(input=REPORT)
    )

    assert not verdict.passed
    assert verdict.failures[0].reason == "states 42.040, which the input does not give"
