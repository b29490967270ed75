"""One reviewer of the decision race (tests/andon/test_decision_race.py), as a process
with its own database connection::

    python -m tests.andon.decision_race_client --escalation 3 --user ana --action reject --go /path/go

sets Django up, prints ``WAITING``, waits until the file ``--go`` exists, decides the
escalation, and prints ``RESULT <json>``: ``{"outcome": "decided"}`` or
``{"outcome": "already_decided", "message": ...}``. With several ids
(``--escalation 3,4,5``) it decides them as one group, and the result also lists
the ids it ``decided`` and those it ``skipped`` (decided first by the other).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def decide(*, escalation_ids: list[int], username: str, action: str) -> dict:
    from django.contrib.auth import get_user_model

    from andon import services
    from andon.models import Escalation

    user = get_user_model().objects.get(username=username)
    if len(escalation_ids) > 1:
        return decide_group(escalation_ids=escalation_ids, user=user, action=action)
    escalation = Escalation.objects.get(pk=escalation_ids[0])
    try:
        if action == "approve":
            services.escalation_approve(escalation=escalation, user=user, note=f"approved by {username}")
        elif action == "correct":
            services.escalation_correct(escalation=escalation, user=user, output=f"corrected by {username}")
        elif action == "reject":
            services.escalation_reject(escalation=escalation, user=user, reason=f"rejected by {username}")
        else:
            raise ValueError(f"unknown action {action!r}")
    except services.AlreadyDecided as exc:
        return {"outcome": "already_decided", "message": exc.messages[0]}
    return {"outcome": "decided"}


def decide_group(*, escalation_ids: list[int], user, action: str) -> dict:
    """One decision on a group of identical escalations (andon.services.escalations_*)."""
    from andon import services
    from andon.models import Escalation

    escalations = [Escalation.objects.get(pk=pk) for pk in escalation_ids]
    name = user.get_username()
    try:
        if action == "approve":
            result = services.escalations_approve(
                escalations=escalations, user=user, note=f"approved by {name}"
            )
        elif action == "correct":
            result = services.escalations_correct(
                escalations=escalations, user=user, output=f"corrected by {name}"
            )
        elif action == "reject":
            result = services.escalations_reject(
                escalations=escalations, user=user, reason=f"rejected by {name}"
            )
        else:
            raise ValueError(f"unknown action {action!r}")
    except services.AlreadyDecided as exc:
        return {
            "outcome": "already_decided",
            "message": exc.messages[0],
            "decided": [],
            "skipped": escalation_ids,
        }
    return {
        "outcome": "decided",
        "decided": [e.pk for e in result.decided],
        "skipped": [s.escalation.pk for s in result.skipped],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    # One id, or several (comma-separated) decided as a group.
    parser.add_argument("--escalation", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--action", choices=["approve", "correct", "reject"], required=True)
    parser.add_argument("--go", type=Path, required=True)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()  # connected before the go: only the decision is left to race
    print("WAITING", flush=True)
    deadline = time.monotonic() + 60
    while not args.go.exists():
        if time.monotonic() > deadline:
            print(f"no go signal ({args.go}) within 60 s", file=sys.stderr)
            return 2
        time.sleep(0.005)
    ids = [int(pk) for pk in args.escalation.split(",")]
    result = decide(escalation_ids=ids, username=args.user, action=args.action)
    print("RESULT " + json.dumps(result), flush=True)
    # The decision's live updates go out on the broadcaster's daemon thread: let it
    # finish before the interpreter exits, or the exit can abort the process
    # mid-send ("FATAL: exception not rethrown", seen once on PostgreSQL).
    from boards import broadcast

    broadcast.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
