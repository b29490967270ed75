"""Examples of custom quality checks, registered by default in ``KAIZEN_CUSTOM_CHECKS``.

``no_email_addresses`` stops an output that contains an e-mail address: personal
data the agent copied from its input, or made up, and should not pass on. An agent
uses it with ``{"check": "custom", "path": "andon.example_checks.no_email_addresses"}``;
``"allow": ["example.com"]`` lets addresses at those domains (and their subdomains)
through, such as the company's own support address.

``figures_from_input`` stops an output that states a figure (a measurement, an
amount, a count) that its task's input and title do not give: the invented figure
a model writes when it fills a gap. Use it where every figure must be copied, as
in extractions and reports, not where the agent computes new ones (totals).

Write your own the same way: a function
``fn(text, *, confidence, context, params) -> str | None`` returning the reason for
a defect, or None to pass, and add its dotted path to ``KAIZEN_CUSTOM_CHECKS``.
"""

from __future__ import annotations

import re
from typing import Any

from andon.inspection import InspectionContext

# Deliberately loose (RFC 5322 allows far more): any address a person would read
# as one is flagged, and a false alarm costs a review, not a leak.
EMAIL_ADDRESS = re.compile(
    r"(?<![\w.+-])([\w.+-]+)@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,})(?![\w-])"
)


def _masked(local: str, domain: str) -> str:
    # The reason is shown in the inbox and kept in the records: it must not repeat the leak.
    return f"{local[0]}***@{domain}"


def no_email_addresses(
    text: str, *, confidence: float | None, context: InspectionContext, params: dict[str, Any]
) -> str | None:
    if "@" not in text:  # nearly every output: no regex at all
        return None
    allowed = params.get("allow", [])
    if not isinstance(allowed, list) or not all(isinstance(domain, str) for domain in allowed):
        raise ValueError(f'"allow" must be a list of domains such as ["example.com"], got {allowed!r}')
    allowed = [domain.lower().lstrip("@.") for domain in allowed]
    found: dict[tuple[str, str], None] = {}  # in order, each address once
    for local, domain in EMAIL_ADDRESS.findall(text):
        domain = domain.lower()
        if not any(domain == ok or domain.endswith("." + ok) for ok in allowed):
            found[(local.lower(), domain)] = None
    if not found:
        return None
    first = _masked(*next(iter(found)))
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return f"contains an e-mail address ({first}{more})"


# A figure as people write them: 42.031, 1,312, 3.5, 12 (a sign is not part of it:
# "-0.000" in a tolerance is the figure 0.000).
FIGURE = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])\d+(?:\.\d+)?(?![\w])")


def _figures(text: str) -> set[float]:
    values = set()
    for match in FIGURE.findall(text):
        try:
            values.add(float(match.replace(",", "")))
        except ValueError:
            continue
    return values


def figures_from_input(
    text: str, *, confidence: float | None, context: InspectionContext, params: dict[str, Any]
) -> str | None:
    """Stops an output that states a figure its task never gave: a made-up
    measurement, amount, count or date. Every number in the output must appear
    in the task's input or title (as a value: 42.0 and 42.000 are one figure).
    ``"allow": [150, 2]`` lets these figures through (say, a limit the prompt sets)."""
    allowed = params.get("allow", [])
    if not isinstance(allowed, list) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in allowed
    ):
        raise ValueError(f'"allow" must be a list of numbers such as [150], got {allowed!r}')
    given = _figures(context.input) | _figures(context.title) | {float(value) for value in allowed}
    invented = [figure for figure in FIGURE.findall(text) if float(figure.replace(",", "")) not in given]
    if not invented:
        return None
    shown = ", ".join(dict.fromkeys(invented[:3]))
    more = f" and {len(invented) - 3} more" if len(invented) > 3 else ""
    return f"states {shown}{more}, which the input does not give"
