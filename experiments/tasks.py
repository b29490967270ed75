"""Celery tasks of the kaizen loop: thin wrappers over one service each."""

from __future__ import annotations

from celery import shared_task

from experiments import pdca, services


@shared_task(name="experiments.tasks.evaluate_experiments")
def evaluate_experiments() -> int:
    return services.experiments_evaluate()


@shared_task(name="experiments.tasks.kaizen_cycle")
def kaizen_cycle() -> int:
    # Idempotent: a second run finds the proposal the first made (pending, or its
    # experiment running) and proposes nothing more.
    return pdca.cycles_run()
