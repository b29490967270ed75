"""``python manage.py import_tasks BOARD FILE``: all or nothing, each problem as
FILE:LINE: FIELD: message, a progress bar on a terminal, status 1 on failure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, ManagementUtility, call_command

from boards.models import Task, TaskEvent
from tests.factories import make_board, make_user

pytestmark = pytest.mark.django_db


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*args: str, stderr: io.StringIO | None = None) -> tuple[str, str]:
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    call_command("import_tasks", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.csv"
    path.write_text("title,input,priority\n" + "".join(f"Task {n},input {n},{n % 3}\n" for n in range(25)))
    return path


def test_it_imports_a_csv_file_into_the_board(board, csv_file):
    out, err = run(board.slug, str(csv_file))

    assert Task.objects.filter(board=board).count() == 25
    assert f"Imported 25 tasks into {board.slug} (Backlog)." in out
    assert "Read 25 tasks" in err


def test_it_takes_the_board_as_an_option_and_jsonl_from_stdin(board, monkeypatch):
    lines = "\n".join(json.dumps({"title": f"JSON {n}"}) for n in range(3))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))

    run("--board", board.slug, "--format", "jsonl", "-")

    assert sorted(Task.objects.values_list("title", flat=True)) == ["JSON 0", "JSON 1", "JSON 2"]


def test_it_records_the_user_named(board, csv_file):
    user = make_user()

    run(board.slug, str(csv_file), "--user", user.username)

    assert set(TaskEvent.objects.values_list("user", flat=True)) == {user.pk}


def test_each_bad_row_is_named_by_line_and_field_and_nothing_is_imported(board, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("title,priority\nfine,1\n,2\nok,9999\n")
    err = io.StringIO()

    with pytest.raises(CommandError, match="2 of 3 rows have errors, so nothing was imported"):
        run(board.slug, str(path), stderr=err)

    printed = err.getvalue()
    assert f"{path}:3: title: Give the task a title." in printed
    assert f"{path}:4: priority: Priority must be between -1000 and 1000." in printed
    assert not Task.objects.exists()


def test_it_exits_non_zero_when_rows_fail(board, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"title": "ok"}\nnot json\n')

    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", "import_tasks", board.slug, str(path)]).execute()

    # (run_from_argv closes the database connection: nothing more to query here.)
    assert exit_info.value.code != 0
    assert f"{path}:2: It is not valid JSON" in capsys.readouterr().err


def test_without_a_terminal_it_writes_a_line_every_tenth(csv_file, board):
    _, err = run(board.slug, str(csv_file))

    progress = [line for line in err.splitlines() if line.startswith("Importing")]
    # 25 rows in one batch: every tenth is reached at once, one line each, no redraws.
    assert progress[-1] == f"Importing into {board.slug}: 25/25 (100%)"
    assert "\r" not in err


def test_on_a_terminal_it_redraws_a_bar(csv_file, board):
    terminal = Terminal()

    run(board.slug, str(csv_file), stderr=terminal)

    assert f"\rImporting into {board.slug} [{'#' * 30}] 25/25\n" in terminal.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "x.csv"], "There is no board 'nope'"),
        (["only-one-argument"], "Give the board's slug and the file"),
        (["--board", "b", "x.csv", "y.csv"], "With --board, give one FILE."),
    ],
)
def test_it_names_what_is_wrong_with_its_arguments(db, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_it_names_a_file_it_cannot_read(board, tmp_path):
    with pytest.raises(CommandError, match="Cannot read .*missing.csv"):
        run(board.slug, str(tmp_path / "missing.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("title\n")
    with pytest.raises(CommandError, match="holds no tasks"):
        run(board.slug, str(empty))


def test_a_full_intake_column_refuses_the_whole_file(tmp_path):
    board = make_board(backlog=False, ready_limit=2)
    path = tmp_path / "three.csv"
    path.write_text("title\na\nb\nc\n")

    with pytest.raises(CommandError, match="room for 2 more tasks"):
        run(board.slug, str(path))

    assert not Task.objects.exists()
