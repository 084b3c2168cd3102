"""Merging: the config-only preflight, multi-stage chains with cached intermediates, and the
recipe's merge options. Tiny models only; nothing here touches a hub."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.config.merge import STAGES_DIR
from ragft_dagster.config.recipe import RecipeError, load_recipe
from ragft_dagster.models.merge_preflight import MergeCompatibilityError, preflight_merge
from ragft_dagster.models.merging import merge_models

from ..conftest import write_recipe

# config.json of the two models the published work tried to merge (as on the hub).
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}
WIZARDCODER_PYTHON_7B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "max_position_embeddings": 16384,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "torch_dtype": "float16",
    "vocab_size": 32001,
}


def _config_only(path: Path, config: dict) -> Path:
    """A model folder with a config.json and no weights at all."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _slerp(a: str, b: str, layers: tuple[int, int] = (0, 2), t: float = 0.5) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": a,
        "slices": [
            {
                "sources": [
                    {"model": a, "layer_range": list(layers)},
                    {"model": b, "layer_range": list(layers)},
                ]
            }
        ],
        "parameters": {"t": t},
        "dtype": "float32",
    }


def _linear(*weighted: tuple[str, float]) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": w}} for m, w in weighted],
        "dtype": "float32",
    }


def _chain(second_weight: float = 0.5, first_t: float = 0.5) -> dict:
    return {
        "stages": [
            {"name": "first", "config": _slerp("tiny:base", "tiny:math", t=first_t)},
            {
                "name": "second",
                "config": _linear(("stage:first", second_weight), ("tiny:code", 0.5)),
            },
        ]
    }


@pytest.fixture
def root(tmp_path, tiny_cache, tiny_base) -> Path:
    """A fresh artifact root sharing the session's tiny models (no rebuild per test)."""
    r = tmp_path / "artifacts"
    r.mkdir()
    (r / "tiny").symlink_to(tiny_cache / "tiny", target_is_directory=True)
    return r


