"""``python manage.py create_api_token <username> [--name NAME]``: a new API token.

Only the token goes to stdout, so a script can capture it
(``TOKEN=$(python manage.py create_api_token alice)``); the reminder that it is
shown only once goes to stderr.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from boards import services
from boards.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user and print it. It is stored hashed and shown only this once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="The user the token acts as.")
        parser.add_argument(
            "--name",
            default="",
            help="A label to tell this token apart from the user's others (e.g. the client using it).",
        )

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        max_name = ApiToken._meta.get_field("name").max_length
        if len(name) > max_name:
            raise CommandError(f"--name is {len(name)} characters long; keep it to {max_name}.")
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(
                f"There is no user {username!r}: create it in the admin or with `manage.py createsuperuser`."
            )
        if not user.is_active:
            # Such a token would be refused on every request.
            raise CommandError(f"User {username!r} is inactive: activate it first.")
        token, key = services.api_token_create(user=user, name=name)
        self.stdout.write(key)
        self.stderr.write(
            f"Created API token {token.prefix}… for {username}. Store it now: it is shown only this once. "
            "Send it as 'Authorization: Bearer <token>'."
        )
