"""Open answers: the question file, the reference metrics (values worked by hand), the paired
statistics, the report section, and cells answered by a real (tiny) model with its cache."""

import json
import math
from pathlib import Path

import pytest

from ragft_dagster.evaluation.open_answers import (
    OpenQuestion,
    OpenQuestionsError,
    load_open_questions,
    reference_chunk,
    score_answers,
)
from ragft_dagster.evaluation.open_metrics import (
    coverage,
    exact_match,
    normalise_answer,
    rouge_l,
    similarities,
    token_f1,
)
from ragft_dagster.evaluation.report import open_report

from ..conftest import QUICKSTART_DATA

# --- the metrics, worked by hand -------------------------------------------------------------


def test_normalisation_is_squads():
    # lower case, punctuation removed, then the articles, then single spaces
    assert normalise_answer("The  Cat, sat on A mat!") == "cat sat on mat"
    assert normalise_answer("`make ui`") == "make ui"
    assert normalise_answer("an-apple") == "anapple"  # punctuation goes first: no article left


def test_exact_match_compares_normalised_texts():
    assert exact_match("The answer: 42.", "answer 42") == 1.0
    assert exact_match("answer 42 exactly", "answer 42") == 0.0


def test_token_f1_by_hand():
    # "cat sat on mat" (4 tokens) vs "cat on mat" (3): 3 shared -> P 3/4, R 1 -> F1 6/7
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # a multiset: "red" counts once, as often as the reference has it -> P 1/3, R 1/2 -> 0.4
    assert token_f1("red red blue", "red green") == pytest.approx(0.4)
    assert token_f1("nothing shared", "other words") == 0.0
    # SQuAD's rule for empty texts: only empty matches empty
    assert token_f1("", "x") == 0.0
    assert token_f1("the", "") == 1.0  # both normalise to nothing


def test_rouge_l_by_hand():
    # LCS of [the cat sat on the mat] and [the cat was on the mat] is 5 tokens: P = R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    # order matters: the LCS of [b a] and [a b] is 1 token -> P = R = 1/2
    assert rouge_l("beta alpha", "alpha beta") == pytest.approx(0.5)
    assert rouge_l("", "alpha") == 0.0


def test_coverage_by_hand():
    # content words of the answer: make, ui, starts, dagster; the chunk holds make and ui
    assert coverage("make ui starts dagster", ["Run make ui to start"]) == pytest.approx(0.5)
    assert coverage("make ui starts dagster", ["starts", "dagster make ui"]) == 1.0
    assert coverage("it is the", ["anything"]) is None  # only function words: nothing to check


def test_similarity_is_the_cosine_of_the_embeddings():
    vectors = {"yes": [1.0, 0.0], "ref": [1.0, 1.0], "": [0.0, 1.0]}
    sims = similarities(lambda texts: [vectors[t] for t in texts], ["yes", ""], ["ref", "ref"])
    assert sims[0] == pytest.approx(1 / math.sqrt(2))
    assert sims[1] == 0.0  # an empty answer says nothing, whatever its embedding


def test_records_carry_every_metric_and_the_retrieval_checks():
    q = OpenQuestion("q1", 1, "Which port does make ui use?", "port 3000", "installation.md")
    hits = [
        {
            "id": "c1",
            "doc": "installation.md",
            "heading": "",
            "text": "make ui listens on port 3000",
        }
    ]
    chunks = hits + [{"id": "c2", "doc": "other.md", "text": "port 3000 is also here"}]
    [rec] = score_answers(
        [q],
        [{"content": " It uses port 3000. ", "truncated": False, "new_tokens": 7}],
        [hits],
        rag=True,
        chunks=chunks,
        embed=lambda texts: [[1.0, 0.0]] * len(texts),
    )
    assert rec["answer"] == "It uses port 3000."
    # "it uses port 3000" vs "port 3000": 2 shared -> P 2/4, R 1 -> 2/3
    assert rec["token_f1"] == pytest.approx(2 / 3)
    assert rec["exact_match"] == 0.0
    assert rec["similarity"] == pytest.approx(1.0)
    # content words: uses, port, 3000; the chunk has port and 3000
    assert rec["coverage"] == pytest.approx(2 / 3)
    assert rec["source_retrieved"] is True
    assert rec["reference_chunk"] == "c1"  # the source document's chunk, not other.md's
    assert rec["reference_chunk_retrieved"] is True
    assert reference_chunk(q, [chunks[1]]) is None  # the source names another document


