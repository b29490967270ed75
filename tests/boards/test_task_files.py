"""Reading files of tasks (boards.task_files): every row with its line number and
what could not be read of it, field by field."""

from __future__ import annotations

import pytest

from boards.task_files import EXPORT_COLUMNS, TaskFileError, csv_chunks, detect_format, read_task_rows


def read(text: str, format: str = "csv", **kwargs):
    return read_task_rows(text.encode(), format=format, **kwargs)


def test_a_quoted_cell_over_several_lines_keeps_the_line_its_row_starts_on():
    rows = read('title,input\nfirst,"one\ntwo\nthree"\n\nsecond,x\n')

    assert [(row.line, row.title) for row in rows] == [(2, "first"), (6, "second")]
    assert rows[0].input == "one\ntwo\nthree"


def test_it_reads_a_spreadsheets_semicolons_and_byte_order_mark():
    rows = read_task_rows("\ufefftitle;priority\nWeld;3\n".encode(), format="csv")

    assert (rows[0].title, rows[0].priority) == ("Weld", 3)


def test_it_reads_allow_reuse_as_spreadsheets_write_it():
    rows = read("title,allow_reuse\na,FALSE\nb,yes\nc,\nd,maybe\n")

    assert [row.allow_reuse for row in rows[:3]] == [False, True, True]
    assert rows[3].problems == {
        "allow_reuse": ["allow_reuse must be true or false (or empty for true), not 'maybe'."]
    }


def test_a_row_with_more_cells_than_columns_is_a_problem():
    [row] = read("title\na,b\n")

    assert "2 cells but the first line names 1 columns" in row.problems["row"][0]


def test_an_export_can_be_imported_into_another_board():
    exported = "".join(
        csv_chunks(
            [
                [
                    7,
                    "Weld",
                    "done",
                    "Done",
                    "",
                    -2,
                    "welder",
                    "photo",
                    "OK",
                    0.9,
                    "0.1",
                    1,
                    2,
                    1,
                    1,
                    "t",
                    "t",
                    "t",
                ]
            ]
        )
    )

    [row] = read(exported)

    assert (row.title, row.input, row.priority, row.problems) == ("Weld", "photo", -2, {})
    assert exported.splitlines()[0] == ",".join(EXPORT_COLUMNS)


def test_json_lines_report_types_and_unknown_keys_per_field():
    rows = read(
        '{"title": "ok", "priority": 2.5, "allow_reuse": "no", "colour": "red"}\n[1]\n{"input": "x"}\n',
        format="jsonl",
    )

    assert rows[0].problems == {
        "colour": ["Unknown key: the keys are title, input, capability, priority, allow_reuse."],
        "priority": ["It must be a whole number from -1000 to 1000, not a number."],
        "allow_reuse": ["It must be true or false, not a string."],
    }
    assert rows[1].problems["row"] == ['Each line must be a JSON object such as {"title": "..."}, not list.']
    assert rows[2].problems == {"title": ["This field is required."]}


def test_a_json_line_may_hold_a_line_separator_inside_a_string():
    [row] = read('{"title": "a\u2028b"}\n', format="jsonl")

    assert row.title == "a\u2028b"


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("t.csv", b"{", "csv"),
        ("t.jsonl", b"title", "jsonl"),
        ("upload", b'\n {"title": 1}', "jsonl"),
        ("upload", b"title\n", "csv"),
    ],
)
def test_it_tells_the_format_from_the_name_or_the_first_character(name, data, expected):
    assert detect_format(name, data) == expected


def test_a_file_with_too_many_rows_is_refused_whole():
    with pytest.raises(TaskFileError, match="holds 3 tasks; import at most 2"):
        read("title\na\nb\nc\n", max_rows=2)
