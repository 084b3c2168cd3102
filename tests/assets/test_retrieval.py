"""assets/retrieval.py: the retrieval-quality check on a dataset without held-out rows says why,
not that the index lost their chunks."""

import dagster as dg

from ragft_dagster.assets import retrieval
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource, VectorStoreResource

from ..conftest import TINY_RECIPE


def test_an_empty_validation_split_is_named_with_what_to_do(tmp_path):
    (tmp_path / "sft_dataset").mkdir()
    (tmp_path / "sft_dataset" / "validation.jsonl").write_text("")
    (check,) = [
        d
        for d in retrieval.build(load_recipe(TINY_RECIPE))
        if isinstance(d, dg.AssetChecksDefinition)
        and any(k.name == "vector_index_retrieval_quality" for k in d.check_keys)
    ]
    result = check(
        context=dg.build_op_context(),
        artifacts=ArtifactStoreResource(root=str(tmp_path)),
        compute=ComputeResource(),
        vector_store=VectorStoreResource(),
    )
    assert not result.passed
    assert result.metadata["held_out_rows"].value == 0
    assert "validation.jsonl is empty" in result.description
    assert "sft_dataset.validation_fraction" in result.description
