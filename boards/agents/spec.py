"""The agent spec: what an agent is configured with, and the one place it is checked.

An agent has a prompt template with declared variables, generation parameters
(temperature, top_p, max_tokens) and a **cascade**: tiers tried cheapest first,
each a provider, a model, its parameters, a price per 1k input and output tokens,
an acceptance threshold and, optionally, the model's context window in tokens. The admin (through ``Agent.clean``), the agent page,
``apply_config`` and the runtime all read them through this module, so a value
that passes here cannot fail a task later for being malformed.

Pure functions over plain values: no database, no Django models.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from boards.agents.providers import PROVIDER_NAMES
from boards.agents.simulated import SIMULATED_PROFILES

# Variables every template may use, whatever it declares.
BUILTIN_VARIABLES = ("input", "title", "last_error", "review_feedback", "examples")

# Retrieval few-shot (experiments.few_shot): a template opts in with {examples},
# the accepted answers to the most similar past tasks, EXAMPLES_DEFAULT of them;
# {examples:5} asks for 5 (1 to EXAMPLES_MAX). The count lives in the template,
# so changing it is a prompt change, proposed and tried like any other.
EXAMPLES_VARIABLE = "examples"
EXAMPLES_DEFAULT = 3
EXAMPLES_MAX = 10

# Generation parameters: name -> (minimum, maximum, integer?).
GENERATION_PARAMETERS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, False),
    "max_tokens": (1, 1_000_000, True),
}

# What else a tier's parameters may hold, by provider: name -> (minimum, maximum, kind).
_REAL_PROVIDER_SETTINGS: dict[str, tuple[float | None, float | None, str]] = {
    "base_url": (None, None, "url"),
    "api_key_env": (None, None, "name"),
    "timeout": (0.1, 3600, "number"),
    "max_retries": (0, 20, "integer"),
    "max_in_flight": (1, 100_000, "integer"),
    "logprobs": (None, None, "bool"),
}
TIER_SETTINGS: dict[str, dict[str, tuple[float | None, float | None, str]]] = {
    "simulated": {"latency_ms": (0, 3_600_000, "number"), "error_rate": (0, 1, "number")},
    "openai": _REAL_PROVIDER_SETTINGS,
    "anthropic": {k: v for k, v in _REAL_PROVIDER_SETTINGS.items() if k != "logprobs"},
}

# The keys a tier is written with (in the database's JSON, the YAML and the forms).
TIER_KEYS = ("provider", "model", "parameters", "price_in", "price_out", "threshold", "context_window")

# The largest context window a tier may name, in tokens (beyond any model's).
MAX_CONTEXT_WINDOW = 100_000_000

# The context windows of known models, in tokens (prompt and output together), by
# the start of the model's name: the longest matching prefix wins, so
# "gpt-4o-mini-2024-07-18" is a "gpt-4o-mini". From the providers' model pages
# (late 2026); a tier's own ``context_window`` overrides them, and a model not
# listed here has no window until one is given (its utilisation is then not measured).
KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic
    "claude-3": 200_000,
    "claude-haiku": 200_000,
    "claude-sonnet": 200_000,
    "claude-opus": 200_000,
    # Open models as Ollama, vLLM and llama.cpp name them (their default builds)
    "llama3": 8_192,
    "llama3.1": 131_072,
    "llama3.2": 131_072,
    "llama3.3": 131_072,
    "mistral": 32_768,
    "mixtral": 32_768,
    "qwen2.5": 32_768,
    "gemma2": 8_192,
    "phi3": 4_096,
}


@functools.lru_cache(maxsize=512)
def known_context_window(provider: str, model: str) -> int | None:
    """The context window of a model when nothing else is said: a simulated
    model's profile, else the longest prefix of KNOWN_CONTEXT_WINDOWS."""
    if provider == "simulated":
        profile = SIMULATED_PROFILES.get(model)
        return profile.context_window if profile else None
    name = model.lower()
    for prefix in sorted(KNOWN_CONTEXT_WINDOWS, key=len, reverse=True):
        if name.startswith(prefix):
            return KNOWN_CONTEXT_WINDOWS[prefix]
    return None


# Costs are kept to ten decimal places of a dollar: exact sums, whatever the database.
COST_PLACES = Decimal("0.0000000001")
MAX_CASCADE_TIERS = 8


