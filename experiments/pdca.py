"""The kaizen cycle (PDCA) of each agent, run by Celery beat.

**Plan** (``plan``): read the agent's recent ledger, inspections and andon
decisions, and find changes the evidence supports:

- ``verbose``: outputs longer than they need be (token waste recorded on many of
  them, or a median length far above the estimated optimum): ask for brevity
  when max_tokens is still well above the optimum.
- ``max_tokens``, ``tier1_threshold``, ``tier_order``, ``sampling``: the cascade
  and the generation parameters, tuned from the evidence of what each tier and
  setting delivered (experiments.tuning): max_tokens from the lengths of the
  answers that passed, tier 1's threshold from its passed-over answers that would
  have passed, dearer tiers that buy nothing dropped, a better temperature or
  top_p where one was tried.
- ``few_shot``: reviewers rejected or corrected several outputs for the same
  failed check (or with similar outputs): put their corrections into the
  template as examples.
- ``rewrite``: with a real provider configured (its key present), ask its model
  to rewrite the template from the failures. Never with simulated tiers only:
  the simulated model cannot write prompts, and pretending it did would be a lie.
- ``reasons``: reviewers sent answers back for the same reason, in words of their
  own (experiments.clusters groups their reasons by meaning): with a real
  provider, its model rewrites the template from those failures and reasons
  (a reflective step, GEPA's idea); with simulated tiers only, the template gets
  an instruction naming the failure and, where reviewers corrected some, up to
  three corrections as examples. It takes over from ``few_shot`` and ``rewrite``
  where their evidence is the cluster's.
- ``retrieval``: reviewers keep writing answers themselves (recurring
  corrections) and the knowledge base holds enough accepted answers: opt in to
  retrieval few-shot, ``{examples}`` (experiments.few_shot).

**Do** (``cycle``): open at most one proposal per cycle, the plan whose evidence
concerns the largest share of outputs, through ``proposal_create`` as the kaizen
loop. A minor change starts its canary at once; a major one waits for a person.
**Check** and **Act** are ``experiments.services.experiments_evaluate`` (the
sequential test, every few minutes) and the human gates; nothing here repeats them.

Evidence is read for the agent's active prompt version only: outputs of an older
version say nothing about the prompt a proposal would change (``sampling`` also
reads the versions that differ from it in their generation parameters only).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from andon.inspection import parse_checks
from andon.models import Escalation, Inspection
from boards.agents.providers import ModelRequest, ModelResponse, ProviderError, get_provider
from boards.agents.spec import (
    BUILTIN_VARIABLES,
    EXAMPLES_DEFAULT,
    EXAMPLES_VARIABLE,
    ConfigError,
    Tier,
    check_template,
    examples_wanted,
    parse_cascade,
    parse_parameters,
    parse_variables,
    template_fields,
)
from boards.models import Agent, Task
from experiments import clusters, few_shot, services, tuning
from experiments.embeddings import get_embedder
from experiments.models import ChangeProposal, Experiment, Pattern, PromptVersion, normal_prompt_fields
from experiments.planning import Plan
from experiments.planning import Window as _Window
from experiments.planning import current_fields as _current_fields

logger = logging.getLogger(__name__)

WINDOW = timedelta(days=7)
# Below this many outputs in the window, no plan: a handful of outputs is noise.
MIN_OUTPUTS = 30
# The most recent outputs (and their calls) read per plan: a busy agent's week
# can be large, and the latest few thousand say all a plan needs.
MAX_OUTPUTS = 5000
# Proposals this recent are compared with a plan, so no change is proposed twice.
RECENT_PROPOSALS = timedelta(days=30)
# How long before its output a run's calls may have been made (a run is cut off after
# KAIZEN_RUN_TIMEOUT_SECONDS, 10 minutes by default).
CALLS_BEFORE_OUTPUT = timedelta(hours=1)

# verbose
WASTE_SHARE = 0.20
MEDIAN_OVER_OPTIMAL = 2.0
# max_tokens above this many times the optimum lets outputs run long: ask for brevity.
BREVITY_OVER_OPTIMAL = 1.5
BREVITY_MARKER = "Be concise:"

# few_shot
MIN_REJECTIONS = 3
SIMILAR_OUTPUTS = 0.8
MAX_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 500
EXAMPLES_MARKER = "Examples of good answers, as reviewers corrected them:"

# rewrite
MIN_DEFECTS_FOR_REWRITE = 5
MAX_FAILURES_SHOWN = 8
REWRITE_MAX_TOKENS = 2000
REAL_PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# Tier settings that say how to reach the model, kept for the rewrite call.
_TRANSPORT = ("base_url", "api_key_env", "timeout", "max_retries", "max_in_flight", "temperature")

# reasons
# The newest rejected and corrected answers read per cycle (their reasons are embedded).
MAX_REASONED = 500
MAX_REASONS_SHOWN = 5
MAX_MEMBERS_SHOWN = 10
# The most of a reviewer's reason an added instruction quotes.
MAX_REASON_CHARS = 200

# retrieval
MIN_CORRECTIONS_FOR_RETRIEVAL = 3
# Accepted answers the knowledge base must hold before its examples are worth a search per task.
MIN_GOOD_FOR_RETRIEVAL = 20

QUOTE = 160


# --- reading the evidence ------------------------------------------------------------


def _window(agent: Agent, since: datetime) -> _Window:
    outputs = list(
        Inspection.objects.filter(agent=agent, prompt_version=agent.prompt_version, created_at__gte=since)
        .order_by("-created_at", "-pk")
        .values("pk", "task_id", "attempt", "passed", "failures", "waste_tokens", "tokens_out", "created_at")[
            :MAX_OUTPUTS
        ]
    )
    days = max(1, round((timezone.now() - since).total_seconds() / 86400))
    calls_since = since
    if len(outputs) == MAX_OUTPUTS:
        # Only the newest outputs are read: their calls were made at most a run's
        # length before them, so older calls need not be read either.
        calls_since = max(since, outputs[-1]["created_at"] - CALLS_BEFORE_OUTPUT)
    return _Window(agent=agent, since=since, days=days, outputs=outputs, calls_since=calls_since)


def _quote(text: str, limit: int = QUOTE) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def _money(value: Decimal | float) -> float:
    return round(float(value), 6)


def _checks(agent: Agent) -> list:
    try:
        return parse_checks(agent.quality_checks)
    except ConfigError:
        return []


def _optimal_tokens(agent: Agent) -> int | None:
    """The optimum the token-waste check measures against: its own setting, or the
    line's estimate from the agent's history (andon.jidoka)."""
    for spec in _checks(agent):
        if spec.kind == "token_waste" and spec.params.get("optimal_tokens"):
            return int(spec.params["optimal_tokens"])
    from andon import jidoka

    return jidoka.optimal_lengths.get(agent.pk)


def _pass_bar(agent: Agent) -> float | None:
    """The confidence an output needs to pass inspection (the strictest confidence check)."""
    minimums = [spec.params["min"] for spec in _checks(agent) if spec.kind == "confidence"]
    return max(minimums) if minimums else None


# --- plan: verbose -------------------------------------------------------------------


def _plan_verbose(window: _Window) -> Plan | None:
    agent = window.agent
    outputs = [o for o in window.outputs if o["tokens_out"] > 0]
    if len(outputs) < MIN_OUTPUTS:
        return None
    wasteful = [o for o in outputs if o["waste_tokens"] > 0]
    lengths = [o["tokens_out"] for o in outputs]
    median = statistics.median(lengths)
    optimal = _optimal_tokens(agent)
    share = len(wasteful) / len(outputs)
    far_above = optimal is not None and median >= MEDIAN_OVER_OPTIMAL * optimal
    if share < WASTE_SHARE and not far_above:
        return None

    try:
        current = parse_parameters(agent.parameters).get("max_tokens")
    except ConfigError:
        return None
    # max_tokens is the tuning planner's (experiments.tuning.plan_max_tokens, from the
    # lengths of the answers that passed): this plan asks for brevity, when the cap
    # still lets answers run well past the optimum.
    still_high = current is None or (optimal is not None and current > BREVITY_OVER_OPTIMAL * optimal)
    template = agent.prompt_template
    if not still_high or BREVITY_MARKER.lower() in template.lower():
        return None
    if optimal:
        words = max(5, round(optimal * 0.75))
        instruction = (
            f"{BREVITY_MARKER} answer in about {words} words or fewer, without preamble or repetition."
        )
    else:
        instruction = f"{BREVITY_MARKER} answer briefly, without preamble or repetition."
    fields = _current_fields(agent)
    fields["prompt_template"] = template.rstrip() + "\n\n" + instruction

    p90_all = statistics.quantiles(lengths, n=10, method="inclusive")[8]
    wasted = sum(o["waste_tokens"] for o in wasteful)
    example = None
    worst = max(wasteful, key=lambda o: o["waste_tokens"], default=None)
    if worst is not None:
        task: Mapping[str, Any] = (
            Task.objects.filter(pk=worst["task_id"]).values("pk", "title", "output").first() or {}
        )
        example = {
            "task": worst["task_id"],
            "title": task.get("title", ""),
            "tokens_out": worst["tokens_out"],
            "waste_tokens": worst["waste_tokens"],
            "output": _quote(task.get("output", ""), 300),
        }
    evidence = {
        "kind": "verbose",
        "window_days": window.days,
        "outputs": len(outputs),
        "outputs_with_waste": len(wasteful),
        "waste_share": round(share, 4),
        "median_tokens": median,
        "p90_tokens": p90_all,
        "optimal_tokens": optimal,
        "wasted_tokens": wasted,
        "max_tokens": current,
        "example": example,
    }
    reasons = [
        f"{len(wasteful)} of {len(outputs)} outputs in the last {window.days} days "
        f"({_percent(len(wasteful), len(outputs))}) ran past the optimal length, wasting {wasted:,} tokens",
        f"median {median:g} tokens, 90th percentile {p90_all:g}"
        + (f", against an estimated optimum of {optimal}" if optimal else ""),
    ]
    if example:
        reasons.append(
            f"for example task {example['task']} ({example['title']!r}): {example['tokens_out']} tokens, "
            f"{example['waste_tokens']} of them waste"
        )
    rationale = "Verbose outputs: " + "; ".join(reasons) + f'. Proposed: ask for brevity ("{instruction}").'
    long_share = (
        sum(1 for n in lengths if n >= MEDIAN_OVER_OPTIMAL * optimal) / len(lengths) if optimal else 0.0
    )
    return Plan("verbose", fields, rationale, evidence, strength=max(share, long_share))


# --- plan: recurring rejections -> few-shot examples ------------------------------


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _clusters(escalations: list[Escalation]) -> list[tuple[str, list[Escalation]]]:
    """Groups of decided escalations: by failed check, then by similar output."""
    groups: dict[str, list[Escalation]] = defaultdict(list)
    for escalation in escalations:
        for name in dict.fromkeys(escalation.failed_checks):
            if name:
                groups[f"failed check {name!r}"].append(escalation)
    result = list(groups.items())
    similar: list[list[Escalation]] = []
    for escalation in escalations:
        for cluster in similar:
            matcher = difflib.SequenceMatcher(a=cluster[0].output, b=escalation.output, autojunk=False)
            if matcher.quick_ratio() >= SIMILAR_OUTPUTS and matcher.ratio() >= SIMILAR_OUTPUTS:
                cluster.append(escalation)
                break
        else:
            similar.append([escalation])
    result += [("similar outputs", cluster) for cluster in similar]
    return sorted(result, key=lambda item: -len(item[1]))


def _with_examples(template: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The template with (input, corrected answer) pairs before it as examples."""
    blocks = [
        f"Input: {_escape(given.strip())}\nAnswer: {_escape(answer.strip())}" for given, answer in pairs
    ]
    return EXAMPLES_MARKER + "\n\n" + "\n\n".join(blocks) + "\n\nNow the task.\n\n" + template


