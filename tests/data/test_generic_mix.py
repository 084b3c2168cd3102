"""Generic instruction data mixed into SFT against forgetting, and the shipped set's hygiene."""

from pathlib import Path

import pytest

from ragft_dagster.config.recipe import GENERAL_SET, GENERIC_SET, load_recipe
from ragft_dagster.data.contamination import find_contamination
from ragft_dagster.data.own_qa import load_own_qa
from ragft_dagster.evaluation.mcq import load_questions
from ragft_dagster.training.sft import build_sft_dataset

from ..conftest import TINY_RECIPE, write_recipe


def _doc_rows(n):
    return [
        {
            "id": f"d{i}",
            "chunk_id": f"c{i}",
            "doc": "guide.md",
            "generator": "offline",
            "question": f"What does setting number {i} control?",
            "answer": f"Setting {i} does.",
        }
        for i in range(n)
    ]


def test_the_share_of_generic_rows_is_drawn_after_the_filters(tmp_path):
    generic = [
        {**r, "generator": "generic"}
        for r in load_own_qa(str(GENERIC_SET), root=Path("."), key="k")
    ]
    counts = build_sft_dataset(
        _doc_rows(100),
        tmp_path,
        validation_fraction=0.0,
        seed=0,
        system_prompt=None,
        generic_rows=generic,
        generic_share=0.2,
    )
    assert counts["generic_rows"] == counts["generic_rows_wanted"] == 25
    assert counts["train_rows"] == 125
    # a share the set cannot fill takes all of it, and says how many were wanted
    counts = build_sft_dataset(
        _doc_rows(400),
        tmp_path,
        validation_fraction=0.0,
        seed=0,
        system_prompt=None,
        generic_rows=generic,
        generic_share=0.2,
    )
    assert counts["generic_rows"] == 48 and counts["generic_rows_wanted"] == 100


def test_the_recipe_names_the_shipped_set_or_a_file(tmp_path):
    from ragft_dagster.assets.training import generic_rows
    from ragft_dagster.config.recipe import RecipeError

    assert load_recipe(TINY_RECIPE).generic_path is None  # off by default
    (tmp_path / "a").mkdir()
    recipe = load_recipe(
        write_recipe(tmp_path / "a", lambda raw: raw["sft_dataset"].update(generic={"share": 0.1}))
    )
    rows = generic_rows(recipe)
    assert recipe.generic_path == GENERIC_SET and len(rows) == 48
    assert {r["generator"] for r in rows} == {"generic"}
    assert rows == generic_rows(recipe)  # a stable draw
    (tmp_path / "b").mkdir()
    with pytest.raises(RecipeError, match="sft_dataset.generic.source.*file not found"):
        load_recipe(
            write_recipe(
                tmp_path / "b",
                lambda raw: raw["sft_dataset"].update(
                    generic={"share": 0.1, "source": "nowhere.jsonl"}
                ),
            )
        )


def test_no_shipped_generic_pair_resembles_a_general_capability_question():
    """Training on the forgetting measure's own questions would hide forgetting."""
    from ragft_dagster.models.refs import resolve_model_ref
    from ragft_dagster.retrieval.indexing import load_embedder

    recipe = load_recipe(TINY_RECIPE)
    embed = load_embedder(
        resolve_model_ref(recipe.retrieval.embedding_model, Path("."), recipe.root)
    ).get_text_embedding_batch
    rows = load_own_qa(str(GENERIC_SET), root=Path("."), key="k")
    findings = find_contamination(rows, load_questions(GENERAL_SET), embed=embed)
    assert findings == [], [(f.train_question, f.mcq_question, f.embedding) for f in findings]