class ConfigError(ValueError):
    """Problems with an agent's configuration. ``problems`` holds (where, message)
    pairs; ``where`` is a field path such as ``cascade[1].threshold``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {message}" for where, message in problems))


@dataclass(frozen=True)
class Tier:
    provider: str
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    # Dollars per 1,000 tokens.
    price_in: Decimal = Decimal(0)
    price_out: Decimal = Decimal(0)
    # Accept this tier's output when its confidence is at least this; None accepts
    # any output (the tier is as far as the cascade goes for this agent).
    threshold: float | None = None
    # Tokens the model takes in one call (prompt and output), as the tier gives it;
    # None: the model's known window (``window``). Inventory (andon.muda) measures
    # prompt tokens against it.
    context_window: int | None = None

    @property
    def window(self) -> int | None:
        """The tier's context window in tokens: its own, else the model's known one."""
        if self.context_window is not None:
            return self.context_window
        return known_context_window(self.provider, self.model)

    def cost(self, tokens_in: int, tokens_out: int) -> Decimal:
        raw = (Decimal(tokens_in) * self.price_in + Decimal(tokens_out) * self.price_out) / 1000
        return raw.quantize(COST_PLACES, rounding=ROUND_HALF_EVEN)

    def accepts(self, confidence: float | None) -> bool:
        if self.threshold is None:
            return True
        return confidence is not None and confidence >= self.threshold

    @property
    def simulated(self) -> bool:
        return self.provider == "simulated"

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "parameters": dict(self.parameters),
            "price_in": str(self.price_in),
            "price_out": str(self.price_out),
            "threshold": self.threshold,
            # Only when given: a window taken from the known models is not written
            # down, so a stored cascade keeps its form (and an agent its version).
            **({"context_window": self.context_window} if self.context_window is not None else {}),
        }


def _examples_count(spec: str) -> int | None:
    """How many examples ``{examples:<spec>}`` asks for; None when the spec is not a
    count from 1 to EXAMPLES_MAX."""
    if not spec:
        return EXAMPLES_DEFAULT
    if not spec.isdigit() or not 1 <= int(spec) <= EXAMPLES_MAX:
        return None
    return int(spec)


def _template_scan(template: str) -> tuple[list[str], list[str]]:
    """The template's plain ``{name}`` fields, in order, and every problem with it:
    each field that is not a plain name, a malformed brace (where the scan
    has to stop, so fields after it are not seen), and an ``{examples:n}`` whose
    count is not one the knowledge base serves."""
    fields: list[str] = []
    problems: list[str] = []
    try:
        for _, name, spec, conversion in string.Formatter().parse(template):
            if name is None:
                continue
            if name == EXAMPLES_VARIABLE and (conversion or _examples_count(spec or "") is None):
                problems.append(
                    f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}: "
                    f"write {{examples}} for {EXAMPLES_DEFAULT} examples, or {{examples:n}} for n "
                    f"from 1 to {EXAMPLES_MAX}"
                )
                continue
            if name.isidentifier():
                fields.append(name)
            else:
                problems.append(
                    f"{{{name}}} is not a variable: fields must be plain names such as {{input}} "
                    "(write {{ and }} for literal braces)"
                )
    except ValueError as exc:
        problems.append(f"the template is malformed: {exc} (write {{{{ and }}}} for literal braces)")
    return fields, problems


def template_fields(template: str) -> list[str]:
    """The ``{name}`` fields of a template, in order; ``{{`` and ``}}`` are literal braces.
    ValueError with a message for a malformed template or a field that is not a plain name."""
    fields, problems = _template_scan(template)
    if problems:
        raise ValueError(problems[0])
    return fields


def examples_wanted(template: str) -> int | None:
    """How many retrieved examples the template asks for with ``{examples}`` (or
    ``{examples:n}``); None when it does not use them. Cheap for the templates
    that do not: the line asks this of every prompt it renders."""
    if "{" + EXAMPLES_VARIABLE not in template:
        return None
    wanted = None
    try:
        for _, name, spec, conversion in string.Formatter().parse(template):
            if name == EXAMPLES_VARIABLE and not conversion:
                count = _examples_count(spec or "")
                if count is not None:
                    wanted = max(wanted or 0, count)
    except ValueError:
        return None
    return wanted


def check_template(template: str, variables: list[str] | tuple[str, ...] | None) -> list[str]:
    """Every problem with a template for an agent declaring ``variables``: fields
    that are not plain names, a malformed brace, and fields neither built in nor
    declared (not checked when ``variables`` is None: the declared ones are not
    known, because they have problems of their own). Empty when it is fine."""
    fields, problems = _template_scan(template)
    if variables is None:
        return problems
    available = set(BUILTIN_VARIABLES) | set(variables)
    unknown = sorted({f for f in fields if f not in available})
    if unknown:
        names = ", ".join(f"{{{name}}}" for name in unknown)
        problems.append(
            f"the template uses {names}, which is not declared: add "
            f"{'it' if len(unknown) == 1 else 'them'} to the agent's variables, or use one of "
            + ", ".join(f"{{{n}}}" for n in sorted(available))
        )
    return problems


def parse_variables(value: Any) -> list[str]:
    """Declared variables: a list of plain names (a comma-separated string is accepted too)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError([("variables", f"must be a list of names, got {value!r}")])
    problems = []
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.isidentifier():
            problems.append(("variables", f"{item!r} is not a plain name (letters, digits and _)"))
        elif item in BUILTIN_VARIABLES:
            problems.append(("variables", f"{item!r} is built in: every template may use it undeclared"))
        elif item in names:
            problems.append(("variables", f"{item!r} is declared twice"))
        else:
            names.append(item)
    if problems:
        raise ConfigError(problems)
    return names


