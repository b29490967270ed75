"""The demo's simulated reviewer: a program, clearly labelled as one, that works
the andon inbox of demo boards so an unattended demo does not freeze with Review
full (issue 10, item 1). Off unless KAIZEN_DEMO_REVIEWER_SECONDS is set (``make
run`` sets it); never touches a board without demo tasks.

It decides as a plausible person would, from what the inbox shows: the failed
checks and the confidence. Mostly approve an answer that only fell short on
confidence (a person reads it and finds it right), reject hedges and malformed
answers with a reason the next attempt is given, trim an answer that is too
long. Each decision is deterministic per escalation (seeded by its id), so a
demo replays the same way, and made at a human pace: one inbox row (a group of
identical escalations) per beat, only once it has waited a few seconds, and
never one a person has claimed.

It decides through the reviewers' own services (andon.services), as a user of
its own: ``simulated-reviewer``, with the review permission and no usable
password (nobody can log in as it). Its notes start with "Simulated reviewer:",
and the inbox, the escalation page and its recent decisions badge it, so its
decisions are never taken for a colleague's.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from andon import selectors, services
from andon.models import SIMULATED_REVIEWER, Escalation, LineStop
from boards.models import Agent, Board

logger = logging.getLogger(__name__)

is_simulated_reviewer = services.is_simulated_reviewer
LABEL = "Simulated reviewer"

# Checks whose failure a person would answer by trimming the output.
_TOO_LONG = re.compile(r"more than the maximum|times the optimal")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def simulated_reviewer_user() -> User:
    """The simulated reviewer's user, made on first use: the review permission,
    no usable password (a program, not an account anyone logs in to)."""
    user_model = get_user_model()
    user = user_model.objects.filter(username=SIMULATED_REVIEWER).first()
    if user is None:
        try:
            with transaction.atomic():
                user = user_model(
                    username=SIMULATED_REVIEWER, first_name="Simulated", last_name="reviewer (demo)"
                )
                user.set_unusable_password()
                user.save()
                user.user_permissions.add(
                    Permission.objects.get(
                        codename=services.REVIEW_PERMISSION.split(".")[1], content_type__app_label="andon"
                    )
                )
        except IntegrityError:
            # Another beat made it first.
            pass
        # Read afresh: Django caches a user's permissions on the instance.
        user = user_model.objects.get(username=SIMULATED_REVIEWER)
    return user


@dataclass(frozen=True)
class Plan:
    """What the simulated reviewer decides: approve (``text`` is the note),
    correct (``text`` is the corrected output) or reject (``text`` is the reason)."""

    action: str
    text: str
    note: str = ""


def _trimmed(text: str, rng: random.Random) -> str:
    """A shorter version a person might keep: the first sentences, about half of
    the text; or, for one long sentence, its first words."""
    text = text.strip()
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    target = max(1, int(len(text) * rng.uniform(0.4, 0.6)))
    if len(sentences) > 1:
        kept = []
        for sentence in sentences:
            kept.append(sentence)
            if len(" ".join(kept)) >= target:
                break
        shorter = " ".join(kept)
    else:
        words = text.split()
        shorter = " ".join(words[: max(1, int(len(words) * 0.6))])
    return shorter.strip()


def plan_for(escalation: Escalation) -> Plan:
    """The decision, from the failed checks and the confidence, the same every
    time for the same escalation."""
    rng = random.Random(f"{SIMULATED_REVIEWER}:{escalation.pk}")
    failures = [f for f in escalation.failures if isinstance(f, dict)]
    kinds = {f.get("check") or f.get("name") or "" for f in failures}
    confidence = escalation.confidence
    shown = f" ({confidence:.0%})" if confidence is not None else ""

    if "uncertainty" in kinds:
        return Plan(
            "reject",
            f"{LABEL}: the answer hedges instead of answering; give a definite answer, "
            "or say exactly what the input lacks.",
        )
    too_long = [f for f in failures if _TOO_LONG.search(str(f.get("reason", "")))]
    if too_long and kinds <= {"confidence", "length", "token_waste"}:
        shorter = _trimmed(escalation.output, rng)
        if shorter and shorter != escalation.output.strip() and rng.random() < 0.7:
            return Plan("correct", shorter, note=f"{LABEL}: trimmed to the point; the rest was padding.")
        return Plan("reject", f"{LABEL}: too long; answer only what was asked, in a few sentences.")
    if kinds <= {"confidence"}:
        # Fell short on confidence alone: read, it is usually right, the less
        # often the less sure the model was.
        approve = 0.55 + 0.5 * (confidence if confidence is not None else 0.5)
        if rng.random() < approve:
            return Plan(
                "approve", f"{LABEL}: read it; the answer is right despite the low confidence{shown}."
            )
        return Plan(
            "reject",
            f"{LABEL}: read it; the answer does not fit the input{shown}. Check it against the input again.",
        )
    failure = next(f for f in failures if (f.get("check") or f.get("name")) not in ("confidence",))
    name = failure.get("name") or failure.get("check") or "a check"
    reason = str(failure.get("reason", "")).strip() or "it failed"
    return Plan("reject", f"{LABEL}: fails the {name} check ({reason}); fix that and answer again.")


def _next_escalation(user: User, *, min_age: float) -> Escalation | None:
    """The oldest open escalation of a demo board that has waited ``min_age``
    seconds and that no person has claimed."""
    demo_boards = [b.pk for b in Board.objects.only("pk", "demo_tasks") if b.demo_tasks]
    if not demo_boards:
        return None
    return (
        Escalation.objects.filter(
            status=Escalation.Status.OPEN,
            board_id__in=demo_boards,
            created_at__lte=timezone.now() - timedelta(seconds=min_age),
        )
        .filter(Q(claimed_by__isnull=True) | Q(claimed_by=user))
        .select_related("task", "board", "agent")
        .order_by("created_at", "pk")
        .first()
    )


def demo_review_run(*, min_age: float | None = None) -> list[Escalation]:
    """Decide one inbox row of a demo board (its group of identical escalations,
    at once, as a person would): the escalations decided, none if there was
    nothing to decide. One pass per beat gives the human pace."""
    if min_age is None:
        min_age = settings.KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS
    user = simulated_reviewer_user()
    escalation = _next_escalation(user, min_age=min_age)
    if escalation is None:
        return []
    members = [
        e for e in selectors.escalation_group_get(escalation=escalation) if e.claimed_by_id in (None, user.pk)
    ] or [escalation]
    plan = plan_for(members[0])
    try:
        if plan.action == "approve":
            result = services.escalations_approve(escalations=members, user=user, note=plan.text)
        elif plan.action == "correct":
            result = services.escalations_correct(
                escalations=members, user=user, output=plan.text, note=plan.note
            )
        else:
            result = services.escalations_reject(escalations=members, user=user, reason=plan.text)
    except services.AlreadyDecided:
        # A person was quicker: fine, that is what they are for.
        return []
    except ValidationError as exc:
        logger.warning("the simulated reviewer could not decide escalation %s: %s", escalation.pk, exc)
        return []
    return result.decided


def _demo_agent_ids() -> set[int]:
    """Agents that serve demo boards only: an agent that also serves a real board
    is never restarted by a program."""
    demo = {b.pk for b in Board.objects.only("pk", "demo_tasks") if b.demo_tasks}
    serving: dict[int, set[int]] = {}
    for agent_id, board_id in Agent.boards.through.objects.values_list("agent_id", "board_id"):
        serving.setdefault(agent_id, set()).add(board_id)
    return {agent_id for agent_id, boards in serving.items() if boards and boards <= demo}


def demo_restart_run(*, min_age: float | None = None) -> list[LineStop]:
    """Restart the lines of demo agents that a defect spike stopped at least
    ``min_age`` seconds ago, as a reviewer who has looked at the defects would.
    Without it an unattended demo would keep a stopped agent stopped for good.
    A cord a person pulled is never undone by a program; neither is a stop of an
    agent that serves a board with no demo tasks."""
    if min_age is None:
        min_age = settings.KAIZEN_DEMO_REVIEWER_RESTART_SECONDS
    stops = list(
        LineStop.objects.filter(
            kind=LineStop.Kind.DEFECT_SPIKE,
            restarted_at__isnull=True,
            agent_id__in=_demo_agent_ids(),
            created_at__lte=timezone.now() - timedelta(seconds=min_age),
        ).order_by("created_at", "pk")
    )
    if not stops:
        return []
    user = simulated_reviewer_user()
    restarted = []
    for stop in stops:
        note = (
            f"{LABEL}: looked at the defects that stopped the line and restarted it "
            "(a demo; a person would find their cause first)."
        )
        try:
            restarted.append(services.line_restart(line_stop=stop, user=user, note=note))
        except ValidationError:
            continue  # a person restarted it meanwhile
    return restarted
