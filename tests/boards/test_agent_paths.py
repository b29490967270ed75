"""Dotted paths that outlive a move: the custom-agent API the README documents
(``boards.agents.BaseAgent``...), and the example class agents name in their rows."""

from __future__ import annotations

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
