"""The one set of CSV rules every table reader shares (benchmark, own Q&A)."""

import pytest

from ragft_dagster.tables import read_csv


class TableError(ValueError):
    pass


def _read(tmp_path, text, **kw):
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode("utf-8"))
    kw = {"what": "table", "key": "k", "header": "question,answer[,doc]", **kw}
    return path, read_csv(path, TableError, **kw)


def test_bom_blank_lines_multiline_values_and_optional_columns(tmp_path):
    _, table = _read(
        tmp_path,
        '\ufeff Question ,Answer,doc,\n\nWhat?,"Two\nlines.",\n   \nWho?, Me ,d.md,,,\n',
        required=("question", "answer"),
    )
    assert table.columns == ("question", "answer", "doc", "")
    assert [(r.number, r.lines, r.first_line) for r in table.rows] == [
        (1, "lines 3-4", 3),
        (2, "line 6", 6),
    ]
    # a trailing optional cell left off is absent; cells are trimmed; unnamed columns dropped
    assert [r.values for r in table.rows] == [
        {"question": "What?", "answer": "Two\nlines.", "doc": ""},
        {"question": "Who?", "answer": "Me", "doc": "d.md"},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "t.csv: empty; write a header question,answer[,doc] and rows"),
        ("\n\n", "t.csv: empty; write a header question,answer[,doc] and rows"),
        (
            "question,doc\nWhat?,x\n",
            "missing column(s) ['answer'] in the header (line 1); the header must be "
            "question,answer[,doc]",
        ),
        (
            "question;answer\nWhat?;This.\n",
            "the file seems to use ';' or tabs; save it with commas as separators",
        ),
        ("question,answer,Answer\n", "column(s) ['answer'] appear twice in the header"),
        (
            "question,answer\nOne?,1\n\nHow many, roughly?,1,000\n",
            "row 2 (line 4): 4 values for the 2 columns of the header (an unquoted comma?); "
            'put double quotes around a value that contains a comma ("1,000 rows")',
        ),
        (
            'question,doc,answer\n"Two\nlines?",d.md\n',
            "row 1 (lines 2-3): 2 values for the 3 columns of the header (no 'answer' value); "
            "one value spans these lines",
        ),
        (
            'question,answer\nWhat?,"never closed\n',
            "a quoted value starting on line 2 is never closed",
        ),
        ('question,answer\nWhat?,"x"y\n', "line 2: broken quoting"),
    ],
    ids=[
        "empty",
        "blank-only",
        "missing-column",
        "semicolons",
        "duplicate-column",
        "too-many",
        "too-few",
        "unclosed-quote",
        "stray-quote",
    ],
)
def test_problems_name_the_file_row_and_line(tmp_path, text, expected):
    with pytest.raises(TableError) as err:
        _read(tmp_path, text, required=("question", "answer"))
    assert str(err.value).startswith(str(tmp_path / "t.csv") + ": ")
    assert expected in str(err.value)


def test_a_reader_with_no_required_columns_checks_fields_itself(tmp_path):
    """No header requirement and no too-few error, but too many values and broken quoting are
    still errors: a reader that checks its fields per record (as for JSON) sees what is there."""
    _, table = _read(tmp_path, "question,reply\nWhat?\n")
    assert [r.values for r in table.rows] == [{"question": "What?"}]
    with pytest.raises(TableError, match=r"row 1 \(line 2\): 3 values"):
        _read(tmp_path, "question,answer\nWhat?,1,000\n")


def test_encoding_problems_say_how_to_fix_them(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("question,answer\nCaf\xe9?,x\n".encode("latin-1"))
    with pytest.raises(TableError, match=r"line 2: not valid UTF-8 .*re-save the CSV as UTF-8"):
        read_csv(path, TableError, what="table", key="k", header="h")
    with pytest.raises(TableError, match=r"nope\.csv: table not found; fix k in the recipe"):
        read_csv(tmp_path / "nope.csv", TableError, what="table", key="k", header="h")
