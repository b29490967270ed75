"""What every model provider speaks: the request, the response, the error, and the
``Provider`` interface. The real providers (``boards.agents.providers``) and the
simulated model (``boards.agents.simulated``) both build on this module, and neither
on the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class ProviderError(Exception):
    """A model call failed; the message is the provider's, shown on the task.
    ``error_type`` is a short, bounded name for the kind of failure (an HTTP status
    such as "429", "timeout", "connection_error"...), the OpenTelemetry
    ``error.type`` of the call; empty: the class name stands for it."""

    def __init__(self, message: str, *, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


@dataclass(frozen=True)
class ModelRequest:
    model: str
    prompt: str
    input: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelResponse:
    text: str
    # None when a real model gave neither log-probabilities nor a structured confidence.
    confidence: float | None
    tokens_in: int
    tokens_out: int
    latency_ms: float
    # How the confidence was obtained: "logprobs", "structured", "none" or "simulated".
    # A default keeps the simulated provider's (and older) constructors working.
    confidence_source: str = "simulated"


class Provider(Protocol):
    name: str
    simulated: bool

    def complete(self, request: ModelRequest) -> ModelResponse: ...


class AsyncProvider(Provider, Protocol):
    """A provider that can also make its call on an event loop. Optional: a cascade
    whose providers all have ``acomplete`` runs on the worker's loop
    (boards.agents.runtime), otherwise on a thread."""

    async def acomplete(self, request: ModelRequest) -> ModelResponse: ...
