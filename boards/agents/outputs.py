"""What an agent hands back: its Output and the ledger rows of its model calls
(``CallRecord``), or the exceptions that say why there is no output
(``AgentFailed``, ``AgentDeferred``). Plain values: the runtime gives them to the
services, which record them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from boards.agents.provider_types import ModelResponse


class AgentDeferred(Exception):
    """The work could not start: every model the agent would call is out of service
    (its circuit breaker is open). Not a failed attempt: the task goes back to wait."""


class AgentFailed(Exception):
    """The attempt failed; ``calls`` are the model calls it made first (they cost
    what they cost, and go to the ledger all the same)."""

    def __init__(self, message: str, calls: tuple[CallRecord, ...] | list[CallRecord] = ()) -> None:
        super().__init__(message)
        self.calls = tuple(calls)


@dataclass(frozen=True)
class CallRecord:
    """One ledger row to write."""

    source: str  # model, cache or reuse (boards.models.ModelCall.Source)
    tier: int | None = None
    provider: str = ""
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = Decimal(0)
    latency_ms: float = 0.0
    confidence: float | None = None
    confidence_source: str = ""
    accepted: bool = False
    error: str = ""
    # The kind of failure, bounded (ProviderError.error_type): the metrics' error.type.
    error_type: str = ""
    reused_from: int | None = None
    # When the call was made (the ledger's time); None: when it is recorded.
    at: datetime | None = None
    # What the seven wastes (andon.muda) need. The digest of (provider, model,
    # rendered prompt, parameters): the response cache's key, so identical calls
    # are found without hashing twice.
    request_key: str = ""
    # The tier's context window in tokens, when known (prompt tokens are measured against it).
    context_window: int | None = None
    # For an output the cascade did not take (below its tier's threshold): whether
    # it would have passed the agent's inspection, when that could be told (None
    # otherwise): a stronger tier paid for when a cheaper answer was good enough.
    would_pass: bool | None = None


@dataclass(frozen=True)
class Output:
    """What an agent made of a task."""

    text: str
    confidence: float | None = None
    # logprobs, structured, simulated, none; a custom agent may name its own.
    confidence_source: str = "none"
    # The cascade tier (1 = cheapest) whose output this is; None when no tier made it.
    tier: int | None = None
    calls: tuple[CallRecord, ...] = ()
    reused_from: int | None = None
    # The fresh model responses to cache if the output passes inspection, as
    # (key, response), and the cache key the accepted answer was served from.
    cache_entries: tuple[tuple[str, ModelResponse], ...] = ()
    cached_from: str = ""

    @property
    def settles_cache(self) -> bool:
        """Whether completing it leaves the response cache something to do (store
        its fresh answers, or drop the entry it was served from)."""
        return bool(self.cache_entries or self.cached_from)
