"""assets/models.py: merged_model as a Dagster asset (its failure message, its stage metadata)
and the code version that moves only with what changes the weights."""

import dagster as dg

from ragft_dagster.config.recipe import load_recipe

from ..conftest import chain_config, slerp_config, write_recipe


def test_merge_code_version_moves_only_with_what_changes_the_weights(tmp_path):
    from ragft_dagster.assets import models

    def version(**options) -> str:
        mutate = (lambda raw: raw.update(merge_options=options)) if options else None
        recipe = load_recipe(write_recipe(tmp_path, mutate))
        asset = next(a for a in models.build(recipe) if a.key.path == ["merged_model"])
        return asset.code_versions_by_key[asset.key]

    plain = load_recipe(write_recipe(tmp_path))
    assert version() == plain.section_version("merge", "chat_template")
    assert version(lazy_unpickle=True, out_shard_size="1B", read_to_gpu=True) == version()
    assert version(random_seed=1) != version()


def test_merged_model_asset_fails_clearly_on_an_incompatible_source(tmp_path, root, tiny_llama):
    from ragft_dagster.assets import models
    from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

    path = write_recipe(
        tmp_path, lambda raw: raw.update(merge=slerp_config("tiny:base", str(tiny_llama)))
    )
    assets = [a for a in models.build(load_recipe(path)) if a.key.path == ["merged_model"]]
    result = dg.materialize(
        assets,
        resources={
            "artifacts": ArtifactStoreResource(root=str(root)),
            "compute": ComputeResource(device="cpu"),
        },
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert str(path) in message and str(tiny_llama) in message and "vocab_size" in message
    assert not (root / "models" / "merged").exists()


def test_merged_model_asset_runs_a_chain_and_reports_its_stages(tmp_path, root):
    from ragft_dagster.assets import models
    from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

    path = write_recipe(
        tmp_path,
        lambda raw: raw.update(merge=chain_config(), merge_options={"lazy_unpickle": False}),
    )
    assets = [a for a in models.build(load_recipe(path)) if a.key.path == ["merged_model"]]
    resources = {
        "artifacts": ArtifactStoreResource(root=str(root)),
        "compute": ComputeResource(device="cpu"),
    }
    runs = [dg.materialize(assets, resources=resources) for _ in range(2)]
    metadata = [r.asset_materializations_for_node("merged_model")[0].metadata for r in runs]
    assert [m["stages_merged"].value for m in metadata] == [2, 1]
    assert [m["stages_reused"].value for m in metadata] == [0, 1]
    assert metadata[0]["sources"].value == "tiny:base, tiny:math, tiny:code"
    assert "| first | slerp |" in metadata[1]["stages"].value
    assert "| stage:first | mistral |" in metadata[1]["preflight"].value
    assert (root / "models" / "merged" / "ragft_merge_recipe.yml").is_file()
