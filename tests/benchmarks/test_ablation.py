"""The SFT ablation tool: recipe edits, and its refusal of edits that reach upstream assets."""

import pytest

from ragft_dagster.benchmarks.ablation import edited_recipe, main, upstream_changes
from ragft_dagster.config.recipe import load_recipe

from ..conftest import TINY_RECIPE


def _variant(tmp_path, *edits):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(edited_recipe(TINY_RECIPE, list(edits))))
    return load_recipe(path)


def test_edits_reach_nested_keys_and_parse_yaml_values(tmp_path):
    raw = edited_recipe(TINY_RECIPE, ["sft_dataset.quality.enabled=false", "sft.args.seed=3"])
    assert raw["sft_dataset"]["quality"] == {"enabled": False}
    assert raw["sft"]["args"]["seed"] == 3
    with pytest.raises(SystemExit, match="key=value"):
        edited_recipe(TINY_RECIPE, ["sft.args.seed"])


def test_only_edits_of_the_sft_stage_are_ablations(tmp_path):
    for sub in ("base", "a", "b"):
        (tmp_path / sub).mkdir()
    base = _variant(tmp_path / "base")
    assert (
        upstream_changes(base, _variant(tmp_path / "a", "sft_dataset.quality.enabled=false")) == []
    )
    assert upstream_changes(base, _variant(tmp_path / "b", "chunking.chunk_size=64")) == [
        "doc_chunks"
    ]


def test_an_upstream_edit_is_refused_before_anything_is_built(tmp_path, capsys):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"name: t\nartifacts:\n  root: {tmp_path / 'artifacts'}\n")
    code = main(
        ["--recipe", str(TINY_RECIPE), "--profile", str(profile), "--set", "chunking.chunk_size=64"]
    )
    assert code == 2
    assert "not only the SFT stage" in capsys.readouterr().out
    assert not (
        tmp_path / "artifacts" / "ablations" / "chunking.chunk_size_64" / "artifacts"
    ).exists()
