import pytest

from ragft_dagster.config.profile import ProfileError, load_profile
from ragft_dagster.config.recipe import RecipeError, load_recipe

from ..conftest import ROOT, write_recipe

RECIPES = sorted((ROOT / "assets").glob("*/recipe.yaml"))
PROFILES = sorted((ROOT / "resources").glob("*.yaml"))


def test_shipped_recipes_exist():
    names = {p.parent.name for p in RECIPES}
    assert {"quickstart", "tiny", "mistral-7b"} <= names


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
    assert r.evaluation.all_models == ["base", "merged", "dpo", "sft", "gpt-3.5-turbo", "gpt-4"]
    assert (r.lora.r, r.lora.lora_alpha, r.sft.args["num_train_epochs"]) == (256, 512, 3)
    assert (r.chunking.chunk_size, r.chunking.chunk_overlap) == (300, 30)
    assert r.qa.generator == "openai" and r.qa.model == "gpt-4"
    assert r.dpo.dataset == "Intel/orca_dpo_pairs"
    assert r.retrieval.embedding_model == "BAAI/bge-base-en-v1.5"
    sources = [s["model"] for s in r.merge["slices"][0]["sources"]]
    assert len(sources) == 2 and not any("WizardCoder" in s for s in sources)


def test_unknown_key_names_file_and_key(tmp_path):
    path = write_recipe(tmp_path, lambda r: r["chunking"].update(chunk_sise=300))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and "chunking.chunk_sise" in str(err.value)
    assert "unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r["sft"]["args"].update(learning_rat=1e-3), "learning_rat"),
        (lambda r: r["chunking"].update(chunk_size="big"), "chunking.chunk_size"),
        (lambda r: r["sft"]["args"].update(learning_rate="fast"), r"sft.args.*learning_rate"),
        (lambda r: r["dpo"]["args"].update(beta="strong"), r"dpo.args.*beta"),
        (lambda r: r["lora"].update(r="wide"), r"lora.*\br: 'wide' is not int"),
        (lambda r: r["chunking"].update(chunk_overlap=400), "chunk_overlap"),
        (lambda r: r["evaluation"].update(questions="nope.csv"), "evaluation.questions"),
        (lambda r: r["merge"].pop("merge_method"), "merge"),
        (lambda r: r["qa"].update(generator="openai"), "qa.model"),
        (lambda r: r["evaluation"].update(api={"models": ["gpt|4"]}), "evaluation.api.models"),
        (lambda r: r["evaluation"].update(api={"models": ["sft"]}), "evaluation.api.models"),
        (lambda r: r["evaluation"].update(sampling={"rounds": 3, "temperature": 0}), "sampling"),
    ],
    ids=[
        "trl-field",
        "wrong-type",
        "trl-type",
        "dpo-type",
        "peft-type",
        "overlap",
        "missing-file",
        "merge-config",
        "qa-model",
        "api-model-name",
        "api-model-clash",
        "sampling-temperature",
    ],
)
def test_bad_recipe_is_rejected_naming_the_key(tmp_path, mutate, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write_recipe(tmp_path, mutate))


def test_profile_unknown_key(tmp_path):
    p = tmp_path / "resources" / "x.yaml"
    p.parent.mkdir()
    p.write_text("name: x\ncompute:\n  devise: cpu\n")
    with pytest.raises(ProfileError, match="compute.devise"):
        load_profile(p)


def test_code_version_changes_only_with_its_section(tmp_path):
    base = load_recipe(write_recipe(tmp_path, lambda r: None))
    lora = load_recipe(write_recipe(tmp_path, lambda r: r["lora"].update(r=16)))
    assert base.section_version("lora", "sft") != lora.section_version("lora", "sft")
    assert base.section_version("merge") == lora.section_version("merge")
    assert base.section_version("qa") == lora.section_version("qa")


def test_upstream_schema_checks_are_remembered_per_version(tmp_path, monkeypatch):
    import pydantic

    from ragft_dagster.config.upstream import dataclass_fields, validate_merge_config

    monkeypatch.setenv("RAGFT_SCHEMA_CACHE", str(tmp_path))
    assert {"beta", "learning_rate"} <= dataclass_fields("trl.DPOConfig")
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert dataclass_fields("trl.DPOConfig") == dataclass_fields("trl.DPOConfig")
    with pytest.raises(ValueError, match="models"):
        validate_merge_config({"merge_method": "slerp"})  # no models, slices or modules
    with pytest.raises(pydantic.ValidationError):
        validate_merge_config({"merge_method": "slerp", "models": "not a list"})
    assert len(list(tmp_path.glob("*.json"))) == 1  # an invalid config is never remembered