@pytest.fixture
def tiny_llama(tmp_path, tiny_base) -> Path:
    """A tiny Llama config (same widths as tiny:base, other vocabulary and rope_theta), no
    weights: a merge that reached mergekit would fail on the missing files, not in preflight."""
    from transformers import LlamaConfig

    base = json.loads((tiny_base / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=base["vocab_size"] + 1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=1e6,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    path = tmp_path / "tiny-llama"
    cfg.save_pretrained(path)
    assert [p.name for p in path.iterdir()] == ["config.json"]
    return path


@pytest.fixture
def merges(monkeypatch) -> list[str]:
    """Counts mergekit runs (the output folder of each); any run after a failed preflight fails."""
    import mergekit.merge

    calls: list[str] = []
    real = mergekit.merge.run_merge

    def counting(config, out_path, options, **kw):
        calls.append(out_path)
        return real(config, out_path=out_path, options=options, **kw)

    monkeypatch.setattr(mergekit.merge, "run_merge", counting)
    return calls


def _merge(config, out: Path, root: Path, **kw) -> dict:
    out.mkdir(parents=True)
    return merge_models(config, out, artifact_root=root, base_dir=out.parent, **kw)


def test_incompatible_source_fails_in_preflight_before_any_weight(
    tmp_path, root, tiny_llama, merges
):
    out = tmp_path / "out"
    with pytest.raises(MergeCompatibilityError) as err:
        _merge(_slerp("tiny:base", str(tiny_llama)), out, root, recipe_path=Path("r.yaml"))
    msg = str(err.value)
    assert msg.startswith("r.yaml: ") and "no weights were loaded" in msg
    assert f"{str(tiny_llama)!r} cannot be merged with 'tiny:base'" in msg
    for line in (
        "model_type: 'llama' vs 'mistral'",
        "architectures: ['LlamaForCausalLM'] vs ['MistralForCausalLM']",
        "rope_parameters.rope_theta: 1000000.0 vs 10000.0",
    ):
        assert line in msg
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    assert f"vocab_size: {vocab} vs {vocab - 1}" in msg
    assert "hidden_size" not in msg  # only what differs
    assert "What to do:" in msg
    assert merges == [] and list(out.iterdir()) == []


def test_published_three_way_merge_is_rejected_naming_every_mismatch(tmp_path, root):
    mistral = _config_only(tmp_path / "Mistral-7B-v0.1", MISTRAL_7B)
    wizard = _config_only(tmp_path / "WizardCoder-Python-7B-V1.0", WIZARDCODER_PYTHON_7B)
    with pytest.raises(MergeCompatibilityError) as err:
        preflight_merge(_slerp(str(mistral), str(wizard), layers=(0, 32)), root, tmp_path)
    msg = str(err.value)
    assert "WizardCoder-Python-7B-V1.0" in msg and "Mistral-7B-v0.1" in msg
    for line in (
        "model_type: 'llama' vs 'mistral'",
        "intermediate_size: 11008 vs 14336",
        "num_key_value_heads: 32 vs 8",
        "vocab_size: 32001 vs 32000",
        "rope_parameters.rope_theta: 1000000 vs 10000.0",
    ):
        assert line in msg
    assert "not a fine-tune of the same base model" in msg


def test_rope_settings_compare_across_config_generations():
    from types import SimpleNamespace

    from transformers import MistralConfig

    from ragft_dagster.models.merge_preflight import config_facts

    # A remote-code config of the transformers 4 kind: rope_theta and rope_scaling attributes.
    legacy = SimpleNamespace(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
    current = MistralConfig(rope_parameters={"rope_type": "linear", "factor": 2.0})
    rope = {k: v for k, v in config_facts(legacy).items() if k.startswith("rope")}
    assert rope == {k: v for k, v in config_facts(current).items() if k.startswith("rope")}
    assert rope == {
        "rope_parameters.factor": 2.0,
        "rope_parameters.rope_theta": 10000.0,
        "rope_parameters.rope_type": "linear",
    }


def test_vocabulary_only_difference_suggests_tokenizer_source(tmp_path, root):
    bigger = _config_only(tmp_path / "bigger", {**MISTRAL_7B, "vocab_size": 32002})
    mistral = _config_only(tmp_path / "mistral", MISTRAL_7B)
    config = _slerp(str(mistral), str(bigger), layers=(0, 32))
    with pytest.raises(MergeCompatibilityError, match="tokenizer_source"):
        preflight_merge(config, root, tmp_path)
    facts = preflight_merge({**config, "tokenizer_source": "base"}, root, tmp_path)
    assert facts["models"][str(bigger)]["vocab_size"] == 32002


def test_a_stage_that_keeps_the_base_tokenizer_passes_its_vocabulary_on(tmp_path, root):
    bigger = _config_only(tmp_path / "bigger", {**MISTRAL_7B, "vocab_size": 32002})
    mistral = _config_only(tmp_path / "mistral", MISTRAL_7B)
    first = {**_slerp(str(mistral), str(bigger), layers=(0, 32)), "tokenizer_source": "base"}
    second = _slerp("stage:first", str(bigger), layers=(0, 32))
    chain = {"stages": [{"name": "first", "config": first}, {"name": "second", "config": second}]}
    # Stage 1 keeps Mistral's 32000 tokens, so stage 2 (no tokenizer_source) cannot merge a
    # 32002-token model with it: caught before anything runs.
    with pytest.raises(MergeCompatibilityError, match="vocab_size: 32002 vs 32000"):
        preflight_merge(chain, root, tmp_path)


def test_layer_range_beyond_the_model_fails_in_preflight(tmp_path, root, merges):
    with pytest.raises(MergeCompatibilityError) as err:
        _merge(_slerp("tiny:base", "tiny:math", layers=(0, 4)), tmp_path / "out", root)
    msg = str(err.value)
    assert "slices[0].sources[0].layer_range [0, 4]" in msg
    assert "'tiny:base', which has num_hidden_layers = 2" in msg
    assert "within [0, 2]" in msg and merges == []


def test_later_stage_is_checked_against_the_earlier_output_before_any_merge(tmp_path, root, merges):
    # A passthrough of 2 + 2 layers makes a 4-layer model: a whole-model merge with a 2-layer
    # one cannot work, and preflight knows it without running the first stage.
    stack = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": "tiny:base", "layer_range": [0, 2]}]},
            {"sources": [{"model": "tiny:math", "layer_range": [0, 2]}]},
        ],
        "dtype": "float32",
    }
    chain = {
        "stages": [
            {"name": "stack", "config": stack},
            {"name": "blend", "config": _linear(("stage:stack", 0.5), ("tiny:code", 0.5))},
        ]
    }
    with pytest.raises(MergeCompatibilityError) as err:
        _merge(chain, tmp_path / "out", root)
    msg = str(err.value)
    assert "key 'merge.stages[1].config' (stage 'blend')" in msg
    assert "'tiny:code' cannot be merged with 'stage:stack'" in msg
    assert "expected output of stage 'stack'" in msg
    assert "num_hidden_layers: 2 vs 4" in msg
    assert merges == [] and not (root / STAGES_DIR).exists()

    top = {"name": "top", "config": _slerp("stage:stack", "tiny:code")}
    ok = preflight_merge({"stages": [chain["stages"][0], top]}, root, tmp_path)
    assert [s["num_hidden_layers"] for s in ok["stages"]] == [4, 2]
    assert ok["models"]["stage:stack"]["num_hidden_layers"] == 4


def _stage_dirs(root: Path) -> list[Path]:
    return sorted((root / STAGES_DIR).iterdir())


def test_two_stage_chain_merges_caches_and_reuses(tmp_path, root, merges):
    from transformers import AutoModelForCausalLM

    first = _merge(_chain(), tmp_path / "run1", root)
    assert [(s["name"], s["status"]) for s in first["stages"]] == [
        ("first", "merged"),
        ("second", "merged"),
    ]
    assert first["sources"] == ["tiny:base", "tiny:math", "tiny:code"]
    assert first["merge_method"] == "linear" and first["architecture"] == "MistralForCausalLM"
    (cached,) = _stage_dirs(root)
    assert cached.name == f"first-{first['stages'][0]['key']}"
    assert (cached / "config.json").is_file() and (cached / "ragft_stage.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run1")
    assert model.config.num_hidden_layers == 2
    assert (tmp_path / "run1" / "ragft_merge_recipe.yml").is_file()
    assert len(merges) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in cached.rglob("*")}

    # Same chain: the intermediate is reused as it is, only the last stage runs.
    again = _merge(_chain(), tmp_path / "run2", root)
    assert [s["status"] for s in again["stages"]] == ["reused", "merged"]
    assert again["preflight"]["stages"][0]["cached"] is True
    assert len(merges) == 3 and merges[-1] == str(tmp_path / "run2")
    assert {p: p.stat().st_mtime_ns for p in cached.rglob("*")} == mtimes

    # A new stage-2 config still reuses stage 1, and gives other weights.
    changed = _merge(_chain(second_weight=0.9), tmp_path / "run3", root)
    assert [s["status"] for s in changed["stages"]] == ["reused", "merged"]
    assert changed["stages"][0]["key"] == first["stages"][0]["key"]
    assert changed["stages"][1]["key"] != first["stages"][1]["key"]
    assert _stage_dirs(root) == [cached]
    import torch

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "run2").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "run3").state_dict()
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])

    # A new stage-1 config re-merges both and replaces the stale intermediate.
    moved = _merge(_chain(first_t=0.3), tmp_path / "run4", root)
    assert [s["status"] for s in moved["stages"]] == ["merged", "merged"]
    assert moved["pruned"] == [cached.name]
    assert [p.name for p in _stage_dirs(root)] == [f"first-{moved['stages'][0]['key']}"]


