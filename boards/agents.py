"""What does a task's work: an agent's implementation.

The built-in ``PromptCascadeAgent`` renders the agent's prompt from the task and
runs its cascade: the cheapest tier first, its output taken when its confidence
clears the tier's threshold (early exit), otherwise the next tier; the last
tier's output is taken whatever it scores. Identical calls are served from the
response cache. Every call, cached or not, becomes a ledger row (``CallRecord``).

The cache holds only answers that passed inspection: the cascade does not store
what it gets, it returns it on the Output (``cache_entries``), and the runtime
stores it once the completion has committed with a pass (``settle_cache``). A
defect waiting in Review is never served to the next identical task, and an
answer served from the cache that fails inspection now is dropped from it.

A custom agent is Python code: a class registered by dotted path in the
``KAIZEN_AGENT_CLASSES`` setting, with ``process(task) -> Output``,
``capabilities()`` and ``metrics()``. Subclass ``BaseAgent`` (or
``PromptCascadeAgent``, to pre- or post-process around the cascade) and name the
class in an agent's ``implementation``. ``boards.example_agents`` has one.

Nothing here writes to the database: the runtime hands the Output (or the
AgentFailed) to the services, which record it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache import caches
from django.utils import timezone
from django.utils.module_loading import import_string

from boards.agent_config import (
    ConfigError,
    Tier,
    parse_cascade,
    parse_parameters,
    parse_variables,
    template_fields,
)
from boards.providers import ModelRequest, ModelResponse, ProviderError, get_provider

if TYPE_CHECKING:
    from boards.models import Agent, Task

logger = logging.getLogger(__name__)

# Tier parameters that change how a call is made, not what it answers: left out of
# the cache key so that, say, a longer timeout still hits the cache.
_TRANSPORT_PARAMETERS = {"timeout", "max_retries", "max_in_flight", "api_key_env", "latency_ms"}


class AgentDeferred(Exception):
    """The work could not start: every model the agent would call is out of service
    (its circuit breaker is open). Not a failed attempt: the task goes back to wait."""


class PromptError(ValueError):
    """The prompt cannot be rendered for this task."""


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
    reused_from: int | None = None
    # When the call was made (the ledger's time); None: when it is recorded.
    at: datetime | None = None


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


# --- prompts -----------------------------------------------------------------------


def render_prompt(template: str, variables: dict[str, str]) -> str:
    """Fill ``{name}`` fields of a template; ``{{`` and ``}}`` are literal braces."""
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise PromptError(str(exc)) from None
    missing = sorted({f for f in fields if f not in variables})
    if missing:
        raise PromptError(
            "prompt template uses unknown variable(s): "
            + ", ".join(missing)
            + f" (available: {', '.join(sorted(variables))})"
        )
    return template.format_map(variables)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def task_variables(task: Task, declared: list[str]) -> dict[str, str]:
    """The values a template is rendered with: ``input``, ``title``, ``last_error``
    and ``review_feedback`` always; each declared variable from the field of that name when the task's
    input is a JSON object. A declared variable the input lacks is a PromptError
    naming it (the input cannot be rendered as the agent expects)."""
    variables = {
        "input": task.input,
        "title": task.title,
        "last_error": task.last_error,
        "review_feedback": task.review_feedback,
    }
    if not declared:
        return variables
    try:
        data = json.loads(task.input)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PromptError(
            f"the agent's prompt uses {', '.join(declared)}, which a task gives as fields of a JSON object "
            'input (such as {"' + declared[0] + '": "..."}); this task\'s input is not a JSON object'
        )
    missing = [name for name in declared if name not in data]
    if missing:
        raise PromptError(
            f"the task's input has no field {', '.join(repr(m) for m in missing)}, which the agent's prompt "
            f"uses (it has: {', '.join(sorted(map(str, data))) or 'no fields'})"
        )
    variables.update({name: _as_text(data[name]) for name in declared})
    return variables


REVIEW_FEEDBACK_NOTE = (
    "\n\nA reviewer rejected an earlier answer to this task and said: {feedback}\n"
    "Answer again, taking this into account."
)


def with_review_feedback(prompt: str, template: str, feedback: str) -> str:
    """A reviewer's reason for rejecting the last output reaches the next attempt:
    through {review_feedback} where the template places it, else appended. (The
    prompt then differs, so the response cache cannot serve the rejected answer.)"""
    if not feedback or "review_feedback" in template_fields(template):
        return prompt
    return prompt + REVIEW_FEEDBACK_NOTE.format(feedback=feedback)


# --- the response cache --------------------------------------------------------------


def cache_key(tier: Tier, prompt: str, parameters: dict[str, Any]) -> str:
    """(provider, model, rendered prompt, parameters) as one digest. The base URL is a
    parameter, so two servers serving a model of the same name do not share entries."""
    relevant = {k: v for k, v in sorted(parameters.items()) if k not in _TRANSPORT_PARAMETERS}
    blob = json.dumps([tier.provider, tier.model, prompt, relevant], sort_keys=True, ensure_ascii=False)
    return "response:" + hashlib.sha256(blob.encode()).hexdigest()


def _cache():
    return caches["responses"]


def cached_response(key: str) -> ModelResponse | None:
    if settings.KAIZEN_RESPONSE_CACHE_SECONDS <= 0:
        return None
    try:
        value = _cache().get(key)
    except Exception:
        # The cache is an economy, not a dependency: a Redis hiccup costs a model call.
        logger.warning("response cache unavailable for reading", exc_info=True)
        return None
    if not isinstance(value, dict):
        return None
    try:
        return ModelResponse(**value)
    except TypeError:
        return None


def settle_cache(output: Output, *, passed: bool) -> None:
    """After a completion committed: cache the output's fresh responses if it
    passed inspection; if it is a defect served from the cache (stored before
    its checks changed, or by an older version), drop that entry."""
    if passed:
        for key, response in output.cache_entries:
            store_response(key, response)
    elif output.cached_from:
        delete_response(output.cached_from)


def delete_response(key: str) -> None:
    try:
        _cache().delete(key)
    except Exception:
        logger.warning("response cache unavailable for deleting", exc_info=True)


def store_response(key: str, response: ModelResponse) -> None:
    if settings.KAIZEN_RESPONSE_CACHE_SECONDS <= 0:
        return
    value = {
        "text": response.text,
        "confidence": response.confidence,
        "tokens_in": response.tokens_in,
        "tokens_out": response.tokens_out,
        "latency_ms": response.latency_ms,
        "confidence_source": response.confidence_source,
    }
    try:
        _cache().set(key, value, timeout=settings.KAIZEN_RESPONSE_CACHE_SECONDS)
    except Exception:
        logger.warning("response cache unavailable for writing", exc_info=True)


# --- agents --------------------------------------------------------------------------


class BaseAgent:
    """The interface of every agent implementation. One instance serves one run."""

    # Shown as "simulated" wherever the agent appears when True.
    simulated = False

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def process(self, task: Task) -> Output:
        """Do the task's work. Raise AgentFailed (with the calls made so far) for a
        failed attempt; any other exception is also a failed attempt, logged as a bug."""
        raise NotImplementedError

    def capabilities(self) -> list[str]:
        """What tasks this agent takes (a task asking for another capability goes elsewhere)."""
        value = self.agent.capabilities
        return [c for c in value if isinstance(c, str) and c] if isinstance(value, list) else []

    def metrics(self) -> dict[str, Any]:
        """Figures about the agent's work, shown on its page."""
        from boards.selectors import agent_metrics

        return agent_metrics(agent=self.agent)


