"""Celery tasks of the kaizen loop: thin wrappers over one service each."""

from __future__ import annotations

from celery import shared_task
from django.db import connection

from andon import failure_warnings
from experiments import genchi, knowledge, pdca, services


@shared_task(name="experiments.tasks.evaluate_experiments")
def evaluate_experiments() -> int:
    return services.experiments_evaluate()


@shared_task(name="experiments.tasks.kaizen_cycle")
def kaizen_cycle() -> int:
    # Idempotent: a second run finds the proposal the first made (pending, or its
    # experiment running) and proposes nothing more.
    return pdca.cycles_run()


@shared_task(name="experiments.tasks.replay_step")
def replay_step(replay_id: int) -> str:
    # One step at a time per replay (its lease); a step lost with its worker is
    # taken up again by resume_replays once the lease runs out.
    try:
        return genchi.replay_step(replay_id)
    finally:
        connection.close()


@shared_task(name="experiments.tasks.shadow_run")
def shadow_run(replay_id: int, task_id: int) -> str:
    return genchi.shadow_run(replay_id, task_id)


@shared_task(name="experiments.tasks.advance_gates")
def advance_gates(proposal_id: int) -> None:
    services.gates_advance(proposal_id=proposal_id)


@shared_task(name="experiments.tasks.resume_replays")
def resume_replays() -> int:
    return genchi.replays_resume() + services.gates_advance_all()


@shared_task(name="experiments.tasks.embed_patterns")
def embed_patterns() -> int:
    # On its own queue (settings.KAIZEN_KNOWLEDGE_QUEUE), served by a worker at the
    # lowest CPU priority: the line never waits on an embedding. Then the failure
    # warnings of open escalations, which need the patterns embedded first.
    embedded = knowledge.patterns_embed(yielding=True)
    failure_warnings.escalation_warnings_compute()
    return embedded
