"""``python manage.py create_api_token <username> [--name NAME] [--board SLUG ...] [--read-only]``:
a new API token.

Without options the token may read every board and add tasks to any, which its
user must be allowed to do (the ``boards.add_task`` permission); ``--board``
(repeatable) limits it to those boards, ``--read-only`` to reading.

Only the token goes to stdout, so a script can capture it
(``TOKEN=$(python manage.py create_api_token alice)``); the reminder that it is
shown only once, and its scope, go to stderr.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from boards import services
from boards.models import ApiToken, Board


class Command(BaseCommand):
    help = "Create an API token for a user and print it. It is stored hashed and shown only this once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="The user the token acts as.")
        parser.add_argument(
            "--name",
            default="",
            help="A label to tell this token apart from the user's others (e.g. the client using it).",
        )
        parser.add_argument(
            "--board",
            action="append",
            dest="boards",
            metavar="SLUG",
            help="A board the token may use; repeat for several. Without it, every board.",
        )
        parser.add_argument(
            "--read-only",
            action="store_true",
            help="The token may only read: list boards and tasks, never add a task.",
        )

    def handle(
        self,
        *args: Any,
        username: str,
        name: str,
        boards: list[str] | None,
        read_only: bool,
        **options: Any,
    ) -> None:
        max_name = ApiToken._meta.get_field("name").max_length
        if max_name is not None and len(name) > max_name:
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
        scoped = None
        if boards is not None:
            slugs = list(dict.fromkeys(boards))
            scoped = list(Board.objects.filter(slug__in=slugs))
            missing = sorted(set(slugs) - {board.slug for board in scoped})
            if missing:
                known = ", ".join(Board.objects.values_list("slug", flat=True)) or "none"
                raise CommandError(
                    f"There is no board {', '.join(repr(slug) for slug in missing)} (boards: {known})."
                )
        if not read_only and not user.has_perm(ApiToken.WRITE_PERMISSION):
            raise CommandError(
                f"User {username!r} may not add tasks, so a token to add them would be refused: give them "
                f"the “Can add task” permission ({ApiToken.WRITE_PERMISSION}) in the admin, or add "
                "--read-only for a token that only reads."
            )
        access = ApiToken.Access.READ if read_only else ApiToken.Access.WRITE
        try:
            token, key = services.api_token_create(user=user, name=name, access=access, boards=scoped)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(key)
        where = "every board" if scoped is None else "the boards " + ", ".join(b.slug for b in scoped)
        what = "read" if read_only else "read and add tasks to"
        self.stderr.write(
            f"Created API token {token.prefix}… for {username}: it may {what} {where}. "
            "Store it now: it is shown only this once. Send it as 'Authorization: Bearer <token>'."
        )
