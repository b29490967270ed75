"""Custom agent classes, named by dotted path.

The ``KAIZEN_AGENT_CLASSES`` setting lists the classes an agent may name as its
``implementation``; each is imported on first use, once per process. The agent
model (``Agent.is_simulated``, ``Agent.offered_capabilities``), the config file
and the API ask about an agent's class here, without importing the cascade or
the runtime.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from boards.agents.outputs import AgentFailed

logger = logging.getLogger(__name__)


class CustomAgentRow(Protocol):
    """What the registry reads of an agent (a ``boards.models.Agent``)."""

    pk: Any
    implementation: str


@functools.cache
def agent_class(path: str) -> type[Any]:
    """The class a registered dotted path names (imported once per process)."""
    if path not in settings.KAIZEN_AGENT_CLASSES:
        raise AgentFailed(f"agent class {path!r} is not registered in KAIZEN_AGENT_CLASSES")
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise AgentFailed(f"agent class {path!r} cannot be imported: {exc}") from None
    return cls


def custom_agent(agent: CustomAgentRow) -> Any:
    """An instance of the agent's own class, for one run; AgentFailed if the class
    is not registered or cannot be imported."""
    return agent_class(agent.implementation)(agent)


def custom_capabilities(agent: CustomAgentRow) -> list[str]:
    """A custom agent's ``capabilities()``; none (so it pulls no capability-specific
    work) if its class cannot be loaded, which the run and the checks report."""
    try:
        offered = custom_agent(agent).capabilities()
    except Exception:
        logger.exception("agent %s: capabilities() of %s failed", agent.pk, agent.implementation)
        return []
    return [c for c in offered if isinstance(c, str) and c]


def is_simulated(agent: CustomAgentRow) -> bool:
    """Whether a custom agent's class says it is simulated (False if it cannot be loaded)."""
    try:
        return bool(custom_agent(agent).simulated)
    except Exception:
        return False
