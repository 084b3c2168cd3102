"""The one set of rules for the CSV tables users hand us (benchmark, own Q&A; Dagster-free).

* UTF-8, a byte-order mark dropped (:func:`ragft_dagster.artifacts.read_utf8_file`).
* Strict quoting: a stray quote (``"1"x``) or a quote never closed is an error naming its line,
  never a silent guess; a quoted value may span lines, and each row knows its first and last.
* Blank lines (and rows of empty cells) are skipped wherever they are.
* The first row is the header: names are trimmed and lower-cased, a name given twice is an
  error, a column with no name is ignored, and the reader's required columns must be there.
* A row with more values than the header (an unquoted comma) is an error, unless the extra
  cells are empty (spreadsheets pad rows); a row too short to reach the last required column is
  an error. Trailing optional columns may be left off.
* Cells are trimmed.

Messages name the file, the row and its line(s) and the fix; each reader raises them as its own
exception class and adds its own checks (empty cells, duplicates) on :class:`Row` values.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragft_dagster.artifacts import read_utf8_file


@dataclass(frozen=True)
class Row:
    """One data row of a table."""

    number: int
    """1-based among the data rows (the header and blank lines not counted)."""
    first_line: int
    last_line: int
    values: dict[str, str]
    """Trimmed cells by column name; a trailing optional column the row leaves off is absent."""

    @property
    def lines(self) -> str:
        """``line 3``, or ``lines 3-5`` for a row with a quoted value spanning lines."""
        if self.first_line == self.last_line:
            return f"line {self.first_line}"
        return f"lines {self.first_line}-{self.last_line}"


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    """The header's names, trimmed and lower-cased ("" for a column with no name)."""
    rows: list[Row]


def read_csv(
    path: Path,
    error: type[Exception],
    *,
    what: str,
    key: str,
    header: str,
    required: Sequence[str] = (),
    value_noun: str = "a value",
) -> Table:
    """Read a user's CSV file under the rules above.

    Args:
        path: The file.
        error: Exception class raised with a message naming the file, the row, its line and the
            fix.
        what: What the file is ("benchmark file"), for a missing or unreadable file.
        key: The recipe key that names it ("evaluation.questions").
        header: The header as messages show it ("question,answer[,doc]").
        required: Columns the header must have and every row must reach. A reader that checks
            its fields per record itself (the same way for CSV and JSON) names none.
        value_noun: What a cell holds, for the unquoted-comma fix ("a question or option").

    Returns:
        The header's column names and the data rows.

    Raises:
        error: For an unreadable, non-UTF-8 or empty file, broken quoting, a header missing a
            required column or naming one twice, and a row with too many or too few values.
    """
    path = Path(path)
    text = read_utf8_file(path, error, what=what, key=key, expected="a CSV file", noun="CSV")
    return parse_csv(text, path, error, header=header, required=required, value_noun=value_noun)


def parse_csv(
    text: str,
    path: Path,
    error: type[Exception],
    *,
    header: str,
    required: Sequence[str] = (),
    value_noun: str = "a value",
) -> Table:
    """:func:`read_csv` for text already read (a reader that takes CSV or JSON lines from one
    file); ``path`` only names the file in messages."""
    records = _records(text, path, error)
    first = next(records, None)
    if first is None:
        raise error(f"{path}: empty; write a header {header} and rows")
    _, header_line, names = first
    columns = tuple(h.strip().lower() for h in names)
    missing = [c for c in required if c not in columns]
    if missing:
        hint = ""
        if len(columns) == 1 and (";" in names[0] or "\t" in names[0]):
            hint = " (the header has no commas: the file seems to use ';' or tabs; save it "
            hint += "with commas as separators)"
        raise error(
            f"{path}: missing column(s) {missing} in the header (line {header_line}); the "
            f"header must be {header}{hint}"
        )
    twice = sorted({h for h in columns if h and columns.count(h) > 1})
    if twice:
        raise error(f"{path}: column(s) {twice} appear twice in the header; keep one of each")
    needed = max((columns.index(c) + 1 for c in required), default=0)
    rows: list[Row] = []
    for first_line, last_line, fields in records:
        values = {h: v.strip() for h, v in zip(columns, fields, strict=False) if h}
        row = Row(len(rows) + 1, first_line, last_line, values)
        where = f"{path}: row {row.number} ({row.lines})"
        if any(v.strip() for v in fields[len(columns) :]):
            raise error(
                f"{where}: {len(fields)} values for the {len(columns)} columns of the header (an "
                f"unquoted comma?); put double quotes around {value_noun} that contains a comma "
                '("1,000 rows") and double any quote inside it'
            )
        if len(fields) < needed:
            spans = (
                "; one value spans these lines: check for a quote that closes too late"
                if first_line != last_line
                else ""
            )
            raise error(
                f"{where}: {len(fields)} values for the {len(columns)} columns of the header "
                f"(no '{columns[len(fields)]}' value){spans}; every row needs "
                f"{','.join(required)}"
            )
        rows.append(row)
    return Table(columns, rows)


def _records(text: str, path: Path, error: type[Exception]) -> Iterator[tuple[int, int, list[str]]]:
    """Non-blank CSV records as (first line, last line, values); a quoting error names its
    line."""
    # strict: a stray quote ('"1"x') or a quote never closed is an error, not a silent guess.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    last = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "end of data" in str(exc):
                raise error(
                    f"{path}: a quoted value starting on line {last + 1} is never closed (the "
                    "file ends inside it); add the closing double quote"
                ) from None
            raise error(
                f"{path}: line {reader.line_num}: broken quoting ({exc}); put the whole value "
                'in double quotes and write a quote inside it as two ("")'
            ) from None
        first, last = last + 1, reader.line_num
        if any(v.strip() for v in fields):
            yield first, last, fields
