"""The whole audit log: newest first, paginated, by agent; nothing on it can
change or delete an entry, and neither can the admin."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from experiments.models import AuditEntry, ChangeProposal, Experiment, PromptVersion
from tests.experiments.helpers import line_agent, started
from tests.factories import make_editor

pytestmark = pytest.mark.django_db

AUDIT = "/kaizen/audit/"


def _entries(agent, n: int, prefix: str = "entry") -> None:
    for i in range(n):
        AuditEntry.objects.create(agent=agent, action=AuditEntry.Action.VERSION, reason=f"{prefix} {i}")


def _reasons(html: str) -> list[str]:
    return re.findall(r'<td class="evo-audit-reason">([^<]+)</td>', html)


def test_the_url_is_named_experiments_audit():
    assert reverse("experiments-audit") == AUDIT


def test_the_log_is_newest_first_and_paginated_by_50(client, ana):
    _entries(line_agent(), 60)
    client.force_login(ana)

    first = client.get(AUDIT).content.decode()
    second = client.get(AUDIT + "?page=2").content.decode()

    assert _reasons(first)[:2] == ["entry 59", "entry 58"] and len(_reasons(first)) == 50
    assert _reasons(second) == [f"entry {i}" for i in range(9, -1, -1)]
    assert "Page 1 of 2 (60 entries)" in first
    assert 'rel="next"' in first and 'rel="prev"' in second


def test_the_log_filters_by_agent(client, ana):
    welder, painter = line_agent(name="welder"), line_agent(name="painter")
    _entries(welder, 3, "weld")
    _entries(painter, 2, "paint")
    client.force_login(ana)

    html = client.get(f"{AUDIT}?agent={painter.pk}").content.decode()

    assert _reasons(html) == ["paint 1", "paint 0"]
    assert f'<option value="{painter.pk}" selected>painter</option>' in html


def test_an_unknown_agent_filter_shows_everything(client, ana):
    _entries(line_agent(), 2)
    client.force_login(ana)

    html = client.get(f"{AUDIT}?agent=abc&page=zz").content.decode()

    assert len(_reasons(html)) == 2


def test_the_log_has_no_way_to_change_an_entry(client, ana):
    started(line_agent())
    client.force_login(ana)

    html = client.get(AUDIT).content.decode()

    # The only post on the page is the log-out button.
    assert html.count('method="post"') == 1
    assert "Proposed" in html and "Approved" in html


def test_users_without_the_permission_get_403(client):
    client.force_login(make_editor())

    assert client.get(AUDIT).status_code == 403


# --- the admin, read-only for everyone ------------------------------------------------------


@pytest.mark.parametrize("model", [AuditEntry, PromptVersion, ChangeProposal, Experiment])
def test_the_admin_shows_but_never_adds_changes_or_deletes(admin_client, model):
    started(line_agent())
    obj = model.objects.first()
    name = f"admin:experiments_{model._meta.model_name}"

    assert admin_client.get(reverse(f"{name}_changelist")).status_code == 200
    view = admin_client.get(reverse(f"{name}_change", args=[obj.pk]))
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert admin_client.get(reverse(f"{name}_add")).status_code == 403
    assert admin_client.post(reverse(f"{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()