def _plan_few_shot(window: _Window) -> Plan | None:
    agent = window.agent
    template = agent.prompt_template
    if window.n < MIN_OUTPUTS or EXAMPLES_MARKER in template:
        return None
    if examples_wanted(template) is not None:
        # Retrieval few-shot shows corrections of the most similar tasks already.
        return None
    # A group whose rejections are mostly a recurring cluster of reviewers' reasons
    # is that planner's evidence (``reasons``): not proposed twice, in two forms.
    in_clusters = {task for cluster in _recurring_clusters(window) for task in cluster.tasks}
    decided = list(
        Escalation.objects.filter(
            agent=agent,
            prompt_version=agent.prompt_version,
            created_at__gte=window.since,
            status__in=(Escalation.Status.REJECTED, Escalation.Status.CORRECTED),
        )
        .select_related("task")
        .order_by("-decided_at", "-pk")[:200]
    )
    for label, group in _clusters(decided):
        if len(group) < MIN_REJECTIONS:
            break
        if 2 * sum(1 for e in group if e.task_id in in_clusters) >= len(group):
            continue
        corrections = [
            e
            for e in group
            if e.status == Escalation.Status.CORRECTED
            and e.corrected_output.strip()
            and len(e.corrected_output) <= MAX_EXAMPLE_CHARS
            and len(e.task.input) <= MAX_EXAMPLE_CHARS
        ][:MAX_EXAMPLES]
        if corrections:
            return _few_shot(window, label, group, corrections)
    return None


