from pathlib import Path

import pytest
import yaml

from ragft_dagster.profile import ProfileError, load_profile
from ragft_dagster.recipe import RecipeError, load_recipe

from .conftest import QUICKSTART, ROOT

RECIPES = sorted((ROOT / "assets").glob("*/recipe.yaml"))
PROFILES = sorted((ROOT / "resources").glob("*.yaml"))


def test_shipped_recipes_exist():
    names = {p.parent.name for p in RECIPES}
    assert {"quickstart", "mistral-7b"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.parent.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.docs_dir.is_dir()
    assert recipe.questions_path.is_file()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_validates(path):
    assert load_profile(path).name == path.stem


def test_7b_recipe_is_the_published_configuration():
    r = load_recipe(ROOT / "assets" / "mistral-7b" / "recipe.yaml")
    assert r.base_model == "mistralai/Mistral-7B-v0.1"
    assert (r.lora.r, r.lora.lora_alpha, r.sft.args["num_train_epochs"]) == (256, 512, 3)
    assert (r.chunking.chunk_size, r.chunking.chunk_overlap) == (300, 30)
    assert r.qa.generator == "openai" and r.qa.model == "gpt-4"
    assert r.dpo.dataset == "Intel/orca_dpo_pairs"
    assert r.retrieval.embedding_model == "BAAI/bge-base-en-v1.5"
    sources = [s["model"] for s in r.merge["slices"][0]["sources"]]
    assert len(sources) == 2 and not any("WizardCoder" in s for s in sources)
    assert "WizardCoder" in (ROOT / "assets/mistral-7b/recipe.yaml").read_text()


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["docs"]["path"] = str(QUICKSTART.parent / "docs")
    raw["evaluation"]["questions"] = str(QUICKSTART.parent / "mcq.csv")
    raw["dpo"]["dataset"] = str(QUICKSTART.parent / "preference_pairs.jsonl")
    mutate(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, lambda r: r["chunking"].update(chunk_sise=300))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and "chunking.chunk_sise" in str(err.value)
    assert "unknown key" in str(err.value)


def test_unknown_trl_field_is_rejected(tmp_path):
    path = _write(tmp_path, lambda r: r["sft"]["args"].update(learning_rat=1e-3))
    with pytest.raises(RecipeError, match="learning_rat"):
        load_recipe(path)


def test_wrong_type_and_bad_overlap(tmp_path):
    path = _write(tmp_path, lambda r: r["chunking"].update(chunk_size="big"))
    with pytest.raises(RecipeError, match="chunking.chunk_size"):
        load_recipe(path)
    path = _write(tmp_path, lambda r: r["chunking"].update(chunk_overlap=400))
    with pytest.raises(RecipeError, match="chunk_overlap"):
        load_recipe(path)


def test_missing_referenced_file_names_the_key(tmp_path):
    path = _write(tmp_path, lambda r: r["evaluation"].update(questions="nope.csv"))
    with pytest.raises(RecipeError, match="evaluation.questions"):
        load_recipe(path)


def test_invalid_merge_config_is_rejected(tmp_path):
    path = _write(tmp_path, lambda r: r["merge"].pop("merge_method"))
    with pytest.raises(RecipeError, match="merge"):
        load_recipe(path)


def test_openai_generator_needs_a_model(tmp_path):
    path = _write(tmp_path, lambda r: r["qa"].update(generator="openai"))
    with pytest.raises(RecipeError, match="qa.model"):
        load_recipe(path)


def test_profile_unknown_key(tmp_path):
    p = tmp_path / "resources" / "x.yaml"
    p.parent.mkdir()
    p.write_text("name: x\ncompute:\n  devise: cpu\n")
    with pytest.raises(ProfileError, match="compute.devise"):
        load_profile(p)


def test_code_version_changes_only_with_its_section(tmp_path):
    base = load_recipe(_write(tmp_path, lambda r: None))
    lora = load_recipe(_write(tmp_path, lambda r: r["lora"].update(r=16)))
    assert base.section_version("lora", "sft") != lora.section_version("lora", "sft")
    assert base.section_version("merge") == lora.section_version("merge")
    assert base.section_version("qa") == lora.section_version("qa")
