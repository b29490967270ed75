"""Our own static files hold together: a stylesheet whose braces do not balance
(a merge once dropped one) silently ends every rule after it inside a block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "static"


@pytest.mark.parametrize("path", sorted(STATIC.glob("css/*.css")), ids=lambda p: p.name)
def test_every_block_of_our_stylesheets_is_closed(path):
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        depth += line.count("{") - line.count("}")
        assert depth >= 0, f"{path.name}:{number}: a '}}' closes nothing"
    assert depth == 0, f"{path.name}: {depth} block(s) left open"


@pytest.mark.django_db
def test_our_pages_name_the_icon_that_is_served(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("icon"))
    page = client.get("/boards/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon["Content-Type"] == "image/svg+xml"