def test_single_config_merge_is_unchanged(tmp_path, root, merges):
    info = _merge(_slerp("tiny:base", "tiny:math"), tmp_path / "out", root)
    assert info["sources"] == ["tiny:base", "tiny:math"] and info["merge_method"] == "slerp"
    assert [(s["name"], s["status"]) for s in info["stages"]] == [("merge", "merged")]
    assert merges == [str(tmp_path / "out")]
    assert not (root / STAGES_DIR).exists()
    assert (tmp_path / "out" / "mergekit_config.yml").is_file()


def test_gpu_only_options_are_dropped_on_cpu(tmp_path, root):
    info = _merge(
        _slerp("tiny:base", "tiny:math"),
        tmp_path / "out",
        root,
        options={"read_to_gpu": True, "lazy_unpickle": False, "out_shard_size": "100K"},
    )
    assert info["ignored_options"] == ["read_to_gpu"]
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 1  # ~0.6M parameters, 100K per shard


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        (
            [{"name": "b", "config": _linear(("stage:a", 0.5), ("tiny:code", 0.5))}],
            r"merge\.stages\[0\]\.config\.models\[0\]\.model: 'stage:a' is not an earlier stage",
        ),
        (
            [
                {"name": "a", "config": _slerp("tiny:base", "tiny:math")},
                {"name": "a", "config": _slerp("stage:a", "tiny:code")},
            ],
            "defined twice",
        ),
        (
            [
                {"name": "a", "config": _slerp("tiny:base", "tiny:math")},
                {"name": "b", "config": _slerp("tiny:base", "tiny:code")},
            ],
            r"\['a'\] are merged but no later stage uses them",
        ),
        ([{"name": "A b", "config": _slerp("tiny:base", "tiny:math")}], r"stages\[0\]\.name"),
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
    path = write_recipe(tmp_path, lambda raw: raw.update(merge=_slerp("stage:x", "tiny:math")))
    with pytest.raises(RecipeError, match="names a stage, but merge is a single"):
        load_recipe(path)


