"""Running a claimed task in a worker: render the prompt, call the model while
the lease is kept alive, and hand the outcome to the services.

Concurrency: agent work is I/O-bound (a model call is mostly waiting), so the
worker runs Celery's thread pool with a high concurrency, keeping many calls in
flight per process. Threads rather than gevent: SQLite and psycopg calls do not
yield under gevent without patching, and threads need no monkey-patching of
Django, redis or the provider SDKs. During the call the database connection is
handed back (to the psycopg pool on PostgreSQL), so a thousand threads waiting
on models do not hold a thousand database connections.
"""

from __future__ import annotations

import logging
import string
import threading
import uuid

from django.conf import settings
from django.db import connection

from boards import services
from boards.providers import ModelRequest, ProviderError, get_provider

logger = logging.getLogger(__name__)


class PromptError(ValueError):
    pass


def render_prompt(template: str, variables: dict[str, str]) -> str:
    """Fill ``{name}`` fields of an agent's template; ``{{`` and ``}}`` are literal braces."""
    formatter = string.Formatter()
    try:
        fields = [name for _, name, _, _ in formatter.parse(template) if name is not None]
    except ValueError as exc:
        raise PromptError(f"prompt template is malformed: {exc}") from None
    if any(not f.isidentifier() for f in fields):
        raise PromptError("prompt template fields must be plain names such as {input}")
    missing = sorted({f for f in fields if f not in variables})
    if missing:
        raise PromptError(
            "prompt template uses unknown variable(s): "
            + ", ".join(missing)
            + f" (available: {', '.join(sorted(variables))})"
        )
    return template.format_map(variables)


class LeaseKeeper:
    """Renews, in one UPDATE, the leases of every run in flight in this process,
    every third of the lease time, so a slow model call keeps its task and a dead
    worker's tasks expire."""

    def __init__(self) -> None:
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def hold(self, token: uuid.UUID | str) -> None:
        with self._lock:
            self._tokens.add(str(token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def release(self, token: uuid.UUID | str) -> None:
        with self._lock:
            self._tokens.discard(str(token))

    def _run(self) -> None:
        interval = settings.KAIZEN_LEASE_SECONDS / 3
        while True:
            self._wake.wait(interval)
            with self._lock:
                tokens = list(self._tokens)
            if not tokens:
                continue
            try:
                services.leases_renew(lease_tokens=tokens)
            except Exception:
                logger.exception("renewing %s lease(s) failed", len(tokens))
            finally:
                connection.close()


lease_keeper = LeaseKeeper()


def _release_connection() -> None:
    # With a pool, close() returns the connection for other threads to use
    # during the model call; SQLite has nothing worth handing back.
    # Inside a transaction (a caller's atomic block) the connection must stay.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        connection.close()


def run(task_id: int, lease_token: str) -> str:
    """Run one claimed task. Returns what happened: ``stale``, ``done`` or ``failed``."""
    task = services.task_run_begin(task_id=task_id, lease_token=lease_token)
    if task is None:
        return "stale"
    agent = task.agent
    lease_keeper.hold(lease_token)
    try:
        try:
            prompt = render_prompt(
                agent.prompt_template,
                {"input": task.input, "title": task.title, "last_error": task.last_error},
            )
            provider = get_provider(agent.provider)
            request = ModelRequest(
                model=agent.model, prompt=prompt, input=task.input, settings=agent.provider_settings
            )
            _release_connection()
            response = provider.complete(request)
        except (ProviderError, PromptError) as exc:
            services.task_attempt_fail(task_id=task_id, lease_token=lease_token, error=str(exc))
            return "failed"
        except Exception as exc:
            # A bug in an adapter must cost an attempt, not leave the task In
            # progress until its lease runs out.
            logger.exception("run of task %s crashed", task_id)
            services.task_attempt_fail(
                task_id=task_id, lease_token=lease_token, error=f"internal error: {exc!r}"
            )
            return "failed"
    finally:
        lease_keeper.release(lease_token)
    finished = services.task_complete(
        task_id=task_id,
        lease_token=lease_token,
        output=response.text,
        confidence=response.confidence,
    )
    return "done" if finished else "stale"