def _few_shot(window: _Window, label: str, group: list[Escalation], corrections: list[Escalation]) -> Plan:
    agent = window.agent
    fields = _current_fields(agent)
    fields["prompt_template"] = _with_examples(
        agent.prompt_template, [(e.task.input, e.corrected_output) for e in corrections]
    )
    statuses = Counter(e.status for e in group)
    notes = [e.note.strip() for e in group if e.note.strip()][:5]
    evidence = {
        "kind": "few_shot",
        "window_days": window.days,
        "outputs": window.n,
        "group": label,
        "rejected": statuses[Escalation.Status.REJECTED],
        "corrected": statuses[Escalation.Status.CORRECTED],
        "escalations": [e.pk for e in group],
        "reviewer_notes": notes,
        "examples": [
            {
                "escalation": e.pk,
                "task": e.task_id,
                "input": e.task.input,
                "output": _quote(e.output, 300),
                "corrected_output": e.corrected_output,
            }
            for e in corrections
        ],
    }
    said = "; ".join(f'"{_quote(n, 100)}"' for n in notes[:3])
    rationale = (
        f"Recurring rejections: reviewers rejected or corrected {len(group)} outputs in the last "
        f"{window.days} days with the same {label} ({statuses[Escalation.Status.REJECTED]} rejected, "
        f"{statuses[Escalation.Status.CORRECTED]} corrected, of {window.n} outputs)"
        + (f"; they said {said}" if said else "")
        + f". Proposed: add {len(corrections)} of their corrections to the template as examples "
        f"(for example, for {_quote(corrections[0].task.input, 60)!r} they wrote "
        f"{_quote(corrections[0].corrected_output, 80)!r})."
    )
    return Plan("few_shot", fields, rationale, evidence, strength=len(group) / window.n)


# --- plan: a real model rewrites the prompt --------------------------------------