# --- the question file -----------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_jsonl_files_read_the_same_questions(tmp_path):
    csv_path = _write(
        tmp_path,
        "q.csv",
        'question,answer,source\n"What, exactly?","Two\nlines",a.md\nSecond?,Yes,\n',
    )
    jsonl = _write(
        tmp_path,
        "q.jsonl",
        json.dumps({"question": "What, exactly?", "answer": "Two\nlines", "source": "a.md"})
        + "\n\n"
        + json.dumps({"question": "Second?", "answer": "Yes"})
        + "\n",
    )
    a, b = load_open_questions(csv_path), load_open_questions(jsonl)
    assert a == b
    assert a[0].answer == "Two\nlines" and a[0].source == "a.md" and a[1].source is None
    assert a[0].id != a[1].id and len(a[0].id) == 16


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("q.csv", "question,reply\nA?,B\n", "missing column(s) ['answer']"),
        ("q.csv", "question,answer\nA?,\n", "row 1 (line 2): field 'answer' is empty"),
        ("q.csv", "question,answer\nA?,B\nB?,C,D\n", "row 2 (line 3): 3 values for the 2"),
        ("q.csv", "question,answer\nA?,B\n a? ,C\n", "row 2 (line 3): duplicate of row 1"),
        ("q.csv", 'question,answer\nA?,"B\n', "value starting on line 2 is never closed"),
        ("q.csv", 'question,answer\nA?,"B"x\n', "line 2: broken quoting"),
        ("q.csv", "", "empty; write a header question,answer[,source]"),
        ("q.jsonl", '{"question": "A?", "answer": "B"}\n{"question": ', "row 2 (line 2): not a"),
        ("q.jsonl", '{"question": "A?", "answer": 3}\n', "field 'answer' is int, not a string"),
        ("q.jsonl", '["A?", "B"]\n', "row 1 (line 1): not a JSON object"),
    ],
)
def test_a_bad_row_is_named_by_file_row_and_field(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(OpenQuestionsError) as err:
        load_open_questions(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_the_quickstart_open_questions_name_documents_of_its_corpus():
    questions = load_open_questions(QUICKSTART_DATA / "open_questions.csv")
    assert 20 <= len(questions) <= 30
    docs = {p.name for p in (QUICKSTART_DATA / "docs").glob("*.md")}
    assert all(q.source in docs for q in questions)


def test_the_quickstart_open_questions_are_not_the_mcq_questions():
    from ragft_dagster.data.contamination import find_contamination
    from ragft_dagster.evaluation.mcq import load_questions

    mcq = load_questions(QUICKSTART_DATA / "mcq.csv")
    rows = [
        {"id": q.id, "question": q.question, "answer": q.options[0], "doc": "", "chunk_id": ""}
        for q in mcq
    ]
    opened = load_open_questions(QUICKSTART_DATA / "open_questions.csv")
    # the exact and n-gram detectors find no open question in the MCQ set
    assert find_contamination(rows, opened, embed=None) == []


def test_the_contamination_check_covers_open_questions():
    from ragft_dagster.data.contamination import find_contamination, summarise

    opened = [OpenQuestion("o1", 1, "Which command starts the web UI?", "make ui")]
    rows = [
        {
            "id": "t1",
            "question": "which command starts the web ui",
            "answer": "make ui",
            "doc": "installation.md",
            "chunk_id": "c1",
        }
    ]
    [finding] = find_contamination(rows, opened, embed=None)
    assert finding.benchmark == "open" and finding.exact and finding.mcq_answer == "make ui"
    assert summarise([finding])["open_questions_hit"] == 1
    assert summarise([finding])["mcq_questions_hit"] == 0


# --- the report section ----------------------------------------------------------------------


def _record(qid, row, f1, judged=None):
    return {
        "question_id": qid,
        "row": row,
        "question": f"question {row}?",
        "reference": f"reference {row}",
        "answer": f"answer {row} | with a pipe",
        "truncated": row == 2,
        "exact_match": 0.0,
        "token_f1": f1,
        "rouge_l": f1,
        "similarity": 0.5,
        "judge_correct": judged,
        "retrieved": [],
    }


def test_the_report_section_shows_each_cell_the_tests_and_the_answers():
    records = {
        ("sft", "rag"): [
            _record("q1", 1, 0.9, 1.0),
            _record("q2", 2, 0.8, 1.0),
            _record("q3", 3, 0.1, None),
        ],
        ("base", "rag"): [
            _record("q1", 1, 0.1, 0.0),
            _record("q2", 2, 0.2, 0.0),
            _record("q3", 3, 0.0, 0.0),
        ],
    }
    for recs in records.values():
        for r in recs:
            r.update(coverage=0.5, source_retrieved=True, reference_chunk_retrieved=False)
    agreement = {
        "model": "judge",
        "labelled": 10,
        "unreadable": 1,
        "human": {
            "n": 9,
            "agreement": 0.8,
            "kappa": 0.6,
            "kappa_ci_low": 0.1,
            "kappa_ci_high": 1.0,
        },
        "self_consistency": {"asked_twice": 5, "agreement": 1.0, "kappa": 1.0, "unreadable": 0},
        "judge_requests": 15,
        "judge_cache_hits": 0,
        "judge_off_schema": 2,
    }
    records[("base", "rag")][0]["answer"] = "Output: ``` # 127.0.0.1"  # a fence left open
    report = open_report(records, ["base", "sft"], ["rag"], n_boot=200, agreement=agreement)
    rows = {(r["model"], r["context"]): r for r in report.rows}
    assert rows[("sft", "rag")]["token_f1"] == pytest.approx(0.6)
    assert rows[("sft", "rag")]["judge_correct"] == 1.0  # the unreadable verdict is left out
    assert rows[("sft", "rag")]["judge_correct_n"] == 2
    assert rows[("sft", "rag")]["judge_unreadable"] == 1
    assert rows[("sft", "rag")]["truncated"] == 1
    [pair] = report.pairs["token_f1"]
    assert (pair["a"], pair["b"]) == ("sft rag", "base rag")
    md = report.markdown
    assert "| sft rag |" in md and "Cohen's kappa 0.600 [95% CI 0.100, 1.000]" in md
    assert "answer 1 \\| with a pipe (F1 0.90 ✓)" in md  # the answer beside the reference
    assert "✂" in md  # the cut-off answer is marked
    assert "Output: \\`\\`\\` # 127.0.0.1 (F1" in md  # escaped: the table row survives
    assert "Unreadable judge verdicts" in md
    assert report.metric_agreement["judged"] == 5


# --- a real model answers, as `ragft ask` does, and the cache makes a rerun free -----------


def test_a_cell_answers_as_ask_does_and_a_rerun_generates_nothing(tmp_path):
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.compute import ComputeSettings
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.evaluation.open_answers import evaluate_open_cell
    from ragft_dagster.models.generation import generate_reply
    from ragft_dagster.models.loading import load_local_model
    from ragft_dagster.models.refs import LocalModels
    from ragft_dagster.prompts import ask_messages

    from ..conftest import write_recipe

    questions = _write(
        tmp_path, "open.csv", "question,answer\nWhich port?,3000\nWhich command?,make ui\n"
    )

    def mutate(raw):
        raw["evaluation"]["open_questions"] = str(questions)
        raw["evaluation"]["open_answers"] = {"max_new_tokens": 6, "models": ["base"]}

    recipe = load_recipe(write_recipe(tmp_path, mutate))
    layout = ArtifactLayout(tmp_path / "artifacts")
    models = LocalModels.of(recipe, layout)
    compute = ComputeSettings(device="cpu", dtype="float32")

    def run():
        return evaluate_open_cell(
            recipe.evaluation,
            recipe.retrieval,
            questions,
            models,
            "base",
            "closed_book",
            compute=compute,
            system_prompt=recipe.sft_dataset.system_prompt,
            open_collection=lambda: pytest.fail("closed-book opens no index"),
        )

    records, figures = run()
    assert figures["answers_generated"] == 2 and figures["answers_cached"] == 0
    model, tokenizer = load_local_model(models, "base", compute)
    expected = generate_reply(
        model,
        tokenizer,
        ask_messages(
            "Which port?",
            [],
            system_prompt=recipe.sft_dataset.system_prompt,
            context_template=recipe.evaluation.context_template,
        ),
        device="cpu",
        max_new_tokens=6,
    )
    assert records[0]["answer"] == expected.text.strip()
    assert records[0]["new_tokens"] == expected.new_tokens <= 6
    assert records[0]["token_f1"] == token_f1(expected.text, "3000")
    again, figures = run()
    assert figures["answers_generated"] == 0 and figures["answers_cached"] == 2
    assert [r["answer"] for r in again] == [r["answer"] for r in records]


def test_batched_replies_come_back_in_order_and_generation_runs_in_float32_on_a_cpu(
    tiny_base, tiny_tokenizer
):
    import torch
    from transformers import AutoModelForCausalLM

    from ragft_dagster.compute import ComputeSettings
    from ragft_dagster.models.generation import (
        generate_replies,
        generate_reply,
        generation_settings,
    )

    assert generation_settings(ComputeSettings(device="cpu")).inference_dtype() == torch.float32
    kept = ComputeSettings(device="cpu", dtype="bfloat16")
    assert generation_settings(kept) is kept  # a profile that names a dtype is obeyed

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    chats = [[{"role": "user", "content": text}] for text in ("a", "a longer question here", "b")]
    side = tiny_tokenizer.padding_side
    # one at a time: what `ragft ask` streams, token for token
    one = generate_replies(model, tiny_tokenizer, chats, device="cpu", max_new_tokens=5)
    streamed = [
        generate_reply(model, tiny_tokenizer, c, device="cpu", max_new_tokens=5) for c in chats
    ]
    assert one == streamed
    # batched: the same batches whatever the input order, the replies in the input order
    three = generate_replies(
        model, tiny_tokenizer, chats, device="cpu", max_new_tokens=5, batch_size=3
    )
    backwards = generate_replies(
        model, tiny_tokenizer, chats[::-1], device="cpu", max_new_tokens=5, batch_size=3
    )
    assert backwards == three[::-1] and all(r.new_tokens <= 5 for r in three)
    assert tiny_tokenizer.padding_side == side  # left padding was only for the batches


def test_an_api_model_gets_the_same_messages_at_temperature_0_and_is_asked_once(tmp_path):
    import openai

    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.compute import ComputeSettings
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.evaluation.open_answers import evaluate_open_cell
    from ragft_dagster.models.refs import LocalModels
    from ragft_dagster.prompts import ask_messages

    from ..conftest import write_recipe
    from ..openai_stub import OpenAIStub

    questions = _write(tmp_path, "open.csv", "question,answer\nWhich port?,port 3000\nWho?,me\n")

    def mutate(raw):
        raw["evaluation"]["api"] = {"models": ["stub-model"], "max_retries": 0}
        raw["evaluation"]["open_questions"] = str(questions)
        raw["evaluation"]["open_answers"] = {"max_new_tokens": 12, "models": ["stub-model"]}

    recipe = load_recipe(write_recipe(tmp_path, mutate))
    models = LocalModels.of(recipe, ArtifactLayout(tmp_path / "artifacts"))
    with OpenAIStub(["The port is 3000."]) as stub:

        def run():
            return evaluate_open_cell(
                recipe.evaluation,
                recipe.retrieval,
                questions,
                models,
                "stub-model",
                "closed_book",
                compute=ComputeSettings(device="cpu"),
                system_prompt="Answer briefly.",
                open_collection=lambda: pytest.fail("closed-book opens no index"),
                llm_client=lambda: openai.OpenAI(
                    base_url=stub.base_url, api_key="sk-test", max_retries=0, timeout=5
                ),
            )

        records, figures = run()
        # requests run concurrently: find the first question's
        sent = next(r for r in stub.requests if r["messages"][-1]["content"] == "Which port?")
        again, cached = run()
        assert len(stub.requests) == 2  # the rerun paid nothing
    assert sent["model"] == "stub-model" and sent["temperature"] == 0.0
    assert sent["max_tokens"] == 12
    assert sent["messages"] == ask_messages(
        "Which port?",
        [],
        system_prompt="Answer briefly.",
        context_template=recipe.evaluation.context_template,
    )
    assert figures["answers_generated"] == 2 and cached["answers_cached"] == 2
    # "the port is 3000" vs "port 3000": P 2/3, R 1 -> F1 0.8
    assert records[0]["token_f1"] == pytest.approx(0.8) and again == records
