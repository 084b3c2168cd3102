"""config/merge.py: the recipe's merge section (one mergekit config, a chain of stages, a
mergekit-multi file, merge options) validated at load, naming the key."""

import json

import pytest
import yaml

from ragft_dagster.config.recipe import RecipeError, load_recipe

from ..conftest import chain_config, linear_config, slerp_config, write_recipe


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        (
            [{"name": "b", "config": linear_config(("stage:a", 0.5), ("tiny:code", 0.5))}],
            r"merge\.stages\[0\]\.config\.models\[0\]\.model: 'stage:a' is not an earlier stage",
        ),
        (
            [
                {"name": "a", "config": slerp_config("tiny:base", "tiny:math")},
                {"name": "a", "config": slerp_config("stage:a", "tiny:code")},
            ],
            "defined twice",
        ),
        (
            [
                {"name": "a", "config": slerp_config("tiny:base", "tiny:math")},
                {"name": "b", "config": slerp_config("tiny:base", "tiny:code")},
            ],
            r"\['a'\] are merged but no later stage uses them",
        ),
        ([{"name": "A b", "config": slerp_config("tiny:base", "tiny:math")}], r"stages\[0\]\.name"),
        ([{"name": "a", "confg": {}}], r"unknown key\(s\) \['confg'\]"),
        (
            [{"name": "a", "config": {"merge_method": "slerp"}}],
            r"merge\.stages\[0\]\.config \(stage 'a'\).*models",
        ),
    ],
    ids=["unknown-stage", "duplicate", "unused", "bad-name", "stage-key", "mergekit-invalid"],
)
def test_bad_stage_chain_is_rejected_naming_the_key(tmp_path, stages, match):
    path = write_recipe(tmp_path, lambda raw: raw.update(merge={"stages": stages}))
    with pytest.raises(RecipeError, match=match) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and "key 'merge'" in str(err.value)


def test_stage_reference_needs_a_chain(tmp_path):
    path = write_recipe(
        tmp_path, lambda raw: raw.update(merge=slerp_config("stage:x", "tiny:math"))
    )
    with pytest.raises(RecipeError, match="names a stage, but merge is a single"):
        load_recipe(path)


def test_stage_chain_recipe_validates(tmp_path):
    """A valid chain loads; its stages, where each sits in the recipe, and the source models
    (an earlier stage's output is not a source) come out of it."""
    from ragft_dagster.config.merge import merge_stages, source_models

    recipe = load_recipe(write_recipe(tmp_path, lambda raw: raw.update(merge=chain_config())))
    stages = merge_stages(recipe.merge)
    assert [(s.name, s.key_path) for s in stages] == [
        ("first", "merge.stages[0].config"),
        ("second", "merge.stages[1].config"),
    ]
    assert sorted(source_models(recipe.merge)) == ["tiny:base", "tiny:code", "tiny:math"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lazy_unpikle": True}, r"merge_options.*unknown mergekit MergeOptions.*'lazy_unpikle'"),
        ({"device": "cuda"}, r"merge_options.*'device' cannot be set here.*compute\.device"),
        ({"out_shard_size": "lots"}, r"merge_options.*out_shard_size 'lots'"),
        ({"low_cpu_memory": "sometimes"}, r"merge_options.*low_cpu_memory"),
    ],
    ids=["typo", "device", "shard-size", "wrong-type"],
)
def test_bad_merge_option_is_rejected_naming_it(tmp_path, options, match):
    path = write_recipe(tmp_path, lambda raw: raw.update(merge_options=options))
    with pytest.raises(RecipeError, match=match):
        load_recipe(path)


def test_a_mergekit_multi_file_is_a_merge_chain(tmp_path):
    """merge may name a mergekit-multi file (what `mergekit-multi` reads): named documents are
    stages in dependency order, the unnamed one is the final merge, and a bare merge name used
    as a model becomes a stage reference."""
    from ragft_dagster.config.merge import merge_stages

    multi = tmp_path / "merges.yml"
    final = linear_config(("first", 0.5), ("tiny:code", 0.5))
    first = {"name": "first", **slerp_config("tiny:base", "tiny:math")}
    multi.write_text(yaml.safe_dump_all([final, first]))  # any order: the final one first here
    recipe = load_recipe(write_recipe(tmp_path, lambda raw: raw.update(merge="merges.yml")))
    stages = merge_stages(recipe.merge)
    assert [s.name for s in stages] == ["first", "merge"]
    assert "stage:first" in json.dumps(stages[1].config)
    multi.write_text(yaml.safe_dump_all([first, {"name": "first", **final}]))
    with pytest.raises(RecipeError, match=r"merges.yml: merge name 'first' twice"):
        load_recipe(write_recipe(tmp_path, lambda raw: raw.update(merge="merges.yml")))
