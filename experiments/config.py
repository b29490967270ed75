"""A config file's ``proposals:``, applied through the kaizen loop's gate.

``boards.config`` reads them; ``config_proposals_apply`` makes each one with
``experiments.services.proposal_create`` (source: a config file), in the same
transaction as the rest of the file (``manage.py apply_config`` calls both), so
a proposal from a file is checked, classified, audited and tried exactly as one
made on the agent page: a major change waits for a person's approval, a minor
one starts its canary at once.

Applying is idempotent: a proposal whose candidate the agent has already had
(proposed, tried, promoted, rolled back or rejected) is not made again, so the
file proposes a change once, and a person's decision on it stands.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError

from boards.config import ApplyReport, Change, ConfigDocument, ConfigError, ProposalSpec
from boards.models import Agent
from experiments import services
from experiments.models import ChangeProposal, PromptVersion


def _error(document: ConfigDocument, spec: ProposalSpec, message: str) -> ConfigError:
    return ConfigError([f"{document.filename}:{spec.line}: {spec.path}: {message}"])


def _fields(agent: Agent, spec: ProposalSpec) -> dict:
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    fields.update(spec.change)
    return fields


def config_proposals_apply(*, document: ConfigDocument, report: ApplyReport) -> None:
    """Make the file's proposals that the agents have not had yet; record each
    in the report. ConfigError (nothing is kept: the caller's transaction rolls
    back) for a change that is invalid or changes nothing."""
    for spec in document.proposals:
        agent = Agent.objects.filter(name=spec.agent).first()
        if agent is None:
            # Checked when the file was read; gone since.
            raise _error(document, spec, f"no agent {spec.agent!r}")
        fields = _fields(agent, spec)
        key = f"{agent.name}: {spec.rationale[:60]}"
        try:
            preview = services.proposal_preview(agent=agent, fields=fields)
        except ValidationError as exc:
            if any(message.startswith(services.NOTHING_CHANGES) for message in exc.messages):
                # The active version is the change already (it was promoted).
                report.changes.append(Change("proposal", key, "unchanged"))
                continue
            raise _error(document, spec, "; ".join(exc.messages)) from None
        # Candidates are stored in their normal form, as the preview's is.
        wanted = preview["candidate"].fields()
        had = [
            p.candidate.fields()
            for p in ChangeProposal.objects.filter(agent=agent).select_related("candidate")
        ]
        if wanted in had:
            report.changes.append(Change("proposal", key, "unchanged"))
            continue
        if services.changes_today(agent) >= settings.KAIZEN_MAX_CHANGES_PER_DAY:
            report.changes.append(
                Change(
                    "proposal",
                    key,
                    "skipped",
                    note=f"{agent.name} had {settings.KAIZEN_MAX_CHANGES_PER_DAY} changes proposed in the "
                    "last 24 hours, the most allowed (KAIZEN_MAX_CHANGES_PER_DAY); apply the file again later",
                )
            )
            continue
        try:
            proposal = services.proposal_create(
                agent=agent,
                fields=fields,
                rationale=spec.rationale,
                source=PromptVersion.Source.CONFIG,
                evidence=spec.evidence,
            )
        except ValidationError as exc:
            raise _error(document, spec, "; ".join(exc.messages)) from None
        if proposal.major:
            what = f"v{proposal.candidate.number}, major: waits for approval in the evolution review"
        elif proposal.status == ChangeProposal.Status.EXPERIMENTING:
            what = f"v{proposal.candidate.number}, minor: its canary has started"
        elif proposal.status == ChangeProposal.Status.VALIDATING:
            what = f"v{proposal.candidate.number}, minor: in its gates (replay, probes) before its canary"
        else:
            what = f"v{proposal.candidate.number}, minor: starts when {agent.name}'s running experiment ends"
        report.changes.append(Change("proposal", key, "created", note=what))
