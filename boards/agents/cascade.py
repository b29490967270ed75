"""What does a task's work: an agent's implementation.

The built-in ``PromptCascadeAgent`` renders the agent's prompt from the task
(``boards.agents.prompts``) and runs its cascade: the cheapest tier first, its
output taken when its confidence clears the tier's threshold (early exit),
otherwise the next tier; the last tier's output is taken whatever it scores.
Identical calls are served from the response cache
(``boards.agents.response_cache``). Every call, cached or not, becomes a ledger
row (``CallRecord``).

A custom agent is Python code: a class registered by dotted path in the
``KAIZEN_AGENT_CLASSES`` setting (``boards.agents.registry``), with
``process(task) -> Output``, ``capabilities()`` and ``metrics()``. Subclass
``BaseAgent`` (or ``PromptCascadeAgent``, to pre- or post-process around the
cascade) and name the class in an agent's ``implementation``.
``boards.example_agents`` has one.

Nothing here writes to the database: the runtime hands the Output (or the
AgentFailed) to the services, which record them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Generator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from django.utils import timezone

from andon import jidoka
from boards.agents.outputs import AgentDeferred, AgentFailed, CallRecord, Output
from boards.agents.prompts import PromptError, render_prompt, task_variables, with_review_feedback
from boards.agents.providers import ModelRequest, ModelResponse, ProviderError, get_provider
from boards.agents.registry import custom_agent
from boards.agents.response_cache import Prefetch, cache_enabled, cache_key, cached_response, request_key
from boards.agents.spec import (
    ConfigError,
    Tier,
    examples_wanted,
    parse_cascade,
    parse_parameters,
    parse_variables,
)
from boards.selectors import agent_metrics_get
from experiments import few_shot

if TYPE_CHECKING:
    from boards.agents.provider_types import AsyncProvider
    from boards.models import Agent, Task


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
        return agent_metrics_get(agent=self.agent)


class PromptCascadeAgent(BaseAgent):
    """The prompt and the cascade: what every agent without an implementation runs."""

    # The batch's cache reads its first call's answer is taken from (``plan``).
    prefetch: Prefetch | None = None

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
        template = self.agent.prompt_template
        wanted = examples_wanted(template)
        # Only a template that asks for examples pays for them (an embedding and a search).
        examples = few_shot.examples_text(agent_id=self.agent.pk, task=task, count=wanted) if wanted else ""
        try:
            prompt = render_prompt(template, task_variables(task, declared, examples=examples))
        except PromptError as exc:
            raise AgentFailed(str(exc)) from None
        return with_review_feedback(prompt, template, task.review_feedback)

    def process(self, task: Task) -> Output:
        return self.cascade(task, *self.prepare(task))

    def prepare(self, task: Task) -> tuple[str, list[Tier], dict[str, Any]]:
        """The cascade's inputs: the prompt rendered (which may read the database:
        few-shot examples), the tiers and the generation parameters. Raises
        AgentFailed for a configuration or prompt that cannot run."""
        tiers = self.tiers()
        prompt = self.prompt(task)
        try:
            generation = parse_parameters(self.agent.parameters)
        except ConfigError as exc:
            raise AgentFailed(f"the agent's parameters are invalid: {exc}") from None
        return prompt, tiers, generation

    def plan(self, task: Task) -> CascadeSteps:
        """What ``process`` does, as steps for a driver (see ``drive`` and
        ``adrive``): prepared now, the calls left to the driver. With a
        ``prefetch`` (the runtime's, for a batch), the first call's key is named
        to it, and its answer taken from it once fetched (before the steps run)."""
        prompt, tiers, generation = self.prepare(task)
        if self.prefetch is not None and tiers and self.agent.cache_responses and cache_enabled():
            self.prefetch.want(cache_key(tiers[0], prompt, {**generation, **tiers[0].parameters}))
        return self.cascade_steps(task, prompt, tiers, generation)

    def awaitable(self) -> bool:
        """Whether ``process`` may run as ``plan``'s steps on an event loop
        (boards.agents.runtime): this class's own ``process`` and ``cascade`` (a
        subclass overriding either runs its code on a thread) and a provider with
        ``acomplete`` for every tier (an unknown provider has none: its call fails
        on a thread, recorded as ever). (A subclass that overrides ``cascade_steps``
        runs it on the loop: it must not touch the database but in a ``Blocking``
        step, where Django refuses it.)"""
        cls = type(self)
        if cls.process is not PromptCascadeAgent.process or cls.cascade is not PromptCascadeAgent.cascade:
            return False
        # Read without parsing the cascade (``prepare`` parses it, and refuses a
        # malformed one with its message, on the loop's path as on a thread's).
        cascade = self.agent.cascade if isinstance(self.agent.cascade, list) else []
        names = {str(tier.get("provider")) for tier in cascade if isinstance(tier, dict)}
        try:
            return all(callable(getattr(get_provider(name), "acomplete", None)) for name in names)
        except Exception:
            return False

    @staticmethod
    def _output(response: Any, tier: int, calls: list, to_cache: list, cached_from: str) -> Output:
        """The cascade's answer: ``response`` from ``tier``, with every call made."""
        return Output(
            text=response.text,
            confidence=response.confidence,
            confidence_source=response.confidence_source,
            tier=tier,
            calls=tuple(calls),
            cache_entries=tuple(to_cache),
            cached_from=cached_from,
        )

    def cascade(self, task: Task, prompt: str, tiers: list[Tier], generation: dict[str, Any]) -> Output:
        return drive(self.cascade_steps(task, prompt, tiers, generation))

    def cascade_steps(
        self, task: Task, prompt: str, tiers: list[Tier], generation: dict[str, Any]
    ) -> CascadeSteps:
        """The cascade, yielding what it needs done: a ``Call`` to a model (sent
        back its ModelResponse, or thrown its ProviderError) and ``Blocking`` work
        that may read the database or wait on Redis (sent back its result). It
        returns the Output or raises AgentFailed / AgentDeferred as ``process``
        does. Everything else is computed here, so both drivers run one cascade."""
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
            window = tier.window
            at = timezone.now()
            response = None
            if self.agent.cache_responses and cache_enabled():
                read, response = self.prefetch.answer(key) if self.prefetch is not None else (False, None)
                if not read:
                    response = yield Blocking(cached_response, (key,))
            source = "cache" if response is not None else "model"
            if response is None and not (yield from _call_allowed(tier, task.board_id)):
                # The model's circuit breaker is open: not called (no ledger row, as
                # nothing was spent); the next tier is tried.
                errors.append(f"tier {number} ({tier.model}): skipped, its circuit breaker is open")
                skipped = True
                continue
            if response is None:
                started = time.perf_counter()
                try:
                    response = yield Call(
                        tier.provider,
                        ModelRequest(model=tier.model, prompt=prompt, input=task.input, settings=parameters),
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
                            error_type=exc.error_type,
                            at=at,
                            request_key=request_key(key),
                            context_window=window,
                        )
                    )
                    errors.append(f"tier {number} ({tier.model}): {exc}")
                    continue
                if self.agent.cache_responses:
                    to_cache.append((key, response))
            accepted = last or tier.accepts(response.confidence)
            # Over-processing is counted where the data shows it: an output the
            # cascade passes over is inspected as the accepted one would be (cheap
            # checks on a text already in hand; never a model call).
            would_pass = (
                None
                if accepted
                else (
                    yield Blocking(
                        jidoka.output_would_pass,
                        (task, response.text),
                        {"confidence": response.confidence, "tokens_out": response.tokens_out},
                    )
                )
            )
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
                    request_key=request_key(key),
                    context_window=window,
                    would_pass=would_pass,
                )
            )
            cached_from = key if source == "cache" else ""
            if accepted:
                return self._output(response, number, calls, to_cache, cached_from)
            fallback = (number, response, cached_from)
        if skipped and fallback is not None:
            # The stronger tiers are out of service: the best output there is goes
            # on, to be inspected (and escalated to a person if it falls short).
            number, response, cached_from = fallback
            index = max(i for i, call in enumerate(calls) if call.tier == number and not call.error)
            calls[index] = dataclasses.replace(calls[index], accepted=True)
            return self._output(response, number, calls, to_cache, cached_from)
        if skipped and not calls:
            raise AgentDeferred("; ".join(errors[-3:]))
        # Only reached when the last tier (and every tier after the last usable
        # output) failed or was skipped: the attempt fails with the providers' own words.
        raise AgentFailed("; ".join(errors[-3:]), calls)