def test_adding_a_model_leaves_existing_score_cells_current(tmp_path):
    base = load_recipe(write_recipe(tmp_path, lambda r: None))
    more = load_recipe(
        write_recipe(tmp_path, lambda r: r["evaluation"].update(api={"models": ["gpt-4"]}))
    )
    prompt = load_recipe(
        write_recipe(tmp_path, lambda r: r["evaluation"].update(system_prompt="Answer."))
    )
    assert base.section_version("evaluation") == more.section_version("evaluation")
    assert base.section_version("evaluation") != prompt.section_version("evaluation")


def test_training_values_take_upstream_types_and_defaults(tmp_path):
    """YAML reads 5e-5 as a string: trl's annotation makes it the float it means. LoRA fields
    the recipe leaves out stay out (peft's own defaults apply)."""

    def edit(raw):
        raw["sft"]["args"]["learning_rate"] = "5e-5"
        raw["lora"] = {"r": 4}

    recipe = load_recipe(write_recipe(tmp_path, edit))
    assert recipe.sft.args["learning_rate"] == 5e-5
    assert recipe.lora.model_dump() == {"r": 4}


def test_the_schema_imports_no_execution_code_and_the_product_no_benchmark():
    """config/ is data: importing the recipe schema loads no torch, transformers, Dagster or
    execution module (only the prompt texts, which import nothing); the product (definitions,
    CLI) never imports ragft_dagster.benchmarks."""
    import subprocess
    import sys

    code = (
        "import sys, ragft_dagster.config.recipe\n"
        "ours = {m for m in sys.modules if m.startswith('ragft_dagster.')}\n"
        "heavy = {'torch', 'transformers', 'dagster', 'trl'} & set(sys.modules)\n"
        "assert ours <= {'ragft_dagster.config', 'ragft_dagster.config.merge',\n"
        "    'ragft_dagster.config.recipe', 'ragft_dagster.config.upstream',\n"
        "    'ragft_dagster.prompts'}, ours\n"
        "assert not heavy, heavy\n"
        "import ragft_dagster.cli, ragft_dagster.definitions\n"
        "ragft_dagster.definitions.defs()\n"
        "assert not [m for m in sys.modules if m.startswith('ragft_dagster.benchmarks')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("glob", "says"),
    [
        ("", "is empty"),
        ("/srv/docs/**/*.md", "absolute path"),
        ("../**/*.md", "leaves docs.path"),
    ],
)
def test_a_docs_glob_that_cannot_run_is_refused_at_load_naming_the_key(tmp_path, glob, says):
    """Issue 26: these globs loaded, then ended `ragft run` in a pathlib traceback."""
    path = write_recipe(tmp_path, lambda raw: raw["docs"].update(glob=glob))
    with pytest.raises(RecipeError, match=rf"key 'docs.glob': .*{says}"):
        load_recipe(path)


def test_an_artifact_root_under_a_file_is_refused_at_load(tmp_path):
    """Issue 26: a root that could never be created ended in a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("x")
    text = (ROOT / "resources" / "local.yaml").read_text()
    for root in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        profile = tmp_path / "resources" / "p.yaml"
        profile.parent.mkdir(exist_ok=True)
        profile.write_text(text.replace("root: .artifacts", f"root: {root}", 1))
        with pytest.raises(ProfileError, match=r"key 'artifacts.root': .* is a file, not a folder"):
            load_profile(profile)
    profile.write_text(text.replace("root: .artifacts", f"root: {tmp_path / 'new' / 'art'}", 1))
    assert load_profile(profile).artifact_root == tmp_path / "new" / "art"  # made when needed


def test_api_model_names_servers_report_are_accepted_and_kept_apart_on_disk(tmp_path):
    """Issue 28: vLLM serves "/models/mistral" by default, Ollama "llama3.1:8b", `transformers
    serve` the path it was given; each is a partition key as it is, and a flat file name."""
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.config.recipe import ApiScoringRecipe

    names = ["/models/mistral", "llama3.1:8b", "./SmolLM2", "meta-llama/Llama-3.1-8B", "gpt-4"]
    assert ApiScoringRecipe(models=names).models == names
    layout = ArtifactLayout(tmp_path)
    paths = {layout.scores(n, "rag") for n in names}
    assert len(paths) == len(names) and all(p.parent == tmp_path / "scores" for p in paths)
    for bad in ("a|b", "two words", "x...y", "[x]"):
        with pytest.raises(ValueError, match=r"without whitespace, '\|', ',', '\[', '\]' or"):
            ApiScoringRecipe(models=[bad])
    with pytest.raises(ValueError, match="'sft' is a local model of this recipe"):
        ApiScoringRecipe(models=["sft"])
