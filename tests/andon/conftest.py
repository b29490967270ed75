"""The andon tests' people and data: Ana reviews the inbox; the escalation is one
defect waiting for her, made by the line as a finished run would make it."""

from __future__ import annotations

import pytest

from andon.models import Escalation
from tests.andon.helpers import escalate
from tests.factories import make_reviewer


@pytest.fixture
def ana(db):
    return make_reviewer(username="ana")


@pytest.fixture
def escalation(board, agent) -> Escalation:
    return escalate(board, title="Weld seam 12")