@dataclasses.dataclass(frozen=True)
class Call:
    """A step of a cascade: call ``provider`` with ``request``."""

    provider: str
    request: ModelRequest


@dataclasses.dataclass(frozen=True)
class Blocking:
    """A step of a cascade: ``fn(*args, **kwargs)``, which may read the database or
    wait on Redis, so an asynchronous driver runs it on a thread."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)


CascadeSteps = Generator["Call | Blocking", Any, Output]


def _call_allowed(tier: Tier, board_id: int) -> Generator[Blocking, bool, bool]:
    """jidoka.model_call_allowed, answered without a step when the process's
    snapshot of open breakers is fresh and the model is not in it (nearly always)."""
    if jidoka.model_call_known_allowed(tier.provider, tier.model, board_id=board_id):
        return True
    return (yield Blocking(jidoka.model_call_allowed, (tier.provider, tier.model), {"board_id": board_id}))


def drive(steps: CascadeSteps) -> Output:
    """Run a cascade's steps here, on this thread: calls with ``complete``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if isinstance(step, Call):
                value = get_provider(step.provider).complete(step.request)
            else:
                value = step.fn(*step.args, **step.kwargs)
        except Exception as exc:
            error = exc


async def adrive(steps: CascadeSteps, blocking: Callable[[Blocking], Awaitable[Any]]) -> Output:
    """Run a cascade's steps on an event loop: calls with ``acomplete``, the
    ``Blocking`` steps through ``blocking`` (which runs them on a thread)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if isinstance(step, Call):
                value = await cast("AsyncProvider", get_provider(step.provider)).acomplete(step.request)
            else:
                value = await blocking(step)
        except Exception as exc:
            error = exc


def implementation_for(agent: Agent) -> BaseAgent:
    """What does the agent's work: its own class, or the prompt and the cascade."""
    if not agent.implementation:
        return PromptCascadeAgent(agent)
    return custom_agent(agent)