class PromptCascadeAgent(BaseAgent):
    """The prompt and the cascade: what every agent without an implementation runs."""

    def tiers(self) -> list[Tier]:
        try:
            return parse_cascade(self.agent.cascade)
        except ConfigError as exc:
            raise AgentFailed(f"the agent's cascade is invalid: {exc}") from None

    @property
    def simulated(self) -> bool:  # type: ignore[override]
        return any(tier.simulated for tier in self.agent.tiers)

    def prompt(self, task: Task) -> str:
        try:
            declared = parse_variables(self.agent.prompt_variables)
        except ConfigError as exc:
            raise AgentFailed(f"the agent's variables are invalid: {exc}") from None
        try:
            prompt = render_prompt(self.agent.prompt_template, task_variables(task, declared))
        except PromptError as exc:
            raise AgentFailed(str(exc)) from None
        return with_review_feedback(prompt, self.agent.prompt_template, task.review_feedback)

    def process(self, task: Task) -> Output:
        tiers = self.tiers()
        prompt = self.prompt(task)
        try:
            generation = parse_parameters(self.agent.parameters)
        except ConfigError as exc:
            raise AgentFailed(f"the agent's parameters are invalid: {exc}") from None
        return self.cascade(task, prompt, tiers, generation)

    def cascade(self, task: Task, prompt: str, tiers: list[Tier], generation: dict[str, Any]) -> Output:
        from andon import jidoka  # andon's models import boards': not at module level

        calls: list[CallRecord] = []
        # Stored only once the output has passed inspection (see settle_cache).
        to_cache: list[tuple[str, ModelResponse]] = []
        errors: list[str] = []
        # The last output not accepted, for when every tier after it is skipped.
        fallback: tuple[int, Any, str] | None = None
        skipped = False
        for number, tier in enumerate(tiers, start=1):
            last = number == len(tiers)
            parameters = {**generation, **tier.parameters}
            key = cache_key(tier, prompt, parameters)
            at = timezone.now()
            response = cached_response(key) if self.agent.cache_responses else None
            source = "cache" if response is not None else "model"
            if response is None and not jidoka.model_call_allowed(
                tier.provider, tier.model, board_id=task.board_id
            ):
                # The model's circuit breaker is open: not called (no ledger row, as
                # nothing was spent); the next tier is tried.
                errors.append(f"tier {number} ({tier.model}): skipped, its circuit breaker is open")
                skipped = True
                continue
            if response is None:
                started = time.perf_counter()
                try:
                    response = get_provider(tier.provider).complete(
                        ModelRequest(model=tier.model, prompt=prompt, input=task.input, settings=parameters)
                    )
                except ProviderError as exc:
                    # Recorded, then the next tier is tried: a cheap model failing
                    # is one more reason to ask a stronger one.
                    calls.append(
                        CallRecord(
                            source="model",
                            tier=number,
                            provider=tier.provider,
                            model=tier.model,
                            latency_ms=round((time.perf_counter() - started) * 1000, 3),
                            error=str(exc)[:2000],
                            at=at,
                        )
                    )
                    errors.append(f"tier {number} ({tier.model}): {exc}")
                    continue
                if self.agent.cache_responses:
                    to_cache.append((key, response))
            accepted = last or tier.accepts(response.confidence)
            calls.append(
                CallRecord(
                    source=source,
                    tier=number,
                    provider=tier.provider,
                    model=tier.model,
                    # A cache hit spends no tokens and costs nothing.
                    tokens_in=response.tokens_in if source == "model" else 0,
                    tokens_out=response.tokens_out if source == "model" else 0,
                    cost=tier.cost(response.tokens_in, response.tokens_out)
                    if source == "model"
                    else Decimal(0),
                    latency_ms=response.latency_ms if source == "model" else 0.0,
                    confidence=response.confidence,
                    confidence_source=response.confidence_source,
                    accepted=accepted,
                    at=at,
                )
            )
            if accepted:
                return Output(
                    text=response.text,
                    confidence=response.confidence,
                    confidence_source=response.confidence_source,
                    tier=number,
                    calls=tuple(calls),
                    cache_entries=tuple(to_cache),
                    cached_from=key if source == "cache" else "",
                )
            fallback = (number, response, key if source == "cache" else "")
        if skipped and fallback is not None:
            # The stronger tiers are out of service: the best output there is goes
            # on, to be inspected (and escalated to a person if it falls short).
            number, response, cached_from = fallback
            index = max(i for i, call in enumerate(calls) if call.tier == number and not call.error)
            calls[index] = dataclasses.replace(calls[index], accepted=True)
            return Output(
                text=response.text,
                confidence=response.confidence,
                confidence_source=response.confidence_source,
                tier=number,
                calls=tuple(calls),
                cache_entries=tuple(to_cache),
                cached_from=cached_from,
            )
        if skipped and not calls:
            raise AgentDeferred("; ".join(errors[-3:]))
        # Only reached when the last tier (and every tier after the last usable
        # output) failed or was skipped: the attempt fails with the providers' own words.
        raise AgentFailed("; ".join(errors[-3:]), calls)


@functools.cache
def agent_class(path: str) -> type[BaseAgent]:
    """The class a registered dotted path names (imported once per process)."""
    if path not in settings.KAIZEN_AGENT_CLASSES:
        raise AgentFailed(f"agent class {path!r} is not registered in KAIZEN_AGENT_CLASSES")
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise AgentFailed(f"agent class {path!r} cannot be imported: {exc}") from None
    return cls


def implementation_for(agent: Agent) -> BaseAgent:
    if not agent.implementation:
        return PromptCascadeAgent(agent)
    return agent_class(agent.implementation)(agent)


def custom_capabilities(agent: Agent) -> list[str]:
    """A custom agent's ``capabilities()``; none (so it pulls no capability-specific
    work) if its class cannot be loaded, which the run and the checks report."""
    try:
        offered = implementation_for(agent).capabilities()
    except Exception:
        logger.exception("agent %s: capabilities() of %s failed", agent.pk, agent.implementation)
        return []
    return [c for c in offered if isinstance(c, str) and c]


def is_simulated(agent: Agent) -> bool:
    try:
        return bool(implementation_for(agent).simulated)
    except Exception:
        return False
