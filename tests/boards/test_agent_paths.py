"""Dotted paths that outlive a move: the custom-agent API the README documents
(``boards.agents.BaseAgent``...), the example class agents name in their rows,
and the old module paths kept until the other issue-11 branches are merged."""

from __future__ import annotations

import importlib

import pytest
from django.utils.module_loading import import_string

import boards.agents
from boards.agents import cascade, outputs, prompts


@pytest.mark.parametrize("name", boards.agents.__all__)
def test_the_custom_agent_api_imports_from_boards_agents(name):
    defined = {module.__name__: module for module in (cascade, outputs, prompts)}
    value = import_string(f"boards.agents.{name}")
    assert any(getattr(module, name, None) is value for module in defined.values())


def test_the_example_agent_path_stored_in_rows_imports():
    keyword_classifier = import_string("boards.example_agents.KeywordClassifier")
    assert issubclass(keyword_classifier, import_string("boards.agents.BaseAgent"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("boards.agent_config", "boards.agents.spec"),
        ("boards.providers", "boards.agents.providers"),
        ("boards.runtime", "boards.agents.runtime"),
    ],
)
def test_an_old_module_path_is_the_moved_module(old, new):
    # The same module object, so patching a name through either path patches both.
    assert importlib.import_module(old) is importlib.import_module(new)
