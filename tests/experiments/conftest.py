"""The kaizen tests' people: Ana approves changes; an editor proposes them; the
``approver`` fixture is an approver who may also change agents, as the agent
page asks of whoever proposes and approves there."""

from __future__ import annotations

import pytest

from tests.factories import make_approver, make_editor, make_user_with


@pytest.fixture
def ana(db):
    return make_approver(username="ana")


@pytest.fixture
def editor(db):
    return make_editor()


@pytest.fixture
def approver(db):
    return make_user_with("boards.change_agent", "experiments.approve_change")


@pytest.fixture
def fast_replays(settings):
    """Replays unpaced (KAIZEN_REPLAY_RATE paces them to spare the live line,
    which these tests do not run)."""
    settings.KAIZEN_REPLAY_RATE = 100_000.0


# A PostgreSQL with pgvector of the tests' own (tests/experiments/test_vectors.py).
from tests.experiments.pgvector_server import pgvector_database, pgvector_db, pgvector_dsn  # noqa: E402, F401
