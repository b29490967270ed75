"""The diff of a prompt change, as the agent page and the evolution review show
it: the template line by line, the other fields value by value."""

from experiments.models import PromptVersion
from experiments.prompt_diff import diff_lines, diff_rows

TIERS = [
    {"provider": "simulated", "model": "sim-small", "threshold": 0.8, "parameters": {"latency_ms": 0}},
    {"provider": "simulated", "model": "sim-large", "parameters": {"latency_ms": 0}},
]


def version(number: int, **fields) -> PromptVersion:
    values = {
        "prompt_template": "Classify.\n{input}",
        "prompt_variables": [],
        "parameters": {"temperature": 0.5},
        "cascade": TIERS,
        "implementation": "",
        **fields,
    }
    return PromptVersion(number=number, **values)


def test_a_cascade_change_shows_only_the_values_that_changed_by_tier():
    cascade = [
        {**TIERS[0], "threshold": 0.7},
        {**TIERS[1], "parameters": {"latency_ms": 0, "max_tokens": 300}},
    ]

    lines = diff_lines(version(1), version(2, cascade=cascade))

    assert lines == [
        "cascade:",
        "- tier 1 threshold: 0.8",
        "+ tier 1 threshold: 0.7",
        "+ tier 2 parameters max_tokens: 300",
    ]
    assert [kind for kind, _ in diff_rows(lines)] == ["field", "del", "add", "add"]


def test_a_tier_removed_shows_each_of_its_values_removed():
    lines = diff_lines(version(1), version(2, cascade=TIERS[1:]))

    # Tier 2 became tier 1: its model and its missing threshold read as changes.
    assert '- tier 1 model: "sim-small"' in lines and '+ tier 1 model: "sim-large"' in lines
    assert "- tier 1 threshold: 0.8" in lines
    assert '- tier 2 model: "sim-large"' in lines and not any(line.startswith("+ tier 2") for line in lines)


def test_parameters_and_variables_and_the_template():
    lines = diff_lines(
        version(1),
        version(
            2,
            prompt_template="Classify carefully.\n{input}",
            parameters={"temperature": 1.5, "top_p": 0.9},
            prompt_variables=["tone"],
        ),
    )

    assert lines[:2] == ["--- v1", "+++ v2"]
    assert "-Classify." in lines and "+Classify carefully." in lines
    fields = lines[lines.index("prompt_variables:") :]
    assert fields == [
        "prompt_variables:",
        "- []",
        '+ ["tone"]',
        "parameters:",
        "- temperature: 0.5",
        "+ temperature: 1.5",
        "+ top_p: 0.9",
    ]


def test_an_unchanged_field_is_not_shown():
    assert diff_lines(version(1), version(2)) == []
