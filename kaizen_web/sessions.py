"""Django's database sessions (SESSION_ENGINE), read by a compiled query.

Every request of a signed-in browser reads its session. Django's database store
builds and compiles that lookup with the ORM each time; here it is compiled once
(kaizen_web.prepared). Same table, same rows, same rules: a session past its
expiry date is not loaded, and its key is dropped, as Django's store does.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.db.models import QuerySet
from django.utils import timezone

from kaizen_web.prepared import Prepared, fields


def _session_query(*, session_key: str) -> QuerySet:
    return Session.objects.filter(session_key=session_key).values_list(*fields(Session))[:1]


# Read on every request of a signed-in browser: compiled once (kaizen_web.prepared).
_SESSION = Prepared(_session_query, session_key=str)


class SessionStore(db.SessionStore):
    def _get_session_from_db(self) -> Any:
        key = self.session_key
        session = next(iter(_SESSION.instances(Session, session_key=key)), None) if key else None
        if session is not None and session.expire_date > timezone.now():
            return session
        self._session_key = None
        return None
