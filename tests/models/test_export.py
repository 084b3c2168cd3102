"""The optional export: the LoRA adapter merged into the DPO model as one servable checkpoint."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.config.profile import load_profile
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.definitions import definitions_for
from ragft_dagster.models.export import make_portable, model_card, portable_chat_template

from ..conftest import LOCAL_PROFILE, ROOT, TINY_RECIPE, write_recipe

SEVEN_B = ROOT / "assets" / "mistral-7b" / "recipe.yaml"
CONVERSATION = [
    {"role": "system", "content": "Answer from the docs."},
    {"role": "user", "content": "How do I install it?"},
    {"role": "assistant", "content": "Run make install."},
]


def _export_recipe(tmp_path: Path, **export):
    settings = {"enabled": True, "dtype": "float32", "max_shard_size": "200KB", **export}
    return load_recipe(write_recipe(tmp_path, lambda raw: raw.update(export=settings)))


@pytest.fixture
def root(tmp_path, tiny_base) -> Path:
    """An artifact root whose dpo_model is the tiny base model."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_base, ArtifactLayout(root).dpo_model)
    return root


@pytest.fixture
def adapter(root) -> Path:
    """A LoRA adapter on the dpo_model with non-zero B matrices (zero-init B would make the
    merge a no-op that no test could tell from a missing merge)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = ArtifactLayout(root)
    base = AutoModelForCausalLM.from_pretrained(layout.dpo_model, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(layout.lora_adapter)
    AutoTokenizer.from_pretrained(layout.dpo_model).save_pretrained(layout.lora_adapter)
    return layout.lora_adapter


def _materialize(recipe, root: Path) -> dg.ExecuteInProcessResult:
    from ragft_dagster.assets import export
    from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

    return dg.materialize(
        export.build(recipe),
        resources={
            "artifacts": ArtifactStoreResource(root=str(root)),
            "compute": ComputeResource(device="cpu"),
        },
        raise_on_error=False,
    )


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def test_exported_model_serves_the_adapter_without_peft(tmp_path, root, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = ArtifactLayout(root)
    layout.report.mkdir(parents=True)
    rows = [
        {"model": m, "context": "rag", "n": 36, "accuracy": a, "ci_low": 0.1, "ci_high": 0.6}
        for m, a in (("dpo", 0.25), ("sft", 0.5))
    ]
    (layout.report / "summary.json").write_text(json.dumps(rows))
    recipe = _export_recipe(tmp_path, tags=["docs-qa"])
    result = _materialize(recipe, root)
    assert result.success
    out = layout.exported_model

    # A plain, sharded transformers checkpoint: no adapter, no half-written leftovers.
    names = {p.name for p in out.iterdir()}
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and "model.safetensors.index.json" in names
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    assert {p.name for p in out.parent.iterdir()} == {"dpo", "lora_adapter", "exported"}

    # What vLLM reads: the architecture, the dtype, the generation defaults, the chat template
    # (inline too, for servers that read only tokenizer_config.json).
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"]
    assert config["dtype"] == config["torch_dtype"] == "float32"
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["use_cache"] is True
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    template = (out / "chat_template.jinja").read_text()
    assert tok_config["chat_template"] == template
    assert "generation %}" not in template
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    exported_tok = AutoTokenizer.from_pretrained(out)
    for messages, prompt in ((CONVERSATION, False), (CONVERSATION[:2], True)):
        assert exported_tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt
        ) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    # The exported weights are the adapter merged in: same logits as base + adapter through
    # peft, different from the base alone.
    ids = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(layout.dpo_model, dtype=torch.float32)
    base_logits = _logits(base, ids)
    with_adapter = PeftModel.from_pretrained(base, adapter)
    expected = _logits(with_adapter, ids)
    got = _logits(exported, ids)
    assert torch.allclose(got, expected, atol=1e-4)
    assert (got - base_logits).abs().max() > 1e-2

    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "transformers" and front["license"] == "unknown"
    assert {"ragft", "lora", "dpo", "docs-qa"} <= set(front["tags"])
    assert "base_model" not in front  # tiny: references name no hub repository
    assert f"vllm serve {out} --served-model-name ragft-tiny" in card
    assert "r=8, alpha=16" in card and "slerp of tiny:base, tiny:math" in card
    assert "| **sft** | rag | 36 | 50.0% | 10.0% – 60.0% |" in card

    meta = result.asset_materializations_for_node("exported_model")[0].metadata
    assert meta["path"].value == str(out)
    assert meta["parameters"].value == sum(p.numel() for p in exported.parameters())
    assert meta["size_mb"].value > 0 and meta["shards"].value == len(shards)
    assert meta["dtype"].value == "float32" and meta["served_model_name"].value == ("ragft-tiny")
    assert "vllm serve" in meta["serve"].value


def test_exported_model_fails_naming_a_missing_lora_adapter(tmp_path, root):
    result = _materialize(_export_recipe(tmp_path), root)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "lora_adapter is not materialized" in message
    assert "materialize lora_adapter" in message
    assert not ArtifactLayout(root).exported_model.exists()


def test_the_export_is_in_the_graph_only_when_the_recipe_enables_it(tmp_path):
    profile = load_profile(LOCAL_PROFILE)
    quickstart = definitions_for(load_recipe(TINY_RECIPE), profile, tmp_path)
    keys = {k.to_user_string() for k in quickstart.resolve_asset_graph().get_all_asset_keys()}
    assert "exported_model" not in keys
    with pytest.raises(dg.DagsterInvariantViolationError, match="export_job"):
        quickstart.resolve_job_def("export_job")

    seven_b = definitions_for(load_recipe(SEVEN_B), profile, tmp_path)
    graph = seven_b.resolve_asset_graph()
    node = graph.get(dg.AssetKey("exported_model"))
    assert {p.to_user_string() for p in node.parent_keys} == {
        "dpo_model",
        "lora_adapter",
        "mcq_report",
    }
    assert node.pools == {"gpu"} and node.group_name == "export"
    assert node.automation_condition is None  # exporting is asked for, not automatic
    assert seven_b.resolve_job_def("export_job")


def test_export_code_version_follows_its_section_only(tmp_path):
    def versions(name: str, **export) -> dict[str, str]:
        (tmp_path / name).mkdir()
        recipe = _export_recipe(tmp_path / name, **export)
        graph = definitions_for(recipe, load_profile(LOCAL_PROFILE), tmp_path).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}

    before, after = versions("a"), versions("b", dtype="bfloat16")
    assert {k for k in before if before[k] != after[k]} == {"exported_model"}
    plain = load_recipe(write_recipe(tmp_path))
    enabled = _export_recipe(tmp_path / "a")
    assert plain.section_version("merge") == enabled.section_version("merge")


@pytest.mark.parametrize(
    ("export", "key"),
    [
        ({"dtype": "fp8"}, "export.dtype"),
        ({"max_shard_size": "5 gigs"}, "export.max_shard_size"),
        ({"served_model_name": "my model"}, "export.served_model_name"),
        ({"enable": True}, "export.enable"),
    ],
)
def test_bad_export_section_names_the_key(tmp_path, export, key):
    from ragft_dagster.config.recipe import RecipeError

    path = write_recipe(tmp_path, lambda raw: raw.update(export=export))
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(path)


def test_model_card_of_the_7b_recipe_names_its_hub_lineage(tmp_path):
    recipe = load_recipe(SEVEN_B)
    info = {"dtype": "bfloat16", "parameters": 7_241_732_096, "shards": 3}
    out = tmp_path / "models" / "exported"
    card = model_card(recipe, ArtifactLayout(tmp_path), out, info)
    front = _front_matter(card)
    assert front["base_model"] == ["mistralai/Mistral-7B-v0.1", "meta-math/MetaMath-Mistral-7B"]
    assert front["license"] == "unknown" and front["pipeline_tag"] == "text-generation"
    assert "# ragft-mistral-7b" in card
    assert "`Intel/orca_dpo_pairs` (split train)" in card and "beta 0.1" in card
    assert "r=256, alpha=512" in card and "7,241,732,096 parameters" in card
    assert "No benchmark report existed" in card
    assert f"vllm serve {out} --served-model-name ragft-mistral-7b --dtype bfloat16" in card
    assert "`evaluation.api.models`" in card


def test_portable_chat_template_keeps_what_the_template_renders(tiny_tokenizer):
    trim = (
        "{% for m in messages %}{{ m['role'] }}:\n"
        "{%- if m['role'] == 'assistant' %}\n  {%- generation -%}\n  {{ m['content'] }}"
        "{%- endgeneration %}{% else %} {{ m['content'] }}{% endif %}\n{% endfor %}"
    )
    for template in (tiny_tokenizer.chat_template, trim):
        portable = portable_chat_template(template, tiny_tokenizer)
        assert "generation" not in portable.replace("add_generation_prompt", "")
        for prompt in (False, True):
            assert tiny_tokenizer.apply_chat_template(
                CONVERSATION, chat_template=portable, tokenize=False, add_generation_prompt=prompt
            ) == tiny_tokenizer.apply_chat_template(
                CONVERSATION, chat_template=template, tokenize=False, add_generation_prompt=prompt
            )


def test_portable_config_loads_the_same_in_transformers_5(tmp_path):
    from transformers import AutoConfig, LlamaConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=131072,
        rope_parameters=rope,
        dtype="bfloat16",
    )
    config.save_pretrained(tmp_path)
    before = AutoConfig.from_pretrained(tmp_path).to_dict()
    make_portable(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    # What a server on transformers 4 reads instead of rope_parameters and dtype.
    assert raw["rope_theta"] == 500000.0 and raw["torch_dtype"] == "bfloat16"
    assert raw["rope_scaling"] == {k: v for k, v in rope.items() if k != "rope_theta"}
    assert AutoConfig.from_pretrained(tmp_path).to_dict() == before
