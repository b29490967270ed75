"""The response cache settles as a completion commits (boards.services.tasks_complete):
a test whose transaction never commits runs that part of what the commit would run."""

from __future__ import annotations

from boards.agents import response_cache


def settled(committed) -> None:
    """Run the response cache's callbacks among ``committed`` (what
    ``django_capture_on_commit_callbacks`` caught); the rest, pulls and live
    updates, is not these tests' business. At least one must be there."""
    callbacks = [c for c in committed if getattr(c, "func", None) is response_cache.settle_cache]
    assert callbacks
    for callback in callbacks:
        callback()