def rewrite_tier(agent: Agent) -> Tier | None:
    """The strongest tier of the cascade on a real provider whose key is in the
    environment (the last such: tiers run cheapest first); None if there is none."""
    try:
        tiers = parse_cascade(agent.cascade)
    except ConfigError:
        return None
    for tier in reversed(tiers):
        if tier.provider not in REAL_PROVIDER_KEYS:
            continue
        if os.environ.get(str(tier.parameters.get("api_key_env") or REAL_PROVIDER_KEYS[tier.provider])):
            return tier
    return None


def _rewrite_proposed(window: _Window) -> bool:
    """One rewrite per active version per window: a model answers differently each
    time, so the fields alone cannot tell that the same failures were sent already."""
    return ChangeProposal.objects.filter(
        agent=window.agent,
        source=PromptVersion.Source.KAIZEN,
        base_version__number=window.agent.prompt_version,
        evidence__kind="rewrite",
        created_at__gte=window.since,
    ).exists()


def _failures(window: _Window) -> list[dict]:
    defects = [o for o in window.outputs if not o["passed"]]
    escalations = {
        e.inspection_id: e
        for e in Escalation.objects.filter(inspection_id__in=[o["pk"] for o in defects[:200]])
    }
    tasks: dict[int, Mapping[str, Any]] = {
        t["pk"]: t
        for t in Task.objects.filter(pk__in={o["task_id"] for o in defects[:MAX_FAILURES_SHOWN]}).values(
            "pk", "title", "input", "output"
        )
    }
    failures = []
    for output in defects[:MAX_FAILURES_SHOWN]:
        escalation = escalations.get(output["pk"])
        task = tasks.get(output["task_id"], {})
        failures.append(
            {
                "task": output["task_id"],
                "input": _quote(task.get("input", ""), 400),
                "output": _quote(escalation.output if escalation else task.get("output", ""), 400),
                "failed": [
                    f"{f.get('name')}: {f.get('reason')}" for f in output["failures"] if isinstance(f, dict)
                ],
                "decision": escalation.status if escalation else "",
                "reviewer_note": escalation.note if escalation else "",
                "corrected_output": _quote(escalation.corrected_output, 400) if escalation else "",
            }
        )
    return failures


def _request_preamble(agent: Agent) -> list[str]:
    """The start of every rewrite request: the task, the placeholders the
    template may use, and the current template."""
    try:
        declared = parse_variables(agent.prompt_variables)
    except ConfigError:
        declared = []
    available = ", ".join(f"{{{name}}}" for name in (*BUILTIN_VARIABLES, *declared))
    return [
        f"You improve the prompt template of an AI agent named {agent.name!r}.",
        "The template is filled in with Python's str.format: each {name} placeholder is replaced by a "
        f"value (available: {available}); write {{{{ and }}}} for a literal brace.",
        "",
        "The current template, between the lines of <<< and >>>:",
        "<<<",
        agent.prompt_template,
        ">>>",
        "",
    ]


def rewrite_request(agent: Agent, failures: list[dict], *, defects: int, outputs: int, days: int) -> str:
    """What the model is asked: the template, the placeholders it must keep, the failures."""
    lines = [
        *_request_preamble(agent),
        f"In the last {days} days, {defects} of its {outputs} outputs failed inspection. Some of them:",
    ]
    for number, failure in enumerate(failures, start=1):
        lines.append(f"{number}. Input: {failure['input']}")
        lines.append(f"   Output: {failure['output']}")
        if failure["failed"]:
            lines.append(f"   Failed checks: {'; '.join(failure['failed'])}")
        if failure["decision"] in (Escalation.Status.REJECTED, Escalation.Status.CORRECTED):
            lines.append(f"   A reviewer {failure['decision']} it: {failure['reviewer_note'] or '(no note)'}")
        if failure["corrected_output"]:
            lines.append(f"   The reviewer's corrected output: {failure['corrected_output']}")
    lines += [
        "",
        "Rewrite the template so that failures like these become less likely. Keep every placeholder "
        "the current template uses. Reply with the new template only: no commentary, no code fences, "
        "no <<< >>> markers.",
    ]
    return "\n".join(lines)


_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.S)


def _clean_rewrite(text: str) -> str:
    text = text.strip()
    match = _FENCE.match(text)
    if match:
        text = match.group(1).strip()
    if text.startswith("<<<") and text.endswith(">>>"):
        text = text[3:-3].strip()
    return text


