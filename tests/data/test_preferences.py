"""The generated preference pairs: deterministic, the rows the quickstart ships, balanced in
length, and unrelated to the benchmark and the general-capability set."""

import json
from collections import Counter
from pathlib import Path

from ragft_dagster.config.recipe import GENERAL_SET
from ragft_dagster.data.contamination import find_contamination
from ragft_dagster.data.preferences import FAMILIES, generated_pairs, write_preference_file
from ragft_dagster.evaluation.mcq import load_questions

from ..conftest import QUICKSTART_DATA

PAIRS = QUICKSTART_DATA / "preference_pairs.jsonl"


def _shipped() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]


def test_the_shipped_file_holds_the_generated_rows_of_seed_0():
    rows = generated_pairs(0)
    assert rows == generated_pairs(0) and rows != generated_pairs(1)
    assert [r for r in _shipped() if r["category"] in FAMILIES] == rows
    assert Counter(r["category"] for r in rows) == {f: 20 for f in FAMILIES}
    assert len({r["prompt"] for r in _shipped()}) == len(_shipped())


def test_rewriting_a_file_keeps_its_hand_written_rows(tmp_path: Path):
    target = tmp_path / "pairs.jsonl"
    own = {"category": "handwritten", "prompt": "p", "chosen": "c", "rejected": "r"}
    target.write_text(json.dumps(own) + "\n" + json.dumps(generated_pairs(1)[0]) + "\n")
    assert write_preference_file(target, seed=0) == 1 + len(generated_pairs(0))
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert rows == [own, *generated_pairs(0)]


def test_neither_answer_is_systematically_the_longer():
    # summed log-probabilities favour longer answers: over the shipped pairs the chosen answer
    # must not be the longer one in most of them (the asset reports the token-level share of
    # its held-out pairs as length_baseline)
    rows = _shipped()
    longer = [len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows]
    shorter = [len(r["chosen"].split()) < len(r["rejected"].split()) for r in rows]
    assert abs(sum(longer) - sum(shorter)) <= 0.2 * len(rows)


def test_no_wording_repeats_across_generated_pairs():
    """A held-out pair must not share its refusal, opening or invented answer with a training
    pair: what DPO learns to carry over is the kind of answer, not a stock phrase."""
    rows = generated_pairs(0)
    for family in ("helpfulness", "tone"):
        rejected = [r["rejected"] for r in rows if r["category"] == family]
        first_sentences = [text.split(".")[0].split("!")[0] for text in rejected]
        assert len(set(first_sentences)) == len(rejected), family
    for key in ("prompt", "chosen", "rejected"):
        assert len({r[key] for r in rows}) == len(rows), key


def test_no_pair_resembles_a_benchmark_or_general_question():
    rows = [
        {"id": str(i), "question": r["prompt"], "answer": r["chosen"], "doc": "", "chunk_id": ""}
        for i, r in enumerate(_shipped())
    ]
    for questions in (GENERAL_SET, QUICKSTART_DATA / "mcq.csv"):
        assert find_contamination(rows, load_questions(questions)) == [], questions
