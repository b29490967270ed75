"""Make sure the demo login printed by ``make run`` works.

Creates a staff superuser so the demo can also open the admin. An existing
user is left alone unless ``--reset`` is given: ``make run`` resets it only on
its own local SQLite database, where the printed password must be the one that
works; on a shared database (DATABASE_URL) nobody's account is changed.
"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

DEFAULT_PASSWORD = "demo"


class Command(BaseCommand):
    help = (
        "Create the demo user (a staff superuser) if it does not exist; with --reset, also "
        "restore an existing one. The password comes from KAIZEN_DEMO_PASSWORD (default 'demo')."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="demo", help="Username of the demo user (default: demo).")
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Also restore an existing user: active, staff, superuser, the demo password.",
        )

    def handle(self, *args, username: str, reset: bool, **options) -> None:
        username = username.strip()
        if not username:
            raise CommandError("--username must not be empty.")
        # An empty variable means "not set": a blank password would lock the demo out.
        password = os.environ.get("KAIZEN_DEMO_PASSWORD") or DEFAULT_PASSWORD
        User = get_user_model()
        with transaction.atomic():
            user, created = User.objects.select_for_update().get_or_create(
                username=username, defaults={"is_staff": True, "is_superuser": True}
            )
            if not created and not reset:
                self.stdout.write(
                    f"Demo user {username!r} exists; left as it is (use --reset to restore it)."
                )
                return
            user.is_staff = True
            user.is_superuser = True
            user.is_active = True
            user.set_password(password)
            user.save()
        verb = "Created" if created else "Restored"
        self.stdout.write(self.style.SUCCESS(f"{verb} demo user {username!r} (staff, superuser)."))