def _model_rewrite(agent: Agent, tier: Tier, prompt: str) -> tuple[str, ModelResponse] | None:
    """Ask ``tier``'s model to rewrite the agent's template (``prompt`` says how);
    its template and answer, or None (logged) when the call fails or the
    template it gives is unusable: malformed, unchanged, or dropping a placeholder."""
    request_settings = {k: v for k, v in tier.parameters.items() if k in _TRANSPORT}
    request_settings["max_tokens"] = REWRITE_MAX_TOKENS
    try:
        response = get_provider(tier.provider).complete(
            ModelRequest(model=tier.model, prompt=prompt, input="", settings=request_settings)
        )
    except Exception as exc:
        # Any failure of the call (ProviderError, or an SDK surprise) skips the plan, never the cycle.
        logger.warning(
            "kaizen: rewriting %s's prompt with %s/%s failed, skipped: %s",
            agent.name,
            tier.provider,
            tier.model,
            exc,
            exc_info=not isinstance(exc, ProviderError),
        )
        return None
    template = _clean_rewrite(response.text)
    try:
        declared = parse_variables(agent.prompt_variables)
        kept = set(template_fields(agent.prompt_template))
        used = set(template_fields(template))
    except (ConfigError, ValueError) as exc:
        logger.warning(
            "kaizen: %s/%s's rewrite of %s's prompt is unusable, skipped: %s",
            tier.provider,
            tier.model,
            agent.name,
            exc,
        )
        return None
    problems = check_template(template, declared)
    if not template or template == agent.prompt_template or problems or not kept <= used:
        why = "; ".join(problems) or (
            f"it drops {', '.join(sorted(kept - used))}" if not kept <= used else "it is empty or unchanged"
        )
        logger.warning(
            "kaizen: %s/%s's rewrite of %s's prompt is unusable, skipped: %s",
            tier.provider,
            tier.model,
            agent.name,
            why,
        )
        return None
    return template, response


def _plan_rewrite(window: _Window) -> Plan | None:
    agent = window.agent
    if window.n < MIN_OUTPUTS:
        return None
    defects = sum(1 for o in window.outputs if not o["passed"])
    if defects < MIN_DEFECTS_FOR_REWRITE:
        return None
    tier = rewrite_tier(agent)
    if tier is None:
        logger.info("kaizen: %s has no real provider with its key set: no rewrite by a model", agent.name)
        return None
    if _rewrite_proposed(window):
        return None
    if _reason_cluster(window) is not None:
        # The failures reviewers gave one reason for get a rewrite of their own
        # (``reasons``), from that reason: one model call, one rewrite a cycle.
        logger.info("kaizen: %s's recurring reviewers' reasons are rewritten for instead", agent.name)
        return None
    failures = _failures(window)
    prompt = rewrite_request(agent, failures, defects=defects, outputs=window.n, days=window.days)
    rewritten = _model_rewrite(agent, tier, prompt)
    if rewritten is None:
        return None
    template, response = rewritten
    fields = _current_fields(agent)
    fields["prompt_template"] = template
    checks = Counter(
        f.get("name", "")
        for o in window.outputs
        if not o["passed"]
        for f in o["failures"]
        if isinstance(f, dict)
    )
    decided = [
        f for f in failures if f["decision"] in (Escalation.Status.REJECTED, Escalation.Status.CORRECTED)
    ]
    evidence = {
        "kind": "rewrite",
        "window_days": window.days,
        "outputs": window.n,
        "defects": defects,
        "failed_checks": dict(checks.most_common()),
        "reviewer_notes": [f["reviewer_note"] for f in decided if f["reviewer_note"]][:5],
        "failures_shown": failures,
        "model": {
            "provider": tier.provider,
            "model": tier.model,
            "tokens_in": response.tokens_in,
            "tokens_out": response.tokens_out,
            "cost": _money(tier.cost(response.tokens_in, response.tokens_out)),
        },
    }
    top = ", ".join(f"{name} ({count})" for name, count in checks.most_common(3))
    rationale = (
        f"Failures: {defects} of {window.n} outputs in the last {window.days} days failed inspection"
        + (f" (most often: {top})" if top else "")
        + (
            f"; {len(decided)} of the {len(failures)} shown were rejected or corrected by reviewers"
            if decided
            else ""
        )
        + f". Proposed: the template as {tier.provider}/{tier.model} rewrote it from those failures."
    )
    if failures:
        rationale += f" For example task {failures[0]['task']}: {'; '.join(failures[0]['failed'])[:200]}."
    return Plan("rewrite", fields, rationale, evidence, strength=defects / window.n)


# --- plan: recurring reviewers' reasons -> an instruction and examples, or a rewrite ----


def _reason_failures(window: _Window) -> list[clusters.Failure]:
    """The answers of the active version reviewers rejected or corrected in the
    window with a reason (a correction's note), newest first."""
    agent = window.agent
    rows = (
        Pattern.objects.filter(
            agent=agent,
            prompt_version=agent.prompt_version,
            verdict__in=(Pattern.Verdict.REJECTED, Pattern.Verdict.CORRECTED),
            created_at__gte=window.since,
        )
        .exclude(reason="")
        .order_by("-created_at", "-pk")
        .values("pk", "task_id", "verdict", "reason", "output", "correction", "task__input")[:MAX_REASONED]
    )
    return [
        clusters.Failure(
            pattern=row["pk"],
            task=row["task_id"],
            verdict=row["verdict"],
            reason=row["reason"],
            input=row["task__input"],
            output=row["output"],
            correction=row["correction"],
        )
        for row in rows
    ]


def _recurring_clusters(window: _Window) -> list[clusters.Cluster]:
    """The clusters of reviewers' reasons that recur in the window, largest first
    (read once a cycle: the reasons are embedded)."""
    if "recurring_clusters" not in window.memo:
        window.memo["recurring_clusters"] = _find_recurring_clusters(window)
    return window.memo["recurring_clusters"]