def _plain(number: float | None) -> str:
    """3600000, not 3.6e+06; 0.1, not 0.10000."""
    return f"{int(number)}" if number is not None and float(number).is_integer() else f"{number}"


def _number(value: Any, where: str, low: float | None, high: float | None, *, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "an integer" if integer else "a number"
        raise ConfigError([(where, f"must be {kind}, got {value!r}")])
    if integer and not float(value).is_integer():
        raise ConfigError([(where, f"must be an integer, got {value!r}")])
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"between {_plain(low)} and {_plain(high)}" if high is not None else f"at least {_plain(low)}"
        )
        raise ConfigError([(where, f"must be {bounds}, got {value!r}")])
    return int(value) if integer else float(value)


def parse_parameters(value: Any, where: str = "parameters") -> dict[str, Any]:
    """Generation parameters: temperature (0-2), top_p (0-1), max_tokens (>= 1)."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ConfigError([(where, f'must be a mapping such as {{"temperature": 0.2}}, got {value!r}')])
    problems: list[tuple[str, str]] = []
    result: dict[str, Any] = {}
    for key, item in value.items():
        if key not in GENERATION_PARAMETERS:
            problems.append(
                (f"{where}.{key}", f"unknown parameter; allowed: {', '.join(GENERATION_PARAMETERS)}")
            )
            continue
        if item is None:
            continue
        low, high, integer = GENERATION_PARAMETERS[key]
        try:
            result[key] = _number(item, f"{where}.{key}", low, high, integer=integer)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return result


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ConfigError([(where, f"must be a price in dollars per 1k tokens, got {value!r}")])
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError([(where, f"must be a price in dollars per 1k tokens, got {value!r}")]) from None
    if not price.is_finite() or price < 0:
        raise ConfigError([(where, f"must be zero or more, got {value!r}")])
    if price > 1000:
        raise ConfigError(
            [(where, f"{value!r} dollars per 1k tokens is more than any model costs; check it")]
        )
    return price


def _tier_parameters(provider: str, value: Any, where: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ConfigError([(where, f"must be a mapping of parameters, got {value!r}")])
    allowed = {**GENERATION_PARAMETERS, **TIER_SETTINGS[provider]}
    problems: list[tuple[str, str]] = []
    result: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{where}.{key}"
        if key not in allowed:
            problems.append((path, f"unknown for provider {provider}; allowed: {', '.join(sorted(allowed))}"))
            continue
        if item is None:
            continue
        try:
            low: float | None
            high: float | None
            if key in GENERATION_PARAMETERS:
                low, high, integer = GENERATION_PARAMETERS[key]
                result[key] = _number(item, path, low, high, integer=integer)
                continue
            low, high, kind = TIER_SETTINGS[provider][key]
            if kind in ("number", "integer"):
                result[key] = _number(item, path, low, high, integer=kind == "integer")
            elif kind == "bool":
                if not isinstance(item, bool):
                    raise ConfigError([(path, f"must be true or false, got {item!r}")])
                result[key] = item
            elif kind == "url":
                if not isinstance(item, str) or not item.startswith(("http://", "https://")):
                    raise ConfigError(
                        [(path, f"must be an http(s) URL such as http://127.0.0.1:11434/v1, got {item!r}")]
                    )
                result[key] = item
            else:  # the name of an environment variable: the key itself is never stored
                if not isinstance(item, str) or not item.replace("_", "A").isalnum():
                    raise ConfigError(
                        [(path, f"must name an environment variable such as OPENAI_API_KEY, got {item!r}")]
                    )
                result[key] = item
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return result


def parse_tier(value: Any, where: str) -> Tier:
    if not isinstance(value, dict):
        raise ConfigError([(where, f"must be a mapping with provider, model and threshold, got {value!r}")])
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(value) - set(TIER_KEYS))
    if unknown:
        problems.append((where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TIER_KEYS)}"))
    provider = value.get("provider")
    model = value.get("model")
    if provider not in PROVIDER_NAMES:
        problems.append(
            (f"{where}.provider", f"must be one of {', '.join(PROVIDER_NAMES)}, got {provider!r}")
        )
        provider = None
    if not isinstance(model, str) or not model.strip():
        problems.append((f"{where}.model", "name the model, such as sim-small or gpt-4o-mini"))
        model = None
    elif len(model) > 120:
        problems.append((f"{where}.model", "keep the model name to 120 characters"))
    elif provider == "simulated" and model not in SIMULATED_PROFILES:
        problems.append(
            (
                f"{where}.model",
                f"unknown simulated model {model!r}; available: {', '.join(sorted(SIMULATED_PROFILES))}",
            )
        )
    parameters: dict[str, Any] = {}
    if provider is not None:
        try:
            parameters = _tier_parameters(provider, value.get("parameters"), f"{where}.parameters")
        except ConfigError as exc:
            problems.extend(exc.problems)
    prices: dict[str, Decimal] = {}
    for key in ("price_in", "price_out"):
        raw = value.get(key)
        if raw is None or raw == "":
            # A simulated model has its own list price; a real one is free until priced.
            profile = SIMULATED_PROFILES.get(model or "") if provider == "simulated" else None
            prices[key] = Decimal(str(getattr(profile, key))) if profile else Decimal(0)
            continue
        try:
            prices[key] = _price(raw, f"{where}.{key}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    threshold = value.get("threshold")
    if threshold is not None and threshold != "":
        try:
            threshold = _number(threshold, f"{where}.threshold", 0, 1, integer=False)
        except ConfigError as exc:
            problems.extend(exc.problems)
    else:
        threshold = None
    context_window = value.get("context_window")
    if context_window is not None and context_window != "":
        try:
            context_window = _number(
                context_window, f"{where}.context_window", 1, MAX_CONTEXT_WINDOW, integer=True
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    else:
        context_window = None
    if problems:
        raise ConfigError(problems)
    # Without a problem, both were checked above.
    assert provider is not None and model is not None
    return Tier(
        provider=provider,
        model=model.strip(),
        parameters=parameters,
        price_in=prices["price_in"],
        price_out=prices["price_out"],
        threshold=threshold,
        context_window=context_window,
    )


def parse_cascade(value: Any, where: str = "cascade") -> list[Tier]:
    """An ordered list of tiers, cheapest first. Every tier but the last needs a
    threshold (without one the tiers after it could never be reached)."""
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError([(where, "give at least one tier (provider, model, threshold)")])
    problems: list[tuple[str, str]] = []
    tiers: list[Tier | None] = []
    for index, item in enumerate(value):
        try:
            tiers.append(parse_tier(item, f"{where}[{index}]"))
        except ConfigError as exc:
            problems.extend(exc.problems)
            tiers.append(None)
    problems.extend(cascade_order_problems(tiers, where))
    if problems:
        raise ConfigError(problems)
    return [tier for tier in tiers if tier is not None]


def cascade_order_problems(tiers: list[Tier | None], where: str = "cascade") -> list[tuple[str, str]]:
    """What is wrong with the cascade as a whole: too many tiers, or a tier before
    the last that accepts every output. ``None`` stands for a tier with problems of
    its own, so the others are still checked and reported in the same pass."""
    if len(tiers) > MAX_CASCADE_TIERS:
        return [(where, f"at most {MAX_CASCADE_TIERS} tiers, got {len(tiers)}")]
    problems: list[tuple[str, str]] = []
    for index, tier in enumerate(tiers[:-1]):
        if tier is not None and tier.threshold is None:
            problems.append(
                (
                    f"{where}[{index}].threshold",
                    f"tier {index + 1} ({tier.model}) accepts every output, so the tiers after it "
                    "would never run: give it a threshold between 0 and 1, or remove the later tiers",
                )
            )
    return problems


def cascade_json(tiers: list[Tier]) -> list[dict[str, Any]]:
    return [tier.as_json() for tier in tiers]
