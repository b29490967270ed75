"""What several benches set up the same way: the line's bench board and its agent,
and the bench user's write token (bench/run.py, bulk.py, live.py, board_page.py)."""

from __future__ import annotations

import uuid

# Every output is inspected, as in use: the default checks (confidence,
# uncertainty markers, token waste), with a low confidence floor. The simulated
# model is calibrated, so about 1% of these tasks still stop in Review (a low
# confidence, or a hedge the uncertainty check catches): a task is finished when
# it reaches Done, Review or Failed, and the inspection's cost is measured.
BENCH_CHECKS = [
    {"check": "confidence", "min": 0.5},
    {"check": "uncertainty"},
    {"check": "token_waste", "ratio": 1.5},
]


def line_board(
    label: str,
    *,
    wip: int,
    backlog: bool = False,
    paused: bool = False,
    latency_ms: float = 0,
    **agent_fields,
):
    """A bench board (Backlog if asked, Ready, In progress at ``wip``, Review,
    Done; ``paused`` while a bench fills it) served by one agent: a simulated
    tier of ``latency_ms`` with no errors, the bench's checks, concurrency
    ``wip``, and ``agent_fields``. Returns (board, agent)."""
    from boards.agents.spec import cascade_json, parse_cascade
    from boards.models import Agent, Board, Column

    board = Board.objects.create(
        name=f"Bench {label}", slug=f"bench-{label}-{uuid.uuid4().hex[:6]}", paused=paused
    )
    roles = [("Backlog", "backlog", None)] if backlog else []
    roles += [("Ready", "ready", None), ("In progress", "in_progress", wip)]
    roles += [("Review", "review", None), ("Done", "done", None)]
    for position, (name, role, limit) in enumerate(roles):
        Column.objects.create(board=board, name=name, role=role, position=position, wip_limit=limit)
    tier = {
        "provider": "simulated",
        "model": "sim-small",
        "parameters": {"latency_ms": latency_ms, "error_rate": 0},
    }
    # The line's checks let 1-2% of the simulated answers through to Review; at
    # the default spike (3 defects in 10 outputs) that stopped a bench's agent at
    # random now and then (little100, 2026-12-07 18:35: 9 tasks left in Ready).
    # The spike is still counted on every output; it stops only a line that fails
    # every output.
    agent_fields.setdefault("spike_defects", 10)
    agent_fields.setdefault("spike_window", 10)
    agent = Agent.objects.create(
        name=f"bench-agent-{board.slug}",
        capabilities=["general"],
        cascade=cascade_json(parse_cascade([tier])),
        concurrency=wip,
        quality_checks=BENCH_CHECKS,
        **agent_fields,
    )
    agent.boards.add(board)
    return board, agent


def bench_user_and_token(name: str = "bench"):
    """The bench's user, who may add tasks, and a new write API token of theirs: (user, key)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from boards import services
    from boards.models import ApiToken

    user, _ = get_user_model().objects.get_or_create(username="bench")
    # API tokens have scopes: adding tasks needs a write token of a user who may add them.
    user.user_permissions.add(Permission.objects.get(content_type__app_label="boards", codename="add_task"))
    _, key = services.api_token_create(user=user, name=name, access=ApiToken.Access.WRITE)
    return user, key


def postgres_backends() -> list[int]:
    """The PostgreSQL server processes connected to this database, but this
    process's own: the line's processes' (their pools are open by then)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]