def _find_recurring_clusters(window: _Window) -> list[clusters.Cluster]:
    failures = _reason_failures(window)
    if len({f.task for f in failures}) < clusters.MIN_TASKS:
        return []  # nothing could recur: no embedding
    try:
        found = clusters.reason_clusters(failures, get_embedder())
    except Exception as exc:
        # The embedder missing or failing skips this plan, never the cycle.
        logger.warning(
            "kaizen: clustering %s's reviewers' reasons failed, skipped: %s", window.agent.name, exc
        )
        return []
    return [cluster for cluster in found if cluster.recurs]


def _reason_cluster(window: _Window) -> clusters.Cluster | None:
    """The largest recurring cluster not proposed for already: a kaizen proposal
    from the active version, in the window, on at least half of its tasks."""
    recurring = _recurring_clusters(window)
    if not recurring:
        return None
    earlier = [
        set(evidence.get("tasks") or [])
        for evidence in ChangeProposal.objects.filter(
            agent=window.agent,
            source=PromptVersion.Source.KAIZEN,
            base_version__number=window.agent.prompt_version,
            evidence__kind="reasons",
            created_at__gte=window.since,
        ).values_list("evidence", flat=True)
        if isinstance(evidence, dict)
    ]
    for cluster in recurring:
        tasks = set(cluster.tasks)
        if any(2 * len(tasks & before) >= len(tasks) for before in earlier):
            logger.info(
                'kaizen: %s\'s recurring reason "%s" was proposed for already',
                window.agent.name,
                _quote(cluster.representative, 80),
            )
            continue
        return cluster
    return None


def _cluster_corrections(cluster: clusters.Cluster) -> list[clusters.Failure]:
    """Up to MAX_EXAMPLES of the cluster's corrections, one a task, short enough to show."""
    chosen: dict[int, clusters.Failure] = {}
    for member in cluster.members:
        if (
            member.verdict == Pattern.Verdict.CORRECTED
            and member.correction.strip()
            and member.input.strip()
            and len(member.correction) <= MAX_EXAMPLE_CHARS
            and len(member.input) <= MAX_EXAMPLE_CHARS
        ):
            chosen.setdefault(member.task, member)
    return list(chosen.values())[:MAX_EXAMPLES]


def reasons_request(agent: Agent, cluster: clusters.Cluster, *, days: int) -> str:
    """What the model is asked: the template, its placeholders, the one failure
    reviewers keep naming, in their words, and answers they sent back for it."""
    lines = [
        *_request_preamble(agent),
        f"In the last {days} days, reviewers sent back {len(cluster.members)} of its answers, to "
        f"{len(cluster.tasks)} different tasks, for the same reason. Their words:",
    ]
    lines += [f'- "{reason}"' + (f" ({n} times)" if n > 1 else "") for reason, n in cluster.reasons[:8]]
    lines += ["", "Some of those answers:"]
    shown: set[int] = set()
    number = 0
    for member in cluster.members:
        if member.task in shown or number == MAX_FAILURES_SHOWN:
            continue
        shown.add(member.task)
        number += 1
        lines.append(f"{number}. Input: {_quote(member.input, 400)}")
        lines.append(f"   Output: {_quote(member.output, 400)}")
        lines.append(f"   The reviewer {member.verdict} it: {member.reason.strip()}")
        if member.correction.strip():
            lines.append(f"   The reviewer's corrected output: {_quote(member.correction, 400)}")
    lines += [
        "",
        "Work out what in the template lets this failure happen, and rewrite the template so that it "
        "stops recurring, without making the other answers worse. Keep every placeholder the current "
        "template uses. Reply with the new template only: no commentary, no code fences, no <<< >>> "
        "markers.",
    ]
    return "\n".join(lines)


