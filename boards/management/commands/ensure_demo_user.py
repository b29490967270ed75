"""Make sure the demo login printed by ``make run`` works.

Creates (or repairs) a staff superuser so the demo can also open the admin. The
password is reset on every run on purpose: the run command prints it, so it
must be the one that works, whatever was changed in the admin since.
"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

DEFAULT_PASSWORD = "demo"


class Command(BaseCommand):
    help = (
        "Create or update the demo user (a staff superuser). The password comes from "
        "KAIZEN_DEMO_PASSWORD (default 'demo')."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="demo", help="Username of the demo user (default: demo).")

    def handle(self, *args, username: str, **options) -> None:
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
            user.is_staff = True
            user.is_superuser = True
            user.is_active = True
            user.set_password(password)
            user.save()
        verb = "Created" if created else "Updated"
        self.stdout.write(self.style.SUCCESS(f"{verb} demo user {username!r} (staff, superuser)."))
