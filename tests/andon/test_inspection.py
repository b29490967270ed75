"""The jidoka inspection: an agent's checks are parsed once and strictly, and every
output is judged by all of them, every failed check giving its reason."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from andon.example_checks import no_email_addresses
from andon.inspection import (
    CHECK_KINDS,
    DEFAULT_CHECKS,
    DEFAULT_UNCERTAINTY_MARKERS,
    CheckSpec,
    Failure,
    InspectionContext,
    Verdict,
    checks_json,
    inspect,
    parse_checks,
)
from boards.agents.spec import ConfigError

EMAIL_CHECK = "andon.example_checks.no_email_addresses"
CRASHING_CHECK = "tests.andon.test_inspection.crashing_check"
WRONG_TYPE_CHECK = "tests.andon.test_inspection.wrong_type_check"
PARAMS_CHECK = "tests.andon.test_inspection.params_check"


def crashing_check(text: str, **kwargs: Any) -> str | None:
    raise RuntimeError("the rules file is missing")


def wrong_type_check(text: str, **kwargs: Any) -> str | None:
    return 42  # type: ignore[return-value]


def params_check(
    text: str, *, confidence: float | None, context: InspectionContext, params: dict
) -> str | None:
    if params["word"] in text:
        return f"mentions {params['word']} (task {context.title})"
    return None


def judge(text: str, checks: list[dict], *, confidence: float | None = 0.9, **context: Any) -> Verdict:
    return inspect(
        text, confidence=confidence, checks=parse_checks(checks), context=InspectionContext(**context)
    )


def problems(value: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_checks(value)
    return caught.value.problems


# --- Defaults ------------------------------------------------------------------


def test_default_checks_fill_in_their_defaults():
    specs = parse_checks(DEFAULT_CHECKS)

    assert specs == [
        CheckSpec("confidence", "confidence", {"min": 0.7, "when_missing": "pass"}),
        CheckSpec("uncertainty", "uncertainty", {"markers": list(DEFAULT_UNCERTAINTY_MARKERS)}),
        CheckSpec("token_waste", "token_waste", {"ratio": 1.5, "optimal_tokens": None, "defect": False}),
    ]


def test_a_confident_plain_answer_passes_the_default_checks():
    verdict = judge("The invoice was paid on 3 March.", DEFAULT_CHECKS, confidence=0.91, optimal_tokens=10)

    assert verdict.passed
    assert verdict.summary() == "pass"
    assert verdict.failures_json() == []


def test_check_kinds_lists_every_kind():
    assert set(CHECK_KINDS) == {
        "confidence",
        "uncertainty",
        "json",
        "length",
        "token_waste",
        "regex",
        "custom",
    }


def test_an_empty_list_means_no_checks():
    assert parse_checks([]) == []
    assert judge("anything", [], confidence=None).passed


# --- confidence ----------------------------------------------------------------


def test_confidence_below_threshold_is_a_defect():
    verdict = judge("ok", [{"check": "confidence"}], confidence=0.62)

    assert verdict.failures == (
        Failure(name="confidence", check="confidence", reason="confidence 0.62 is below 0.7"),
    )


def test_confidence_at_threshold_passes():
    assert judge("ok", [{"check": "confidence", "min": 0.8}], confidence=0.8).passed


def test_confidence_just_below_threshold_is_not_shown_as_equal_to_it():
    verdict = judge("ok", [{"check": "confidence"}], confidence=0.69999)

    assert verdict.failures[0].reason == "confidence 0.69999 is below 0.7"


def test_missing_confidence_is_not_judged_and_noted():
    verdict = judge("ok", [{"check": "confidence"}], confidence=None)

    assert verdict.passed
    assert verdict.notes == ("confidence: no confidence reported, not judged",)


def test_missing_confidence_is_a_defect_when_configured():
    verdict = judge("ok", [{"check": "confidence", "when_missing": "defect"}], confidence=None)

    assert verdict.failures[0].reason == "no confidence reported, and this check requires one"


def test_nan_confidence_is_a_defect():
    assert not judge("ok", [{"check": "confidence"}], confidence=float("nan")).passed


# --- uncertainty ---------------------------------------------------------------


def test_uncertainty_markers_are_a_defect_naming_each_marker():
    verdict = judge("I'm not sure, but it is possibly the 3rd. Possibly.", [{"check": "uncertainty"}])

    assert verdict.summary() == 'defect: uncertainty marker(s): "I\'m not sure", "possibly"'


def test_ordinary_text_has_no_uncertainty_markers():
    text = (
        "If you are not sure which plan you are on, check the billing page. The refund may take "
        "five days; we think of every order as urgent. Make sure the address is right."
    )

    assert judge(text, [{"check": "uncertainty"}]).passed


def test_uncertainty_marker_matches_whole_words_only():
    assert judge("Then I cannotify the webhook and unthink it.", [{"check": "uncertainty"}]).passed


def test_uncertainty_marker_matches_at_the_very_start_and_end():
    verdict = judge("I cannot", [{"check": "uncertainty"}])

    assert verdict.failures[0].reason == 'uncertainty marker(s): "I cannot"'


def test_uncertainty_curly_apostrophe_matches_a_straight_one():
    verdict = judge("I don\u2019t know the order number.", [{"check": "uncertainty"}])

    assert verdict.failures[0].reason == 'uncertainty marker(s): "I don\'t know"'


def test_uncertainty_is_case_insensitive_and_spans_line_breaks():
    verdict = judge("AS AN AI model,\nIT IS\n  UNCLEAR to me.", [{"check": "uncertainty"}])

    assert verdict.failures[0].reason == 'uncertainty marker(s): "as an AI", "it is unclear"'


def test_uncertainty_reports_the_longest_marker_at_a_place():
    verdict = judge("I do not know.", [{"check": "uncertainty", "markers": ["I do", "I do not know"]}])

    assert verdict.failures[0].reason == 'uncertainty marker(s): "I do not know"'


def test_custom_markers_replace_the_built_in_ones():
    checks = [{"check": "uncertainty", "markers": ["TBD", "(guess)"]}]

    assert judge("I'm not sure.", checks).passed
    assert judge("Price: 40 (guess), date TBD", checks).failures[0].reason == (
        'uncertainty marker(s): "(guess)", "TBD"'
    )


def test_empty_marker_is_a_config_error():
    assert problems([{"check": "uncertainty", "markers": ["ok", " "]}]) == [
        ("checks[0].markers[1]", "must be a non-empty phrase, got ' '")
    ]


# --- json ----------------------------------------------------------------------


def test_valid_json_passes():
    assert judge('{"label": "billing"}', [{"check": "json"}]).passed


def test_output_that_is_not_json_is_a_defect():
    verdict = judge("Sure! Here it is.", [{"check": "json"}])

    assert verdict.failures[0].reason == "not JSON: Expecting value at line 1 column 1"


def test_json_in_a_fenced_block_is_parsed():
    assert judge('```json\n{"label": "billing"}\n```\n', [{"check": "json"}]).passed


def test_json_with_text_around_the_fence_is_a_defect():
    assert not judge('Here:\n```json\n{"label": "billing"}\n```', [{"check": "json"}]).passed


def test_json_nan_is_a_defect():
    verdict = judge('{"price": NaN}', [{"check": "json"}])

    assert verdict.failures[0].reason == "not JSON: NaN is not valid JSON"


def test_json_schema_mismatch_names_the_path():
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"properties": {"price": {"type": "number"}}}}},
    }

    verdict = judge('{"items": [{"price": "x"}]}', [{"check": "json", "schema": schema}])

    assert (
        verdict.failures[0].reason
        == "does not match the schema at $.items[0].price: 'x' is not of type 'number'"
    )


def test_json_matching_the_schema_passes():
    schema = {"type": "object", "required": ["label"]}

    assert judge('{"label": "billing"}', [{"check": "json", "schema": schema}]).passed


def test_invalid_json_schema_is_a_config_error_at_schema():
    where, message = problems([{"check": "json", "schema": {"type": "nope"}}])[0]

    assert where == "checks[0].schema"
    assert message.startswith("is not a valid JSON Schema at $.type:")


def test_schema_that_is_not_a_mapping_is_a_config_error():
    assert problems([{"check": "json", "schema": "object"}])[0][0] == "checks[0].schema"


# --- length --------------------------------------------------------------------


def test_too_many_characters_is_a_defect():
    verdict = judge("x" * 1204, [{"check": "length", "max_chars": 1000}])

    assert verdict.failures[0].reason == "1,204 characters, more than the maximum 1,000"


def test_too_few_words_is_a_defect():
    verdict = judge("Yes.", [{"check": "length", "min_words": 3}])

    assert verdict.failures[0].reason == "1 word, fewer than the minimum 3"


def test_length_within_bounds_passes():
    assert judge("three words here", [{"check": "length", "min_words": 3, "max_chars": 16}]).passed


def test_length_without_a_bound_is_a_config_error():
    assert problems([{"check": "length"}]) == [
        ("checks[0]", "give at least one of min_chars, max_chars, min_words, max_words")
    ]


def test_length_minimum_above_maximum_is_a_config_error():
    assert problems([{"check": "length", "min_words": 10, "max_words": 5}]) == [
        ("checks[0].min_words", "10 is more than max_words 5")
    ]


def test_negative_length_is_a_config_error():
    assert problems([{"check": "length", "max_chars": -1}])[0][0] == "checks[0].max_chars"


# --- token_waste ---------------------------------------------------------------


def test_token_waste_is_recorded_when_the_check_passes():
    verdict = judge("x", [{"check": "token_waste"}], tokens_out=400, optimal_tokens=100)

    assert verdict.passed
    assert verdict.waste_tokens == 300
    assert verdict.notes == ("token_waste: 400 tokens, 4.0 times the optimal 100 (300 wasted)",)


def test_token_waste_is_a_defect_only_when_configured():
    verdict = judge("x", [{"check": "token_waste", "defect": True}], tokens_out=400, optimal_tokens=100)

    assert verdict.failures[0].reason == "400 tokens, 4.0 times the optimal 100 (300 wasted)"
    assert verdict.waste_tokens == 300


def test_tokens_within_the_ratio_are_not_waste():
    verdict = judge("x", [{"check": "token_waste", "defect": True}], tokens_out=150, optimal_tokens=100)

    assert verdict.passed
    assert verdict.waste_tokens == 0


def test_token_waste_without_an_optimal_length_is_skipped_with_a_note():
    verdict = judge("x" * 4000, [{"check": "token_waste", "defect": True}])

    assert verdict.passed
    assert verdict.waste_tokens == 0
    assert verdict.notes == ("token_waste: no optimal length known yet, not judged",)


def test_declared_optimal_tokens_wins_over_the_estimate():
    checks = [{"check": "token_waste", "optimal_tokens": 50, "ratio": 2}]

    assert judge("x", checks, tokens_out=120, optimal_tokens=100).waste_tokens == 70


def test_tokens_are_estimated_from_the_text_when_not_reported():
    # 1,001 characters are ceil(1001 / 4) = 251 tokens.
    assert judge("x" * 1001, [{"check": "token_waste"}], optimal_tokens=100).waste_tokens == 151


def test_token_waste_ratio_of_one_is_a_config_error():
    assert problems([{"check": "token_waste", "ratio": 1}])[0][0] == "checks[0].ratio"


# --- regex ---------------------------------------------------------------------


def test_output_not_matching_must_match_is_a_defect():
    verdict = judge("Category: billing", [{"check": "regex", "must_match": r"^Label: \w+$"}])

    assert verdict.failures[0].reason == r"does not match /^Label: \w+$/"


def test_output_matching_must_not_match_is_a_defect():
    verdict = judge("Done. TODO: check refunds", [{"check": "regex", "must_not_match": "TODO"}])

    assert verdict.failures[0].reason == "matches /TODO/ at 'TODO'"


def test_regex_flags_apply():
    checks = [{"check": "regex", "must_match": "^label:", "flags": ["IGNORECASE", "MULTILINE"]}]

    assert judge("Intro\nLABEL: billing", checks).passed


def test_bad_regex_is_a_config_error_naming_the_field():
    assert problems([{"check": "regex", "must_match": "(unclosed"}]) == [
        (
            "checks[0].must_match",
            "is not a valid regular expression: missing ), unterminated subpattern at position 0",
        )
    ]


def test_regex_without_a_pattern_is_a_config_error():
    assert problems([{"check": "regex", "flags": ["DOTALL"]}]) == [
        ("checks[0]", "give must_match, must_not_match or both")
    ]


def test_unknown_regex_flag_is_a_config_error():
    assert problems([{"check": "regex", "must_match": "x", "flags": ["VERBOSE"]}])[0][0] == "checks[0].flags"


# --- custom --------------------------------------------------------------------


def test_custom_check_flags_its_defect():
    verdict = judge("Write to jane.doe@example.com", [{"check": "custom", "path": EMAIL_CHECK}])

    assert verdict.failures == (
        Failure(name="custom", check="custom", reason="contains an e-mail address (j***@example.com)"),
    )


def test_custom_check_gets_its_params_and_context(settings):
    settings.KAIZEN_CUSTOM_CHECKS = [PARAMS_CHECK]

    verdict = judge("a banana", [{"check": "custom", "path": PARAMS_CHECK, "word": "banana"}], title="T-1")

    assert verdict.failures[0].reason == "mentions banana (task T-1)"


def test_custom_check_that_crashes_is_a_defect_and_logged(settings, caplog):
    settings.KAIZEN_CUSTOM_CHECKS = [CRASHING_CHECK]

    with caplog.at_level(logging.ERROR, logger="andon.inspection"):
        verdict = judge("ok", [{"check": "custom", "path": CRASHING_CHECK}])

    assert verdict.failures[0].reason == "check crashed: RuntimeError('the rules file is missing')"
    assert "crashed" in caplog.text


def test_custom_check_returning_a_non_string_is_a_defect(settings):
    settings.KAIZEN_CUSTOM_CHECKS = [WRONG_TYPE_CHECK]

    verdict = judge("ok", [{"check": "custom", "path": WRONG_TYPE_CHECK}])

    assert verdict.failures[0].reason.startswith("check crashed: TypeError(")


def test_unregistered_custom_path_is_a_config_error_listing_registered_ones(settings):
    settings.KAIZEN_CUSTOM_CHECKS = [EMAIL_CHECK]

    assert problems([{"check": "custom", "path": "os.system"}]) == [
        (
            "checks[0].path",
            "'os.system' is not a registered check; registered: andon.example_checks.no_email_addresses "
            "(a function must be listed in the KAIZEN_CUSTOM_CHECKS setting to be used)",
        )
    ]


def test_registered_custom_path_that_does_not_import_is_a_config_error(settings):
    settings.KAIZEN_CUSTOM_CHECKS = ["andon.example_checks.no_such_check"]

    where, message = problems([{"check": "custom", "path": "andon.example_checks.no_such_check"}])[0]

    assert where == "checks[0].path"
    assert message.startswith("cannot be used:")


def test_custom_check_unregistered_after_configuration_is_a_defect(settings):
    specs = parse_checks([{"check": "custom", "path": EMAIL_CHECK}])
    settings.KAIZEN_CUSTOM_CHECKS = []

    verdict = inspect("ok", confidence=None, checks=specs)

    assert (
        verdict.failures[0].reason == f"custom check {EMAIL_CHECK} is not registered in KAIZEN_CUSTOM_CHECKS"
    )


def test_email_check_masks_every_address_and_counts_the_rest():
    reason = no_email_addresses(
        "a@b.io, Bob.Smith@corp.example.org and a@b.io again",
        confidence=None,
        context=InspectionContext(),
        params={},
    )

    assert reason == "contains an e-mail address (a***@b.io and 1 more)"


def test_email_check_lets_allowed_domains_through():
    reason = no_email_addresses(
        "Write to help@support.kaizen.dev",
        confidence=None,
        context=InspectionContext(),
        params={"allow": ["kaizen.dev"]},
    )

    assert reason is None


def test_email_check_ignores_an_at_sign_that_is_not_an_address():
    text = "Meet @ 10, ping @jane on chat"

    assert no_email_addresses(text, confidence=None, context=InspectionContext(), params={}) is None


# --- Several checks ------------------------------------------------------------


def test_every_failed_check_gives_its_reason():
    checks = [
        {"check": "confidence"},
        {"check": "uncertainty"},
        {"check": "json"},
        {"check": "regex", "name": "no-todo", "must_not_match": "TODO"},
    ]

    verdict = judge("I think TODO", checks, confidence=0.5)

    assert [f.name for f in verdict.failures] == ["confidence", "uncertainty", "json", "no-todo"]
    assert verdict.summary() == (
        'defect: confidence 0.5 is below 0.7; uncertainty marker(s): "I think"; '
        "not JSON: Expecting value at line 1 column 1; no-todo: matches /TODO/ at 'TODO'"
    )


def test_failures_json_lists_name_check_and_reason():
    verdict = judge("ok", [{"check": "confidence", "name": "sure enough", "min": 0.9}], confidence=0.5)

    assert verdict.failures_json() == [
        {"name": "sure enough", "check": "confidence", "reason": "confidence 0.5 is below 0.9"}
    ]


# --- Configuration errors ------------------------------------------------------


def test_checks_that_are_not_a_list_are_a_config_error():
    assert problems({"check": "confidence"})[0][0] == "checks"


def test_check_that_is_not_a_mapping_is_a_config_error():
    assert problems(["confidence"])[0][0] == "checks[0]"


def test_unknown_kind_is_a_config_error_listing_the_kinds():
    assert problems([{"check": "confidence"}, {"check": "sentiment"}]) == [
        ("checks[1].check", f"unknown check 'sentiment': one of {', '.join(CHECK_KINDS)}")
    ]


def test_unknown_param_is_a_config_error_listing_the_allowed_ones():
    assert problems([{"check": "confidence", "minimum": 0.8}]) == [
        ("checks[0].minimum", "unknown parameter for a confidence check; allowed: name, min, when_missing")
    ]


def test_wrong_type_is_a_config_error_at_the_param():
    assert problems([{"check": "confidence", "min": "high"}]) == [
        ("checks[0].min", "must be a number, got 'high'")
    ]


def test_duplicate_names_are_a_config_error():
    assert problems([{"check": "confidence"}, {"check": "confidence", "min": 0.9}]) == [
        ("checks[1].name", "'confidence' already names checks[0]: give each check its own name")
    ]


def test_more_than_twenty_checks_is_a_config_error():
    value = [{"check": "length", "name": f"length {n}", "max_chars": 10} for n in range(21)]

    assert problems(value) == [("checks", "at most 20 checks, got 21")]


def test_every_problem_is_reported_at_once():
    value = [{"check": "confidence", "min": 2}, {"check": "regex", "must_not_match": "["}]

    assert [where for where, _ in problems(value)] == ["checks[0].min", "checks[1].must_not_match"]


# --- Storing -------------------------------------------------------------------


def test_checks_json_round_trips_through_parse_checks(settings):
    settings.KAIZEN_CUSTOM_CHECKS = [EMAIL_CHECK, PARAMS_CHECK]
    specs = parse_checks(
        [
            *DEFAULT_CHECKS,
            {"check": "uncertainty", "name": "house hedges", "markers": ["TBD"]},
            {"check": "json", "schema": {"type": "object"}},
            {"check": "length", "max_words": 200},
            {"check": "regex", "must_match": "^\\{", "flags": ["DOTALL", "IGNORECASE"]},
            {"check": "custom", "path": PARAMS_CHECK, "word": "banana"},
        ]
    )

    assert parse_checks(checks_json(specs)) == specs


def test_checks_json_does_not_freeze_the_built_in_markers():
    stored = checks_json(parse_checks([{"check": "uncertainty"}]))

    assert stored == [{"check": "uncertainty", "name": "uncertainty"}]
