"""Copying part of a benchmark's PostgreSQL history into SQLite, to time the
same pages there (bench/flow.py and bench/muda.py, ``--sqlite PATH``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def copy_to_sqlite(board: Any, path: str, querysets: list[Any]) -> None:
    """A new SQLite database at ``path``, migrated, holding the board, its columns,
    agents and tasks, and the rows of ``querysets`` (with their own times)."""
    from django.db import connections

    from boards.models import Agent, Board, Column, Task

    if os.path.exists(path):
        os.remove(path)
    config = dict(connections.settings["default"])
    config.update(
        ENGINE="django.db.backends.sqlite3",
        NAME=path,
        HOST="",
        PORT="",
        USER="",
        PASSWORD="",
        OPTIONS={"timeout": 30, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    )
    # Migrated in a process of its own, where it is the default database: the
    # project's data migrations read the default one.
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, check=True)
    connections.settings["sqlite"] = config
    through = Agent.boards.through
    for queryset in (
        Board.objects.filter(pk=board.pk),
        Column.objects.filter(board=board),
        Agent.objects.filter(boards=board),
        through.objects.filter(board=board),
        Task.objects.filter(board=board),
        *querysets,
    ):
        # Copies keep their times: auto_now(_add) would stamp them now.
        for field in queryset.model._meta.concrete_fields:
            if getattr(field, "auto_now_add", False) or getattr(field, "auto_now", False):
                field.auto_now_add = field.auto_now = False  # type: ignore[attr-defined]
        rows: list[Any] = []
        for row in queryset.order_by("pk").iterator(chunk_size=10_000):
            rows.append(row)
            if len(rows) == 10_000:
                queryset.model.objects.using("sqlite").bulk_create(rows)
                rows = []
        queryset.model.objects.using("sqlite").bulk_create(rows)
    with connections["sqlite"].cursor() as cursor:
        cursor.execute("ANALYZE")
    connections["sqlite"].close()