def _plan_reasons(window: _Window) -> Plan | None:
    agent = window.agent
    if window.n < MIN_OUTPUTS:
        return None
    cluster = _reason_cluster(window)
    if cluster is None:
        return None
    template = agent.prompt_template
    fields = _current_fields(agent)
    statuses = Counter(member.verdict for member in cluster.members)
    reasons = cluster.reasons
    evidence: dict[str, Any] = {
        "kind": "reasons",
        "window_days": window.days,
        "outputs": window.n,
        "cluster_size": len(cluster.members),
        "rejected": statuses[Pattern.Verdict.REJECTED],
        "corrected": statuses[Pattern.Verdict.CORRECTED],
        "representative_reason": cluster.representative,
        "cohesion": cluster.cohesion,
        "reasons": [reason + (f" (×{n})" if n > 1 else "") for reason, n in reasons[:MAX_REASONS_SHOWN]],
        "tasks": cluster.tasks,
        "members": [
            {
                "task": member.task,
                "verdict": member.verdict,
                "reason": _quote(member.reason, 200),
                "output": _quote(member.output, 200),
                "correction": _quote(member.correction, 200),
            }
            for member in cluster.members[:MAX_MEMBERS_SHOWN]
        ],
    }
    tier = rewrite_tier(agent)
    if tier is not None:
        rewritten = _model_rewrite(agent, tier, reasons_request(agent, cluster, days=window.days))
        if rewritten is None:
            return None
        fields["prompt_template"], response = rewritten
        evidence["model"] = {
            "provider": tier.provider,
            "model": tier.model,
            "tokens_in": response.tokens_in,
            "tokens_out": response.tokens_out,
            "cost": _money(tier.cost(response.tokens_in, response.tokens_out)),
        }
        change = f"the template as {tier.provider}/{tier.model} rewrote it from those answers and reasons"
    else:
        named = _quote(cluster.representative, MAX_REASON_CHARS)
        if named.lower() in " ".join(template.split()).lower():
            return None  # the template names this failure already
        instruction = (
            f'Reviewers have sent answers back saying "{_escape(named)}": '
            "check that yours does not deserve the same."
        )
        proposed = template.rstrip() + "\n\n" + instruction
        change = f"add the instruction {instruction.replace('{{', '{').replace('}}', '}')!r}"
        examples = []
        if examples_wanted(template) is None and EXAMPLES_MARKER not in template:
            examples = _cluster_corrections(cluster)
        if examples:
            proposed = _with_examples(proposed, [(member.input, member.correction) for member in examples])
            change += f", and {len(examples)} of the reviewers' corrections as examples"
            evidence["examples"] = [
                {"task": member.task, "input": member.input, "corrected_output": member.correction}
                for member in examples
            ]
        fields["prompt_template"] = proposed
    others = [reason for reason, _ in reasons if reason != cluster.representative]
    said = "; ".join(f'"{_quote(reason, 100)}"' for reason in others[:3])
    rationale = (
        f"Recurring objection: reviewers sent back {len(cluster.members)} answers to {len(cluster.tasks)} "
        f"tasks in the last {window.days} days for the same reason "
        f"({statuses[Pattern.Verdict.REJECTED]} rejected, {statuses[Pattern.Verdict.CORRECTED]} corrected, "
        f'of {window.n} outputs), put most clearly as "{_quote(cluster.representative, 120)}"'
        + (f"; they also said {said}" if said else "")
        + f". For example tasks {', '.join(str(task) for task in cluster.tasks[:3])}. Proposed: {change}."
    )
    return Plan("reasons", fields, rationale, evidence, strength=len(cluster.tasks) / window.n)


# --- plan: recurring corrections -> retrieval few-shot ---------------------------------


def _insert_examples(template: str) -> str:
    """``{examples}`` placed before the paragraph holding the input when
    instructions come before it (instructions, examples, then the task), else
    after the template."""
    paragraphs = template.split("\n\n")
    for index, paragraph in enumerate(paragraphs):
        try:
            fields = template_fields(paragraph)
        except ValueError:
            continue
        if "input" in fields:
            if index > 0:
                return "\n\n".join([*paragraphs[:index], "{" + EXAMPLES_VARIABLE + "}", *paragraphs[index:]])
            break
    return template.rstrip() + "\n\n{" + EXAMPLES_VARIABLE + "}"


def _retrieval_preview(agent: Agent, task_id: int) -> list[dict]:
    """The examples retrieval would have shown the task with (for the evidence)."""
    task = Task.objects.only("pk", "title", "input").get(pk=task_id)
    try:
        found = few_shot.examples_for(agent_id=agent.pk, task=task, count=EXAMPLES_DEFAULT)
    except Exception as exc:
        logger.warning("kaizen: previewing %s's retrieved examples failed: %s", agent.name, exc)
        return []
    return [
        {
            "for_task": task_id,
            "example_task": example.task,
            "verdict": example.verdict,
            "similarity": round(example.similarity, 3),
            "input": _quote(example.input, 120),
        }
        for example in found
    ]


def _plan_retrieval(window: _Window) -> Plan | None:
    agent = window.agent
    template = agent.prompt_template
    if window.n < MIN_OUTPUTS or examples_wanted(template) is not None:
        return None
    try:
        parse_variables(agent.prompt_variables)
        template_fields(template)
    except (ConfigError, ValueError):
        return None
    corrected = list(
        Pattern.objects.filter(
            agent=agent,
            prompt_version=agent.prompt_version,
            verdict=Pattern.Verdict.CORRECTED,
            created_at__gte=window.since,
        )
        .exclude(correction="")
        .order_by("-created_at", "-pk")
        .values("task_id", "correction", "task__input")[:200]
    )
    tasks = list(dict.fromkeys(row["task_id"] for row in corrected))
    if len(tasks) < MIN_CORRECTIONS_FOR_RETRIEVAL:
        return None
    good = Pattern.objects.filter(agent=agent, verdict__in=Pattern.GOOD, vector__isnull=False).count()
    if good < MIN_GOOD_FOR_RETRIEVAL:
        return None
    fields = _current_fields(agent)
    fields["prompt_template"] = _insert_examples(template)
    latest = corrected[0]
    preview = _retrieval_preview(agent, latest["task_id"])
    evidence = {
        "kind": "retrieval",
        "window_days": window.days,
        "outputs": window.n,
        "corrections": len(corrected),
        "corrected_tasks": tasks[:20],
        "good_patterns": good,
        "examples_per_task": EXAMPLES_DEFAULT,
        "corrections_shown": [
            {
                "task": row["task_id"],
                "input": _quote(row["task__input"], 200),
                "correction": _quote(row["correction"], 200),
            }
            for row in corrected[:3]
        ],
        "preview": preview,
    }
    rationale = (
        f"Recurring corrections: reviewers wrote the answer themselves for {len(tasks)} tasks in the last "
        f"{window.days} days (of {window.n} outputs), and the knowledge base holds {good} accepted answers "
        f"of {agent.name}'s past tasks. Proposed: opt in to retrieval few-shot, {{examples}} in the "
        f"template: each task is shown the accepted answers to the {EXAMPLES_DEFAULT} past tasks most like "
        "it (a reviewer's correction where there is one, never a rejected answer); it costs each task an "
        "embedding and a search."
    )
    if preview:
        rationale += (
            f" For task {latest['task_id']} ({_quote(latest['task__input'], 60)!r}) they would have been "
            + ", ".join(
                f"task {p['example_task']} ({p['verdict']}, similarity {p['similarity']:.2f})"
                for p in preview
            )
            + "."
        )
    return Plan("retrieval", fields, rationale, evidence, strength=len(tasks) / window.n)


