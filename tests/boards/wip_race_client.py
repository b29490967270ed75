"""One racer of the WIP race tests (tests/boards/test_wip_race.py).

A racer pulls a board over and over and, between pulls, finishes or fails a few
runs that are in flight (its own or another racer's, as workers would), so
capacity keeps freeing up while others claim. After every pull it counts In
progress in the database.

In a thread of a process where Django is set up, call ``race()``. As a process::

    python -m tests.boards.wip_race_client --board 3 --pulls 40 --seed 1 --go /path/go

sets Django up, prints ``WAITING``, waits until the file ``--go`` exists (so all
racers start together), races, and prints ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def race(*, board_id: int, pulls: int, seed: int) -> dict:
    from django.db import connection

    from boards import services
    from boards.models import Column, Task

    rng = random.Random(seed)
    columns = {c.role: c for c in Column.objects.filter(board_id=board_id)}
    doing, ready = columns[Column.Role.IN_PROGRESS], columns[Column.Role.READY]
    claims: list[tuple[int, str]] = []
    max_in_progress = max_ready = 0
    try:
        for _ in range(pulls):
            claims.extend((c.task_id, str(c.lease_token)) for c in services.board_pull(board_id=board_id))
            max_in_progress = max(max_in_progress, Task.objects.filter(column=doing).count())
            max_ready = max(max_ready, Task.objects.filter(column=ready).count())
            running = list(Task.objects.filter(column=doing).values_list("pk", "lease_token"))
            rng.shuffle(running)
            for task_id, lease_token in running[: rng.randint(0, 2)]:
                # Two racers may pick the same run: the second finds it stale.
                if rng.random() < 0.7:
                    services.task_complete(
                        task_id=task_id, lease_token=lease_token, output=f"racer {seed}", confidence=0.9
                    )
                else:
                    services.task_attempt_fail(
                        task_id=task_id, lease_token=lease_token, error="racer failure"
                    )
    finally:
        connection.close()
    return {
        "seed": seed,
        "claims": claims,
        "max_in_progress": max_in_progress,
        "max_ready": max_ready,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--board", type=int, required=True)
    parser.add_argument("--pulls", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--go", type=Path, required=True)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    import django

    django.setup()
    print("WAITING", flush=True)
    deadline = time.monotonic() + 60
    while not args.go.exists():
        if time.monotonic() > deadline:
            print(f"no go signal ({args.go}) within 60 s", file=sys.stderr)
            return 2
        time.sleep(0.01)
    from boards import services

    # A racer process plays a worker: the pulls its finishes trigger run in it, at once.
    services.mark_worker_process()
    result = race(board_id=args.board, pulls=args.pulls, seed=args.seed)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
