"""The order pytest-xdist hands test files out in (``--dist loadfile``: a file goes
to a worker when its first test comes up). pytest-django puts the database tests
first, the transactional ones next and those without a database last, so the
longest-running files, which start real processes, came up at the end of a pass,
beside the browser tests of the other workers: the demo soak, which counts how
much work the line finishes in its own time, then got the least CPU of the run
(287 tasks against its floor of 300, once). Files marked ``long_running`` go
first instead, while the other workers run quick in-process tests. No test file
here depends on rows that migrations write, so a transactional test's flush
before the others changes nothing for them (pytest-xdist already interleaves
files this way)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)  # after pytest-django's ordering
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)
