"""Tiny, deterministic Mistral-architecture models for offline runs and tests.

A ``tiny:<name>`` model reference resolves to a random-init MistralForCausalLM (seeded from the
name) sharing one locally trained byte-level BPE tokenizer. They exercise the plumbing of every
stage (merge, DPO, SFT, scoring) in seconds on a CPU; they are not useful models.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ragft_dagster.artifacts import atomic_dir

# Bump when the architecture, tokenizer corpus or template below changes: cached models rebuild.
TINY_SPEC_VERSION = "1"

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

# Assistant turns sit inside {% generation %} so trl's assistant_only_loss can mask the rest.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}</s>\n"
    "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}</s>\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ message['content'] }}</s>{% endgeneration %}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A fixed, docs-independent training text, so the tokenizer never changes when the docs do.
_CORPUS = """
The model reads a question and answers with one letter. A merge combines the weights of two
models; preference tuning teaches a model which of two answers people prefer. Documents are split
into chunks of tokens with an overlap, and each chunk becomes questions and answers for training.
An index stores embeddings of every chunk so that retrieval can find the context for a question.
Accuracy is the share of questions answered correctly, with a confidence interval around it.
Install the package, run the pipeline, open the user interface, and read the report. Use the
command line to materialize assets, schedule runs every night, and backfill partitions when the
documentation changes. Configuration lives in a recipe file written in YAML with sections for
models, data, training, retrieval and evaluation. The system prompt says: only respond with
one letter (A, B, C or D). What is the default value? Which option is correct? How many tokens?
def main(): return 0  # python code, numbers 0 1 2 3 4 5 6 7 8 9 10 100 300 1024 2048
"""


def tiny_seed(name: str) -> int:
    """The deterministic init seed of ``tiny:<name>``."""
    return int.from_bytes(hashlib.sha256(f"tiny:{name}".encode()).digest()[:4], "big")


def build_tiny_tokenizer(out_dir: Path):
    """Train the shared byte-level BPE tokenizer and save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(name: str, cache_root: Path) -> Path:
    """Return the directory of ``tiny:<name>``, building it once under ``cache_root``.

    Args:
        name: The part after ``tiny:``; it seeds the weights.
        cache_root: Directory holding cached tiny models (``<artifact root>/tiny``).

    Returns:
        A directory loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid tiny model name {name!r}: use letters, digits, '-' or '_'")
    final = Path(cache_root) / name
    marker = final / "ragft_tiny.json"
    spec = {"name": name, "version": TINY_SPEC_VERSION, "seed": tiny_seed(name)}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return final

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    with atomic_dir(final) as tmp:
        tokenizer = build_tiny_tokenizer(tmp)
        config = MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            # Untied, so mergekit sees an lm_head tensor to merge.
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(spec["seed"])
        model = MistralForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "ragft_tiny.json").write_text(json.dumps(spec))
    return final
