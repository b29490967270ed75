"""Small builders for test data. Boards are built the way apply_config builds them;
people are users with the permissions of their role, shared by every app's tests."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from boards.agents.spec import cascade_json, parse_cascade
from boards.models import Agent, Board, Column

# The header htmx sends with every request it makes (django-htmx reads it as
# request.htmx): pass as headers=HTMX in the test client.
HTMX = {"HX-Request": "true"}

_seq = count(1)

DEFAULT_COLUMNS = [
    ("Backlog", Column.Role.BACKLOG, None, True),
    ("Ready", Column.Role.READY, 5, True),
    ("In progress", Column.Role.IN_PROGRESS, 3, True),
    ("Review", Column.Role.REVIEW, 5, True),
    ("Done", Column.Role.DONE, None, True),
]


def make_board(
    *,
    name: str | None = None,
    ready_limit: int | None = 5,
    doing_limit: int | None = 3,
    hard: bool = True,
    backlog: bool = True,
) -> Board:
    n = next(_seq)
    board = Board.objects.create(name=name or f"Board {n}", slug=f"board-{n}")
    limits = {Column.Role.READY: ready_limit, Column.Role.IN_PROGRESS: doing_limit}
    position = 0
    for col_name, role, limit, is_hard in DEFAULT_COLUMNS:
        if role == Column.Role.BACKLOG and not backlog:
            continue
        Column.objects.create(
            board=board,
            name=col_name,
            role=role,
            position=position,
            wip_limit=limits.get(role, limit),
            hard_limit=hard if role in limits else is_hard,
        )
        position += 1
    return board


def make_agent(
    *,
    boards: list[Board],
    name: str | None = None,
    capabilities: list[str] | None = None,
    concurrency: int = 10,
    latency_ms: float = 0,
    error_rate: float | None = None,
    model: str = "sim-small",
    max_attempts: int = 3,
    cascade: list[dict] | None = None,
    **fields,
) -> Agent:
    """An agent of one simulated tier (``model``, ``latency_ms``, ``error_rate``),
    or of the given ``cascade``."""
    if cascade is None:
        parameters = {"latency_ms": latency_ms}
        if error_rate is not None:
            parameters["error_rate"] = error_rate
        cascade = [{"provider": "simulated", "model": model, "parameters": parameters}]
    agent = Agent.objects.create(
        name=name or f"agent-{next(_seq)}",
        capabilities=capabilities if capabilities is not None else ["general"],
        concurrency=concurrency,
        cascade=cascade_json(parse_cascade(cascade)),
        max_attempts=max_attempts,
        **fields,
    )
    agent.boards.set(boards)
    return agent


def make_user(*, username: str | None = None, password: str = "pw-for-tests-1", **extra):
    return get_user_model().objects.create_user(
        username=username or f"user{next(_seq)}", password=password, **extra
    )


def grant(user, *permissions: str) -> None:
    """Give ``user`` these permissions, named as ``has_perm`` names them
    ("app_label.codename"). A user read before keeps its cached permissions:
    read it afresh (``make_user_with`` does)."""
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )


def make_user_with(*permissions: str, **extra):
    """A user with these permissions ("app_label.codename"), read afresh: Django
    caches a user's permissions on the instance."""
    user = make_user(**extra)
    grant(user, *permissions)
    return get_user_model().objects.get(pk=user.pk)


def make_reviewer(**extra):
    """A reviewer of the andon inbox: decides escalations and restarts the line."""
    return make_user_with("andon.review_escalation", **extra)


def make_editor(**extra):
    """A person who changes agents: their prompt changes become proposals."""
    return make_user_with("boards.change_agent", **extra)


def make_approver(**extra):
    """A person who approves, promotes and rolls back prompt changes (and no more)."""
    return make_user_with("experiments.approve_change", **extra)


def make_writer(**extra):
    """A user who may add tasks (the permission a write API token's user needs)."""
    return make_user_with("boards.add_task", **extra)


def column(board: Board, role: str) -> Column:
    return board.columns.get(role=role)


def open_model_breaker(board: Board, model: str, *, opened_seconds_ago: float = 0, failures: int = 5):
    """The simulated ``model``'s breaker on ``board``, open since ``opened_seconds_ago``
    (the process's snapshot of open breakers forgotten, so the next read sees it)."""
    from andon import jidoka
    from andon.models import CircuitBreaker

    breaker = CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.MODEL,
        board=board,
        key=f"simulated/{model}",
        state=CircuitBreaker.State.OPEN,
        consecutive_failures=failures,
        opened_at=timezone.now() - timedelta(seconds=opened_seconds_ago),
    )
    jidoka.open_models.clear()
    return breaker