# --- plan, do ------------------------------------------------------------------------


PLANNERS = (
    _plan_verbose,
    tuning.plan_max_tokens,
    tuning.plan_tier1_threshold,
    tuning.plan_tier_order,
    tuning.plan_sampling,
    _plan_few_shot,
    _plan_rewrite,
    _plan_reasons,
    _plan_retrieval,
)


def plan(agent: Agent, *, since: datetime | None = None) -> list[Plan]:
    """The improvements the agent's recent evidence supports, strongest first.
    Reads only (the rewrite plan calls a model, when one is configured)."""
    if agent.implementation:
        # A custom class does the work: its prompt and cascade are not what runs.
        return []
    window = _window(agent, since if since is not None else timezone.now() - WINDOW)
    if window.n < MIN_OUTPUTS:
        return []
    plans = []
    for planner in PLANNERS:
        found = planner(window)
        if found is not None:
            plans.append(found)
    return sorted(plans, key=lambda p: -p.strength)


def _proposed_before(agent: Agent) -> list[dict]:
    recent = ChangeProposal.objects.filter(
        agent=agent, created_at__gte=timezone.now() - RECENT_PROPOSALS
    ).select_related("candidate")
    return [normal_prompt_fields(p.candidate.fields()) for p in recent]


def _busy(agent: Agent) -> str:
    if Experiment.objects.filter(agent=agent, status__in=Experiment.ACTIVE).exists():
        return "it has an experiment running"
    if ChangeProposal.objects.filter(
        agent=agent,
        status__in=(
            ChangeProposal.Status.PENDING,
            ChangeProposal.Status.APPROVED,
            ChangeProposal.Status.VALIDATING,
        ),
    ).exists():
        return "a proposal of it waits for a decision, its gates or its experiment"
    if services.changes_today(agent) >= settings.KAIZEN_MAX_CHANGES_PER_DAY:
        return "it reached its daily limit of changes (KAIZEN_MAX_CHANGES_PER_DAY)"
    return ""


def cycle(agent: Agent) -> ChangeProposal | None:
    """One kaizen cycle: Plan, then Do at most one proposal (the strongest plan not
    proposed before), unless the agent is busy with one change already."""
    busy = _busy(agent)
    if busy:
        logger.info("kaizen: no proposal for %s: %s", agent.name, busy)
        return None
    before = _proposed_before(agent)
    current = normal_prompt_fields(_current_fields(agent))
    for candidate in plan(agent):
        comparable = normal_prompt_fields(candidate.fields)
        if comparable == current or comparable in before:
            logger.info("kaizen: %s plan for %s was proposed already", candidate.kind, agent.name)
            continue
        try:
            with transaction.atomic():
                # Under the agent's row lock: a cycle running twice at once proposes once.
                Agent.objects.select_for_update(of=("self",), no_key=True).get(pk=agent.pk)
                busy = _busy(agent)
                if busy:
                    logger.info("kaizen: no proposal for %s: %s", agent.name, busy)
                    return None
                proposal = services.proposal_create(
                    agent=agent,
                    fields=candidate.fields,
                    rationale=candidate.rationale,
                    source=PromptVersion.Source.KAIZEN,
                    evidence=candidate.evidence,
                )
        except ValidationError as exc:
            logger.warning("kaizen: %s plan for %s not proposed: %s", candidate.kind, agent.name, exc)
            continue
        logger.info("kaizen: proposed %s change %s for %s", candidate.kind, proposal.pk, agent.name)
        return proposal
    return None


def cycles_run() -> int:
    """A kaizen cycle for every agent (Celery beat); one's error does not stop the
    others. Returns how many proposals were made."""
    made = 0
    for agent in Agent.objects.order_by("pk"):
        try:
            if cycle(agent) is not None:
                made += 1
        except Exception:
            logger.exception("kaizen cycle of agent %s failed", agent.pk)
    return made
