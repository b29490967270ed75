"""The task list as CSV: the filtered list, streamed, exact costs, and no cell
a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from boards import services
from boards.models import Task
from boards.task_files import EXPORT_COLUMNS, TaskRow, csv_safe
from boards.views_tasks import _SyncStreamingResponse
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def export_url(board, query: str = "") -> str:
    return reverse("boards-task-export", kwargs={"slug": board.slug}) + (f"?{query}" if query else "")


def read_csv(response) -> list[dict[str, str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_it_needs_a_login(client, board):
    response = client.get(export_url(board))

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_exports_the_filtered_tasks_with_every_column(logged_in, board):
    agent = make_agent(boards=[board], name="welder", capabilities=["weld"])
    task = services.task_create(
        board=board, title="Weld seam", input="photo 7", capability="weld", priority=-3
    )
    Task.objects.filter(pk=task.pk).update(
        agent=agent,
        output="OK",
        confidence=0.875,
        cost=Decimal("0.0001845"),
        tokens_in=120,
        tokens_out=30,
        model_calls=2,
        attempts=1,
    )
    services.task_create(board=board, title="Paint door")

    response = logged_in.get(export_url(board, "q=weld"))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="{board.slug}-tasks-')
    [row] = read_csv(response)
    assert list(row) == list(EXPORT_COLUMNS)
    assert row["id"] == str(task.pk)
    assert (row["title"], row["status"], row["column"], row["capability"]) == (
        "Weld seam",
        "backlog",
        "Backlog",
        "weld",
    )
    assert (row["agent"], row["input"], row["output"], row["confidence"]) == (
        "welder",
        "photo 7",
        "OK",
        "0.875",
    )
    # Exact, with the ledger's ten places; a negative priority stays a number.
    assert row["cost"] == "0.0001845000"
    assert row["priority"] == "-3"
    assert (row["tokens_in"], row["tokens_out"], row["model_calls"], row["attempts"]) == (
        "120",
        "30",
        "2",
        "1",
    )
    assert row["created_at"].startswith(str(task.created_at.year)) and row["finished_at"] == ""


@pytest.mark.parametrize(
    "payload", ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
)
def test_cells_that_would_run_as_formulas_start_with_an_apostrophe(logged_in, board, payload):
    services.task_create(board=board, title="Formula", input=payload)

    [row] = read_csv(logged_in.get(export_url(board)))

    assert row["input"] == "'" + payload


def test_text_that_merely_contains_a_formula_sign_is_left_alone():
    assert csv_safe("a = b") == "a = b"
    assert csv_safe(-5) == -5


def test_it_streams_in_chunks_rather_than_building_the_file(logged_in):
    board = make_board(ready_limit=None)
    services.tasks_import(board=board, rows=[TaskRow(line=n, title=f"task {n}") for n in range(1200)])

    response = logged_in.get(export_url(board))

    assert response.streaming
    chunks = iter(response.streaming_content)
    header, first = next(chunks), next(chunks)
    assert header.decode().startswith("id,title,status")
    # 500 rows a chunk: the first chunk is not the whole export.
    assert first.decode().count("\n") == 500
    assert sum(chunk.count(b"\n") for chunk in chunks) == 700


def test_under_asgi_it_still_streams_chunk_by_chunk():
    # Django's ASGI path reads a synchronous iterator whole before sending;
    # this response hands it over a chunk at a time.
    pulled: list[int] = []

    def rows():
        for n in range(3):
            pulled.append(n)
            yield f"chunk {n}\n"

    response = _SyncStreamingResponse(rows())

    async def first_chunk_then_the_rest() -> tuple[bytes, list[int], list[bytes]]:
        iterator = response.__aiter__()
        first = await iterator.__anext__()
        seen = list(pulled)
        rest = [chunk async for chunk in iterator]
        return first, seen, rest

    first, seen_after_first, rest = async_to_sync(first_chunk_then_the_rest)()

    assert first == b"chunk 0\n"
    assert seen_after_first == [0]
    assert rest == [b"chunk 1\n", b"chunk 2\n"]


def test_invalid_filters_show_the_list_with_the_error_not_a_file(logged_in, board):
    response = logged_in.get(export_url(board, "created_from=yesterday"))

    assert response.status_code == 400
    assert "Enter a valid date." in response.content.decode()
