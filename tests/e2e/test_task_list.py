"""Finding work in a real browser (issue 10, item 8: no task list, no search, Done
showing 50 cards with no way to see the rest, no export, no import): type a
search and the results follow while the search box keeps what is typed and its
focus; the URL follows too; pages; export the found tasks as CSV (streamed by
the real ASGI server); import a file."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from boards import services
from boards.models import Task
from boards.task_files import TaskRow
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.factories import make_board, make_user

pytestmark = [pytest.mark.e2e]


def test_search_page_export_and_import_in_a_browser(browser, live_server_url, tmp_path):
    board = make_board(name="Weld line", ready_limit=None)
    rows = [TaskRow(line=n, title=f"Weld seam {n}") for n in range(55)]
    rows += [TaskRow(line=100 + n, title=f"Paint door {n}") for n in range(5)]
    services.tasks_import(board=board, rows=rows)
    make_user(username="operator", password=PASSWORD, is_superuser=True)
    list_path = reverse("boards-task-list", kwargs={"slug": board.slug})

    page = log_in(
        browser,
        live_server_url,
        "operator",
        list_path,
        live=False,
        viewport={"width": 1300, "height": 900},
        accept_downloads=True,
    )
    assert page.inner_text("#task-results-heading").strip() == "60 tasks"
    # A marker that a full page load would wipe out: htmx swaps only the results.
    page.evaluate("window.__noReload = true")

    search = page.locator("#id_q")
    search.click()
    search.type("weld", delay=30)
    page.wait_for_function(
        "document.querySelector('#task-results-heading').textContent.includes('55 tasks found')",
        timeout=WAIT_MS,
    )
    assert page.evaluate("window.__noReload") is True
    assert search.input_value() == "weld"
    assert page.evaluate("document.activeElement.id") == "id_q"
    page.wait_for_url("**q=weld**")
    assert page.locator(".task-table tbody tr").count() == 50

    # A select asks at once; the search keeps its text.
    page.select_option("#id_status", "done")
    page.wait_for_function(
        "document.querySelector('#task-results-heading').textContent.includes('0 tasks found')"
    )
    page.select_option("#id_status", "")
    page.wait_for_function(
        "document.querySelector('#task-results-heading').textContent.includes('55 tasks found')"
    )
    assert search.input_value() == "weld"

    page.click("a[rel=next]")
    page.wait_for_function("document.querySelector('.task-pages').textContent.includes('Page 2 of 2')")
    assert page.locator(".task-table tbody tr").count() == 5
    # htmx pushes the URL once the swap has settled: wait for it rather than race it.
    page.wait_for_url("**page=2**")
    assert page.evaluate("window.__noReload") is True

    with page.expect_download() as download_info:
        page.click("text=Export CSV")
    exported = list(csv.DictReader(io.StringIO(download_info.value.path().read_text())))
    assert len(exported) == 55
    assert all(row["title"].startswith("Weld seam") for row in exported)

    upload = tmp_path / "more.csv"
    upload.write_text("title,priority\nImported one,3\nImported two,0\n")
    page.goto(f"{live_server_url}{list_path}")
    page.click("#task-import summary")
    page.set_input_files("#task-import input[type=file]", str(upload))
    page.click("#task-import button[type=submit]")
    page.wait_for_selector("text=Imported 2 tasks from more.csv into Backlog.")
    assert page.inner_text("#task-results-heading").strip() == "62 tasks"
    assert Task.objects.filter(board=board, title__startswith="Imported").count() == 2
