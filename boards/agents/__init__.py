"""Everything that does a task's work, and the agent's page.

The public API for custom agent classes is importable from here, as
``boards.example_agents`` and the README use it: ``BaseAgent``,
``PromptCascadeAgent``, ``Output``, ``CallRecord``, ``AgentFailed``,
``AgentDeferred``, ``PromptError``, ``render_prompt``, ``task_variables``.

The modules, lowest first: each imports only the ones above it, and those after
``registry`` may also use the line's models (which import ``spec`` and
``registry``):

- ``provider_types``, ``simulated``, ``providers``: model calls; the offline
  simulated model and the real providers.
- ``spec``: the agent spec (prompt, variables, parameters, the cascade's tiers),
  checked in one place. Pure.
- ``outputs``: what an agent hands back (``Output``, ``CallRecord``) and why it
  could not (``AgentFailed``, ``AgentDeferred``).
- ``registry``: custom agent classes by dotted path (``KAIZEN_AGENT_CLASSES``).
- ``prompts``, ``response_cache``: rendering a prompt; the cache of model answers.
- ``cascade``: ``BaseAgent`` and ``PromptCascadeAgent``; reads the line's
  selectors and jidoka's circuit breakers.
- ``runtime``: running a claimed task in a worker; calls the services.
- ``forms``, ``views``, ``urls``: the agent pages.

The names below are loaded on first use (PEP 562), so that importing ``spec``
or ``registry`` (the agent model does, at import) does not import the cascade,
which reads the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from boards.agents.cascade import BaseAgent, PromptCascadeAgent
    from boards.agents.outputs import AgentDeferred, AgentFailed, CallRecord, Output
    from boards.agents.prompts import REVIEW_FEEDBACK_NOTE, PromptError, render_prompt, task_variables

# The public name -> the module that defines it.
_PUBLIC = {
    "BaseAgent": "boards.agents.cascade",
    "PromptCascadeAgent": "boards.agents.cascade",
    "AgentDeferred": "boards.agents.outputs",
    "AgentFailed": "boards.agents.outputs",
    "CallRecord": "boards.agents.outputs",
    "Output": "boards.agents.outputs",
    "PromptError": "boards.agents.prompts",
    "REVIEW_FEEDBACK_NOTE": "boards.agents.prompts",
    "render_prompt": "boards.agents.prompts",
    "task_variables": "boards.agents.prompts",
}

__all__ = [
    "REVIEW_FEEDBACK_NOTE",
    "AgentDeferred",
    "AgentFailed",
    "BaseAgent",
    "CallRecord",
    "Output",
    "PromptCascadeAgent",
    "PromptError",
    "render_prompt",
    "task_variables",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
