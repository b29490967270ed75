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
import time
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
    or frozen worker's tasks expire.

    A lease is renewed for at most KAIZEN_RUN_TIMEOUT_SECONDS after ``hold``:
    past that the run is taken to hang, its lease is left to run out, and the
    reaper takes the task back (a failed attempt). If the call returns after
    all, its result is stale and ignored (services._current_run)."""

    def __init__(self) -> None:
        # token -> time.monotonic() when the run began holding it
        self._held: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Set by close(): wakes the thread at once and ends it.
        self._closed = threading.Event()

    def hold(self, token: uuid.UUID | str) -> None:
        with self._lock:
            self._held[str(token)] = time.monotonic()
            if not self._closed.is_set() and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def release(self, token: uuid.UUID | str) -> None:
        with self._lock:
            self._held.pop(str(token), None)

    def close(self) -> None:
        """Stop renewing (for tests and shutdown); held leases then run out."""
        self._closed.set()

    def renew_due(self) -> int:
        """Renew the leases held for less than the run timeout; stop holding the
        others. Returns how many leases were renewed."""
        timeout = settings.KAIZEN_RUN_TIMEOUT_SECONDS
        now = time.monotonic()
        with self._lock:
            overdue = [t for t, since in self._held.items() if now - since >= timeout]
            for token in overdue:
                del self._held[token]
            tokens = list(self._held)
        for token in overdue:
            logger.warning(
                "run with lease %s went past KAIZEN_RUN_TIMEOUT_SECONDS (%ss): no longer renewing it, "
                "so the reaper takes its task back",
                token,
                timeout,
            )
        if not tokens:
            return 0
        return services.leases_renew(lease_tokens=tokens)

    def _run(self) -> None:
        interval = settings.KAIZEN_LEASE_SECONDS / 3
        while not self._closed.wait(interval):
            try:
                self.renew_due()
            except Exception:
                logger.exception("renewing leases failed")
            finally:
                connection.close()


lease_keeper = LeaseKeeper()


def _release_connection() -> None:
    # With a pool, close() returns the connection for other threads to use
    # during the model call; SQLite has nothing worth handing back.
    # Inside a transaction (a caller's atomic block) the connection must stay.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        connection.close()


def _fail_attempt(task_id: int, lease_token: str, error: str) -> str:
    """Record a failed attempt. If even that cannot be written (the last attempt
    must fail into Done and the board has none), log it: the task stays In
    progress with a lease no longer renewed, and the reaper retries it on every
    pass, logging why, until someone adds a Done column."""
    try:
        services.task_attempt_fail(task_id=task_id, lease_token=lease_token, error=error)
    except services.ColumnMissing as exc:
        logger.error("could not record the failed run of task %s: %s", task_id, exc.messages[0])
    return "failed"


def run(task_id: int, lease_token: str) -> str:
    """Run one claimed task. Returns what happened: ``stale``, ``done`` or ``failed``.

    A board that lost its Done column while the task ran cannot take the result:
    the output is dropped and the run counts as a failed attempt that names the
    missing column (see _fail_attempt for the last attempt)."""
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
            return _fail_attempt(task_id, lease_token, str(exc))
        except Exception as exc:
            # A bug in an adapter must cost an attempt, not leave the task In
            # progress until its lease runs out.
            logger.exception("run of task %s crashed", task_id)
            return _fail_attempt(task_id, lease_token, f"internal error: {exc!r}")
    finally:
        lease_keeper.release(lease_token)
    try:
        finished = services.task_complete(
            task_id=task_id,
            lease_token=lease_token,
            output=response.text,
            confidence=response.confidence,
        )
    except services.ColumnMissing as exc:
        return _fail_attempt(task_id, lease_token, exc.messages[0])
    return "done" if finished else "stale"
