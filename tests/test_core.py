import json
import math
import re
from pathlib import Path

import pytest

from ragft_dagster.artifacts import atomic_dir, read_jsonl, write_jsonl
from ragft_dagster.data.chunking import DocumentError, chunk_document, read_document, split_sections
from ragft_dagster.data.qa_generation import generate_offline_qa, parse_qa_reply, render_prompt
from ragft_dagster.evaluation.mcq import McqError, load_questions, score_questions
from ragft_dagster.stats import wilson_interval
from ragft_dagster.training.sft import build_sft_dataset

from .conftest import QUICKSTART_DATA

DOC = """# Guide

Intro text about the tool.

## Install

The installer is a script that sets things up.

```bash
make run
```

## Usage

### Flags

**verbose**: prints more output while running.
""" + ("More words about usage. " * 400)


def test_atomic_dir_keeps_previous_artifact_on_failure(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(final) as d:
        (d / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_tiny_models_are_deterministic(tiny_cache, tmp_path):
    from safetensors.torch import load_file

    from ragft_dagster.models.tiny import build_tiny_model

    a = build_tiny_model("base", tiny_cache / "tiny")
    b = build_tiny_model("base", tmp_path / "tiny")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    c = build_tiny_model("math", tmp_path / "tiny")
    wc = load_file(c / "model.safetensors")
    assert not all((wa[k] == wc[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
    assert "{% generation %}" in (a / "chat_template.jinja").read_text()


def test_sections_keep_heading_paths_and_ignore_code_fences():
    text = "# A\nx\n```\n# not a heading\n```\n## B\ny\n### C\nz\n## D\nw\n"
    paths = [s.heading_path for s in split_sections(text)]
    assert paths == [["A"], ["A", "B"], ["A", "B", "C"], ["A", "D"]]


def test_chunks_respect_size_overlap_and_ids(tiny_tokenizer):
    chunks = chunk_document(DOC, "guide.md", tiny_tokenizer, chunk_size=300, chunk_overlap=30)
    assert all(c.n_tokens <= 300 for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)
    flags = [c for c in chunks if c.heading_path == ["Guide", "Usage", "Flags"]]
    assert len(flags) > 2  # the long section is windowed
    a, b = flags[0], flags[1]
    assert a.end_char > b.start_char  # consecutive windows overlap
    again = chunk_document(DOC, "guide.md", tiny_tokenizer)
    assert [c.id for c in again] == [c.id for c in chunks]
    other = chunk_document(DOC, "other.md", tiny_tokenizer)
    assert not {c.id for c in other} & {c.id for c in chunks}


def test_read_document_errors_name_the_file(tmp_path):
    (tmp_path / "bad.md").write_bytes(b"caf\xe9")
    with pytest.raises(DocumentError, match="bad.md.*UTF-8"):
        read_document(tmp_path / "bad.md", "bad.md")
    (tmp_path / "bin.md").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DocumentError, match="binary"):
        read_document(tmp_path / "bin.md", "bin.md")


def test_offline_generator_is_grounded(tiny_tokenizer):
    chunks = chunk_document(DOC, "guide.md", tiny_tokenizer)
    pairs = [p for c in chunks for p in generate_offline_qa(c.to_dict(), "Guide", 3)]
    by_question = {p["question"]: p for p in pairs}
    assert by_question["In Guide, what is the installer?"]["answer"] == (
        "The installer is a script that sets things up."
    )
    assert by_question["How do I install?"]["answer"] == "make run"
    assert by_question["What does verbose do?"]["answer"].startswith(
        "verbose prints more output while running."
    )
    words = set(re.findall(r"\w+", DOC))
    for p in pairs:  # every answer is taken from the document
        assert set(re.findall(r"\w+", p["answer"])) <= words, p


@pytest.mark.parametrize(
    ("reply", "how", "n"),
    [
        ('[{"question": "Q1?", "answer": "A1"}]', "json", 1),
        ('```json\n[{"question": "Q1?", "answer": "A1"}, {"q": "Q2?", "a": "A2"}]\n```', "json", 2),
        (
            'Sure! Here they are:\n[{"question": "Q1?", "answer": "A1"}]\nHope it helps',
            "json_fragment",
            1,
        ),
        ('{"questions": [{"question": "Q1?", "answer": "A1"}]}', "json", 1),
        ("1. Q: What is X?\nA: X is Y.\n2. Q: What is Z?\nA: Z is W.", "text", 2),
        ('[{"question": "Q1?", "answer": "A1"', "failed", 0),
        ("", "failed", 0),
    ],
)
def test_parse_qa_reply_is_tolerant(reply, how, n):
    pairs, got = parse_qa_reply(reply)
    assert (got, len(pairs)) == (how, n)


def test_render_prompt_leaves_other_braces():
    out = render_prompt('Use {context}; reply like {"question": "..."} x{n}', context="C", n="3")
    assert out == 'Use C; reply like {"question": "..."} x3'


def test_sft_dataset_dedupes_and_splits_stably(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "chunk_id": "c",
            "doc": "d.md",
            "generator": "offline",
            "question": f"Question {i}?",
            "answer": f"Answer {i}.",
        }
        for i in range(200)
    ]
    rows.append({**rows[0], "id": "dup", "question": "  question 0? "})
    counts = build_sft_dataset(
        rows, tmp_path / "a", validation_fraction=0.2, seed=0, system_prompt="sys"
    )
    assert counts["duplicates_removed"] == 1
    assert counts["train_rows"] + counts["validation_rows"] == 200
    assert 20 < counts["validation_rows"] < 60
    train = read_jsonl(tmp_path / "a" / "train.jsonl")
    assert [m["role"] for m in train[0]["messages"]] == ["system", "user", "assistant"]
    build_sft_dataset(
        rows[:150], tmp_path / "b", validation_fraction=0.2, seed=0, system_prompt="sys"
    )
    val_a = {r["id"] for r in read_jsonl(tmp_path / "a" / "validation.jsonl")}
    val_b = {r["id"] for r in read_jsonl(tmp_path / "b" / "validation.jsonl")}
    assert val_b <= val_a  # adding rows never moves existing rows across the split


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


@pytest.mark.parametrize("batch_size", [5, 2])
def test_letter_scoring_batched_equals_single(tiny_base, tiny_tokenizer, batch_size):
    """Batches group prompts by length (not in question order); each result stays with its
    question."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    prompts = [
        tiny_tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Question {'x' * i}? A. a B. b C. c D. d Answer:"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in (2, 0, 4, 1, 3)
    ]
    options = [(f"alpha {i}", "longer option text " * (i + 1), "c", f"d{i}") for i in range(5)]
    batched = score_questions(model, tiny_tokenizer, prompts, options, batch_size=batch_size)
    single = [
        score_questions(model, tiny_tokenizer, [p], [o], batch_size=1)[0]
        for p, o in zip(prompts, options, strict=True)
    ]
    for b, s in zip(batched, single, strict=True):
        assert b["predicted"] == s["predicted"]
        assert b["predicted_norm"] == s["predicted_norm"]
        for letter in "ABCD":
            assert abs(b["logprobs"][letter] - s["logprobs"][letter]) < 1e-4
            assert abs(b["option_logprobs"][letter] - s["option_logprobs"][letter]) < 1e-3
        assert abs(sum(b["probs"].values()) - 1) < 1e-6
        assert 0 < b["mass"] < 1


def test_wilson_interval_against_hand_computed():
    lo, hi = wilson_interval(18, 36)
    assert abs(lo - 0.3445) < 1e-3 and abs(hi - 0.6555) < 1e-3
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and abs(hi - 0.2775) < 1e-3


def test_jsonl_roundtrip(tmp_path):
    rows = [{"a": 1, "t": "é\nx"}]
    assert write_jsonl(tmp_path / "x.jsonl", rows) == 1
    assert read_jsonl(tmp_path / "x.jsonl") == rows
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0]) == rows[0]
    assert not list(Path(tmp_path).glob(".x.jsonl.tmp-*"))


def test_sync_index_is_incremental_and_refuses_mixed_models(tmp_path):
    from llama_index.core.embeddings import MockEmbedding

    from ragft_dagster.retrieval.indexing import IndexMismatchError, open_collection, sync_index

    def chunk(i: int) -> dict:
        return {"id": f"id{i}", "text": f"text {i}", "doc": "d.md", "heading_path": ["D"]}

    embedder = MockEmbedding(embed_dim=8)
    with open_collection("docs", path=tmp_path, embedding_model="model-a") as col:
        first = sync_index(col, [chunk(0), chunk(1), chunk(2)], embedder, "model-a")
        assert first == {"added": 3, "deleted": 0, "kept": 0, "total": 3, "dimension": 8}
        second = sync_index(col, [chunk(1), chunk(3)], embedder, "model-a")
        assert second == {"added": 1, "deleted": 2, "kept": 1, "total": 2, "dimension": 8}
        assert sorted(col.get(include=[])["ids"]) == ["id1", "id3"]
    mismatch = pytest.raises(IndexMismatchError, match="model-a.*model-b.*retrieval.collection")
    with open_collection("docs", path=tmp_path, embedding_model="model-b") as col, mismatch:
        sync_index(col, [chunk(1)], embedder, "model-b")


def test_sync_index_writes_more_chunks_than_one_chroma_batch(tmp_path):
    """A first index of ~700 documents (7,645 chunks, found by make bench-scale) is more than
    Chroma takes in one write; and removing them all is too."""
    from llama_index.core.embeddings import MockEmbedding

    from ragft_dagster.retrieval.indexing import open_collection, sync_index

    chunks = [
        {"id": f"id{i}", "text": f"t{i}", "doc": "d.md", "heading_path": []} for i in range(7645)
    ]
    embedder = MockEmbedding(embed_dim=4)
    with open_collection("docs", path=tmp_path) as col:
        assert sync_index(col, chunks, embedder)["total"] == 7645
        assert sync_index(col, chunks[:1], embedder)["deleted"] == 7644


def test_exact_mcnemar_against_hand_computed_values():
    from ragft_dagster.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 2 * 0.5**5
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.038574
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(3, 3) == 1.0


def test_paired_bootstrap_and_minimum_detectable_difference():
    from ragft_dagster.stats import minimum_detectable_difference, paired_bootstrap_ci

    assert paired_bootstrap_ci([True] * 10, [False] * 10) == (1.0, 1.0)
    assert paired_bootstrap_ci([True, False] * 5, [True, False] * 5) == (0.0, 0.0)
    lo, hi = paired_bootstrap_ci([True] * 6 + [False] * 4, [False] * 6 + [True] * 4)
    assert lo < 0.2 < hi and lo >= -1 and hi <= 1
    # By hand: d = 0.2 with 30% discordant questions needs
    # (1.959964*sqrt(.3) + 0.841621*sqrt(.26))^2 / .04 = 56.45 questions.
    assert minimum_detectable_difference(56, 0.3) == pytest.approx(0.2, abs=0.003)
    assert minimum_detectable_difference(5000, 0.3) < minimum_detectable_difference(50, 0.3)
    assert math.isnan(minimum_detectable_difference(36, 0.0))  # never disagree: nothing to detect


def test_paired_comparisons_label_not_significant():
    from ragft_dagster.stats import comparisons_markdown, paired_comparisons

    q = [f"q{i}" for i in range(20)]
    cells = {
        "good": {k: i < 18 for i, k in enumerate(q)},  # 18/20
        "bad": {k: i < 4 for i, k in enumerate(q)},  # 4/20, the same 4 right
        "close": {k: 1 <= i < 19 for i, k in enumerate(q)},  # 18/20, differs on 2 questions
    }
    rows = {(r["a"], r["b"]): r for r in paired_comparisons(cells, n_boot=2000)}
    big = rows[("good", "bad")]
    assert (big["only_a"], big["only_b"]) == (14, 0) and big["significant"]
    assert big["mcnemar_p"] == pytest.approx(2 / 2**14)
    near = rows[("good", "close")]
    assert near["difference"] == 0 and not near["significant"]
    assert "not significant" in comparisons_markdown(list(rows.values()))