def test_stage_chain_recipe_validates(tmp_path):
    """A valid chain loads; its stages, where each sits in the recipe, and the source models
    (an earlier stage's output is not a source) come out of it."""
    from ragft_dagster.config.merge import merge_stages, source_models

    recipe = load_recipe(write_recipe(tmp_path, lambda raw: raw.update(merge=_chain())))
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
        tmp_path, lambda raw: raw.update(merge=_slerp("tiny:base", str(tiny_llama)))
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
        lambda raw: raw.update(merge=_chain(), merge_options={"lazy_unpickle": False}),
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


def test_a_mergekit_multi_file_is_a_merge_chain(tmp_path):
    """merge may name a mergekit-multi file (what `mergekit-multi` reads): named documents are
    stages in dependency order, the unnamed one is the final merge, and a bare merge name used
    as a model becomes a stage reference."""
    from ragft_dagster.config.merge import merge_stages

    multi = tmp_path / "merges.yml"
    final = _linear(("first", 0.5), ("tiny:code", 0.5))
    first = {"name": "first", **_slerp("tiny:base", "tiny:math")}
    multi.write_text(yaml.safe_dump_all([final, first]))  # any order: the final one first here
    recipe = load_recipe(write_recipe(tmp_path, lambda raw: raw.update(merge="merges.yml")))
    stages = merge_stages(recipe.merge)
    assert [s.name for s in stages] == ["first", "merge"]
    assert "stage:first" in json.dumps(stages[1].config)
    multi.write_text(yaml.safe_dump_all([first, {"name": "first", **final}]))
    with pytest.raises(RecipeError, match=r"merges.yml: merge name 'first' twice"):
        load_recipe(write_recipe(tmp_path, lambda raw: raw.update(merge="merges.yml")))


def test_a_merge_logs_no_upstream_deprecation(tmp_path, root):
    """mergekit sets the output dtype through transformers' deprecated ``torch_dtype`` alias;
    the merge's log stays free of it (issue 27: no upstream deprecations in make run)."""
    import logging

    import transformers.utils.logging as hf_logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("transformers.configuration_utils")
    keep = Keep()
    logger.addHandler(keep)
    hf_logging.warning_once.cache_clear()  # said once a process: an earlier test may have
    try:
        _merge(_slerp("tiny:base", "tiny:math"), tmp_path / "out", root)
        hf_logging.warning_once.cache_clear()
        logger.warning_once("`torch_dtype` is deprecated! Use `dtype` instead!")  # outside it
    finally:
        logger.removeHandler(keep)
    assert records == ["`torch_dtype` is deprecated! Use `dtype` instead!"]
