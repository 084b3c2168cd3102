"""The published protocol (llama-index query engine + generation + letter parsing) against our
scorer: same prompts, same answers where both are valid. Tiny model, a few chunks, offline."""

from __future__ import annotations

import pytest

from ..conftest import QUICKSTART_DATA, TINY_RECIPE

DOCS = ["chunking.md", "vector-index.md", "evaluation.md"]


@pytest.fixture(scope="module")
def recipe():
    from ragft_dagster.config.recipe import load_recipe

    return load_recipe(TINY_RECIPE)


@pytest.fixture(scope="module")
def embedder(tiny_cache, recipe):
    from ragft_dagster.models.refs import resolve_model_ref
    from ragft_dagster.retrieval.indexing import load_embedder

    return load_embedder(resolve_model_ref(recipe.retrieval.embedding_model, tiny_cache))


@pytest.fixture(scope="module")
def collection(tmp_path_factory, recipe, tiny_tokenizer, embedder):
    """A chroma index of a few quickstart pages, chunked with the base tokenizer."""
    from ragft_dagster.data.chunking import chunk_document
    from ragft_dagster.retrieval.indexing import open_collection, sync_index

    docs = QUICKSTART_DATA / "docs"
    chunks = [
        c.to_dict()
        for name in DOCS
        for c in chunk_document((docs / name).read_text(), name, tiny_tokenizer, 300, 30)
    ]
    with open_collection("protocol", path=tmp_path_factory.mktemp("index")) as col:
        sync_index(col, chunks, embedder)
        yield col


@pytest.fixture()
def model_and_tokenizer(tiny_base):
    import torch

    from ragft_dagster.models.loading import load_scoring_model

    return load_scoring_model(
        str(tiny_base), None, device="cpu", dtype=torch.float32, chat_template=None
    )


def _prompts(recipe) -> dict:
    ev = recipe.evaluation
    return dict(
        system_prompt=ev.system_prompt,
        user_template=ev.user_template,
        context_template=ev.context_template,
    )


def test_query_engine_prompt_is_the_scorers_prompt(
    recipe, collection, embedder, model_and_tokenizer, monkeypatch
):
    from ragft_dagster.benchmarks.published_protocol import PublishedProtocol, TransformersLLM
    from ragft_dagster.evaluation.mcq import load_questions
    from ragft_dagster.evaluation.scoring import score_cell
    from ragft_dagster.retrieval.indexing import Retriever

    model, tok = model_and_tokenizer
    questions = load_questions(recipe.questions_path)[:2]
    for rag in (True, False):
        # What score_cell really feeds the model: every prompt it renders.
        fed: list[str] = []
        render = tok.apply_chat_template

        def recording(*args, render=render, fed=fed, **kwargs):
            out = render(*args, **kwargs)
            fed.append(out)
            return out

        monkeypatch.setattr(tok, "apply_chat_template", recording)
        retriever = Retriever(collection, embedder, 2) if rag else None
        records = score_cell(
            questions,
            model,
            tok,
            retriever=retriever,
            batch_size=2,
            device="cpu",
            **_prompts(recipe),
        )
        monkeypatch.undo()

        llm = TransformersLLM(model, tok)
        protocol = PublishedProtocol(
            llm,
            collection=collection if rag else None,
            embedder=embedder,
            top_k=2,
            **_prompts(recipe),
        )
        answers = protocol.answer_all(questions)
        assert llm.prompts == fed  # one LLM call per question, the very same text
        assert ("Context:\n" in fed[0]) is rag
        for rec, ans in zip(records, answers, strict=True):
            assert [r["id"] for r in rec["retrieved"]] == ans["retrieved"]
            assert len(ans["retrieved"]) == (2 if rag else 0)

    # Streaming replays the same greedy tokens.
    streamed = list(llm.stream_complete(llm.prompts[0], formatted=True))
    assert streamed[-1].text == llm.complete(llm.prompts[0], formatted=True).text
    assert "".join(s.delta or "" for s in streamed) == streamed[-1].text


def test_protocols_agree_where_both_answer(recipe, collection, embedder, model_and_tokenizer):
    from ragft_dagster.benchmarks.bench import compare_protocols, teach_letter_answers
    from ragft_dagster.benchmarks.published_protocol import scorer_prompt
    from ragft_dagster.evaluation.mcq import load_questions
    from ragft_dagster.retrieval.indexing import Retriever

    model, tok = model_and_tokenizer
    questions = load_questions(recipe.questions_path)[:4]
    retriever = Retriever(collection, embedder, 2)
    prompts = [
        scorer_prompt(q, tok, retriever.retrieve(q.question), **_prompts(recipe)) for q in questions
    ]
    taught = teach_letter_answers(model, tok, prompts, device="cpu")
    assert taught["taught_share"] >= 0.95

    figures = compare_protocols(
        questions,
        model,
        tok,
        collection=collection,
        embedder=embedder,
        top_k=2,
        batch_size=2,
        device="cpu",
        warmup=1,
        **_prompts(recipe),
    )
    assert figures["prompt_mismatches"] == []
    assert figures["retrieval_mismatches"] == []
    assert figures["published"]["llm_calls_per_pass"] == [4]
    assert figures["published"]["valid"] >= 3  # taught: replies are letters, not vacuous
    assert figures["disagreements"] == []
    assert figures["agree"] == figures["both_valid"]
    assert {a["published_reply"].strip() for a in figures["answers"]} <= set("ABCD")
