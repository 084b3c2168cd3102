"""The benchmark file: the shipped questions parse, a bad row or encoding is named."""

import pytest

from ragft_dagster.evaluation.mcq import McqError, load_questions

from ..conftest import QUICKSTART_DATA


def test_shipped_mcq_parses():
    qs = load_questions(QUICKSTART_DATA / "mcq.csv")
    assert len(qs) >= 30
    assert any("\n" in o for q in qs for o in q.options)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("question,a,b,c,correct\nQ,1,2,3,A\n", "missing column.*'d'"),
        ("question,a,b,c,d,correct\nQ,1,2,3,4,E\n", "row 1.*'correct'.*A, B, C, D"),
        ("question,a,b,c,d,correct\nQ,1,,3,4,A\n", "row 1.*column 'b' is empty"),
        ("question,a,b,c,d,correct\nQ,1,2,3,4,A\nq ,5,6,7,8,B\n", "row 2.*duplicate of row 1"),
    ],
)
def test_bad_mcq_csv_names_row_and_column(tmp_path, content, match):
    p = tmp_path / "mcq.csv"
    p.write_text(content)
    with pytest.raises(McqError, match=match):
        load_questions(p)


def test_bad_mcq_encoding(tmp_path):
    p = tmp_path / "mcq.csv"
    p.write_bytes("question,a,b,c,d,correct\nCaf\xe9?,1,2,3,4,A\n".encode("latin-1"))
    with pytest.raises(McqError, match="UTF-8"):
        load_questions(p)
