"""An example of a custom agent: Python code instead of a prompt and a cascade.

``KeywordClassifier`` labels support messages by keyword rules, calling no model
at all: the cheapest tier there is. It is registered in the default
``KAIZEN_AGENT_CLASSES``; an agent uses it by naming
``boards.example_agents.KeywordClassifier`` as its implementation. Its outputs go
through the line like any other: onto the board, into Done, counted by the
agent's metrics; it makes no ledger rows, as it makes no model calls.

Write your own the same way: subclass ``boards.agents.BaseAgent`` (or
``PromptCascadeAgent``, to work around the cascade) and add its dotted path to
``KAIZEN_AGENT_CLASSES``.
"""

from __future__ import annotations

import re
from typing import Any

from boards.agents import AgentFailed, BaseAgent, Output


class KeywordClassifier(BaseAgent):
    """Labels a message with the category whose keywords it mentions most.
    Confidence is the share of keyword hits that went to that label; a message
    that mentions none fails the attempt, so a model-backed agent can take it."""

    RULES: dict[str, tuple[str, ...]] = {
        "billing": ("invoice", "refund", "charge", "charged", "payment", "price", "fee"),
        "shipping": ("delivery", "delivered", "shipping", "ship", "tracking", "parcel", "arrived"),
        "account": ("login", "log in", "password", "account", "sign in", "locked"),
        "product": ("broken", "defect", "scratch", "missing", "quality", "damaged"),
    }

    def capabilities(self) -> list[str]:
        return ["classify"]

    def process(self, task) -> Output:
        text = f"{task.title}\n{task.input}".casefold()
        hits = {
            label: sum(len(re.findall(rf"\b{re.escape(word)}\b", text)) for word in words)
            for label, words in self.RULES.items()
        }
        total = sum(hits.values())
        if total == 0:
            raise AgentFailed(
                "no keyword of any category (" + ", ".join(self.RULES) + ") appears in the message"
            )
        label = max(hits, key=lambda name: (hits[name], name))
        confidence = round(hits[label] / total, 3)
        return Output(text=f"label: {label}", confidence=confidence, confidence_source="rules")

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "rules": sum(len(words) for words in self.RULES.values())}
