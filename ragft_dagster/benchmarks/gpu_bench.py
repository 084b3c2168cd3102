"""GPU throughput benchmark at the published 7B settings (``make bench-gpu``).

A random-init model with Mistral-7B-v0.1's exact shape is built directly on the GPU in bf16
(nothing is downloaded: throughput does not depend on the weights' values), and three workloads
are timed on it:

* **SFT LoRA**: peft LoRA r=256, alpha=512, dropout 0.05 on all linear layers, random token
  rows of 1024, micro-batch 8 x gradient accumulation 2, gradient checkpointing (the 7B
  recipe's ``lora`` and ``sft.args``).
* **DPO**: the same LoRA policy; the reference model is the policy with its adapter disabled
  (what trl's ``DPOTrainer`` does with a peft model and ``ref_model=None``); chosen and rejected
  rows of 1024 in one forward pass, 4 pairs x accumulation 4, sigmoid loss with beta 0.1. The
  pipeline's ``dpo_model`` trains all weights; a full 7B fine-tune does not fit one 80 GB GPU
  with AdamW, so this row measures LoRA DPO.
* **MCQ scoring**: the project's scorer
  (:func:`ragft_dagster.evaluation.mcq.score_questions`) on the model with the adapter merged,
  quickstart questions behind ~900 tokens of bundled docs as context (the 7B recipe's top_k 3 x
  300-token chunks), batch 8. The tokenizer is the tiny
  models' (its ids are valid rows of any vocabulary of >= 1024): the cost depends on the number
  of tokens, not on which ones.

Training uses a plain loop (forward under bf16 autocast, backward, ``torch.optim.AdamW`` over
the LoRA weights), not trl's trainers: it does the same math trl does with ``bf16=True``
(autocast over bf16 base weights and fp32 adapter weights, peft's default), non-reentrant
gradient checkpointing and fused AdamW, but nothing else, so a timed step is exactly one
optimizer step, with ``torch.cuda.synchronize()`` before the clock starts and stops and the
warm-up steps left out. A trainer's wall time also holds data collation, logging and metric
computation (small) and set-up (not small), which would blur tokens/s. Inputs are random ids,
generated before timing, with no padding (packed rows).

**FLOPs and MFU.** N = weights of every matmul of the frozen base (decoder linears + lm_head;
the embedding is a lookup and costs none), N_lora = the adapter weights, L layers, d hidden
size, s sequence length. Per trained token:

* frozen base: forward 2N + backward input gradients 2N = **4N** (its weight gradients, the
  third 2N of the usual 6N, are never computed: counting them would flatter LoRA's MFU);
* adapters: forward 2 N_lora + both backward gradients 4 N_lora = **6 N_lora**;
* causal attention scores and values (no weights): **6 L d s** (forward 2 L d s: each token
  attends to s/2 positions on average through two matmuls; backward twice that).

SFT counts ``4N + 6 N_lora + 6 L d s`` per token. DPO adds the reference forward,
``2N + 2 L d s``. MFU = tokens/s x that / the device's dense bf16 peak. Gradient checkpointing
runs each decoder layer's forward again in the backward pass (``2 N_body + 2 N_lora + 2 L d s``
per token); like PaLM's MFU, that recomputation is not useful work and is left out of MFU,
and counted in HFU (hardware FLOPs utilisation, in the JSON). MCQ scoring counts the forward
FLOPs of the tokens it actually scores: the prompts through the decoder (lm_head on their last
position only, as the scorer keeps only the last logits) and the four options through the
whole model on top of the cached prompt; padding is not counted.

**Projection.** The published SFT run (about 3,800 Q&A pairs x 3 epochs, 18 minutes on two
RTX 4090s) is projected from the measured SFT tokens/s at ``--tokens-per-pair`` tokens per
chat-formatted pair, ASSUMING PACKED ROWS (trl ``packing``/padding-free): with padding the GPU
also pays for the pad tokens. Targets: projected <= 4 minutes on one H100 and SFT MFU >= 40%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = PROJECT_ROOT / "assets" / "quickstart"

# The published SFT workload ("RAG is not enough": ~3,800 GPT-4 Q&A pairs, 3 epochs, 18 minutes
# on two RTX 4090s) and the targets of issue 5 for one H100.
PUBLISHED_PAIRS = 3800
PUBLISHED_EPOCHS = 3
PUBLISHED_MINUTES = 18.0
PUBLISHED_PEAK_TFLOPS = 2 * 165.0
TARGET_MINUTES = 4.0
TARGET_MFU = 0.40
# One chat-formatted pair: template + a question + a GPT-4 answer about a 300-token chunk (the
# pairs are short; they do not carry the chunk itself).
DEFAULT_TOKENS_PER_PAIR = 350

NO_CUDA = "needs a CUDA GPU; use --shape tiny to check the script on CPU"

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched case-insensitively against
# torch.cuda.get_device_name(); the first match wins, so the specific names come first. The
# RTX 4090 figure is bf16 with fp32 accumulation (what training uses), half its fp16-accumulate
# rate.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("RTX 4090", 165.0),
    ("L40S", 362.0),
)


@dataclass(frozen=True)
class BenchShape:
    """A model shape and the workload settings timed on it."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    seq_len: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    dpo_lora_r: int
    dpo_lora_alpha: int
    dpo_lora_dropout: float
    sft_batch: int
    sft_accum: int
    dpo_batch: int
    """Preference pairs per micro-batch (twice as many rows: chosen and rejected)."""
    dpo_accum: int
    dpo_beta: float
    mcq_batch: int
    mcq_context_tokens: int
    """Retrieved-context tokens in every scored prompt."""
    steps: int
    warmup: int

    def config(self) -> Any:
        from transformers import MistralConfig

        return MistralConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            sliding_window=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            use_cache=False,
        )


SEVEN_B_RECIPE = PROJECT_ROOT / "assets" / "mistral-7b" / "recipe.yaml"


def recipe_shape(recipe_path: Path = SEVEN_B_RECIPE) -> BenchShape:
    """Mistral-7B-v0.1's config.json with the workload settings of the 7B recipe itself
    (``lora`` and ``sft.args`` for SFT, ``dpo.lora`` and ``dpo.args`` for DPO,
    ``retrieval.top_k`` x ``chunking.chunk_size`` of context and ``evaluation.batch_size`` for
    scoring), read from the recipe so the benchmark cannot drift from it."""
    from ragft_dagster.config.recipe import load_recipe

    r = load_recipe(recipe_path, check_files=False)
    sft_lora, dpo_lora = r.lora.model_dump(), (r.dpo.lora or r.lora).model_dump()
    sft, dpo = r.sft.args, r.dpo.args
    return BenchShape(
        name="7b",
        hidden=4096,
        intermediate=14336,
        layers=32,
        heads=32,
        kv_heads=8,
        vocab=32000,
        seq_len=int(sft.get("max_length", 1024)),
        lora_r=sft_lora["r"],
        lora_alpha=sft_lora["lora_alpha"],
        lora_dropout=sft_lora.get("lora_dropout", 0.0),
        dpo_lora_r=dpo_lora["r"],
        dpo_lora_alpha=dpo_lora["lora_alpha"],
        dpo_lora_dropout=dpo_lora.get("lora_dropout", 0.0),
        sft_batch=int(sft.get("per_device_train_batch_size", 8)),
        sft_accum=int(sft.get("gradient_accumulation_steps", 1)),
        dpo_batch=int(dpo.get("per_device_train_batch_size", 8)),
        dpo_accum=int(dpo.get("gradient_accumulation_steps", 1)),
        dpo_beta=float(dpo.get("beta", 0.1)),
        mcq_batch=r.evaluation.batch_size,
        mcq_context_tokens=r.retrieval.top_k * r.chunking.chunk_size,
        steps=10,
        warmup=2,
    )


SHAPES = {
    # Checks the script end to end on a CPU in seconds; its figures mean nothing.
    "tiny": BenchShape(
        name="tiny",
        hidden=64,
        intermediate=128,
        layers=2,
        heads=4,
        kv_heads=2,
        vocab=2048,
        seq_len=128,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        dpo_lora_r=4,
        dpo_lora_alpha=8,
        dpo_lora_dropout=0.05,
        sft_batch=2,
        sft_accum=2,
        dpo_batch=2,
        dpo_accum=1,
        dpo_beta=0.1,
        mcq_batch=4,
        mcq_context_tokens=64,
        steps=3,
        warmup=1,
    ),
}


# ---------------------------------------------------------------------------------------------
# FLOPs (pure arithmetic; the module docstring derives every term)


def matmul_params(shape: BenchShape) -> tuple[int, int]:
    """Weights of the decoder layers' linear layers and of ``lm_head``."""
    head_dim = shape.hidden // shape.heads
    attn = 2 * shape.hidden * shape.heads * head_dim + 2 * shape.hidden * shape.kv_heads * head_dim
    mlp = 3 * shape.hidden * shape.intermediate
    return shape.layers * (attn + mlp), shape.hidden * shape.vocab


def lora_params(shape: BenchShape, r: int) -> int:
    """Adapter weights of LoRA rank ``r`` on every decoder linear layer (peft ``all-linear``
    leaves ``lm_head`` out): r x (fan-in + fan-out) per layer."""
    h, q, kv, i = (
        shape.hidden,
        shape.heads * (shape.hidden // shape.heads),
        shape.kv_heads * (shape.hidden // shape.heads),
        shape.intermediate,
    )
    fans = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return shape.layers * r * fans


def train_flops_per_token(
    n_frozen: int, n_lora: int, layers: int, hidden: int, seq_len: int
) -> float:
    """Useful FLOPs of one LoRA-trained token: ``4N + 6 N_lora + 6 L d s``."""
    return 4 * n_frozen + 6 * n_lora + 6 * layers * hidden * seq_len


def recompute_flops_per_token(
    n_body: int, n_lora: int, layers: int, hidden: int, seq_len: int
) -> float:
    """FLOPs gradient checkpointing spends again per token (the decoder's forward):
    ``2 N_body + 2 N_lora + 2 L d s``; in HFU, not in MFU."""
    return 2 * n_body + 2 * n_lora + 2 * layers * hidden * seq_len


def dpo_flops_per_token(
    n_frozen: int, n_lora: int, layers: int, hidden: int, seq_len: int
) -> float:
    """Useful FLOPs per DPO token (chosen or rejected): the policy's training FLOPs plus the
    reference forward, ``2N + 2 L d s``."""
    return train_flops_per_token(n_frozen, n_lora, layers, hidden, seq_len) + (
        2 * n_frozen + 2 * layers * hidden * seq_len
    )


def mcq_flops(
    prompt_lens: list[int],
    option_lens: list[list[int]],
    n_body: int,
    n_head: int,
    layers: int,
    hidden: int,
) -> float:
    """Forward FLOPs of scoring: each prompt of p tokens through the decoder (``2 N_body p``,
    causal attention ``2 L d p^2``) and ``lm_head`` on its last position; each option of o
    tokens through the whole model (``2 (N_body + N_head) o``) attending to the cached prompt
    and to itself (``4 L d (p o + o^2 / 2)``)."""
    total = 0.0
    for p, opts in zip(prompt_lens, option_lens, strict=True):
        total += 2 * n_body * p + 2 * layers * hidden * p * p + 2 * n_head
        for o in opts:
            total += 2 * (n_body + n_head) * o + 4 * layers * hidden * (p * o + o * o / 2)
    return total


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name; None when it is not in :data:`PEAK_TFLOPS`."""
    lowered = device_name.lower()
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in lowered:
            return tflops
    return None


def utilisation(
    tokens_per_s: float, flops_per_token: float, peak_flops: float | None
) -> float | None:
    """Achieved FLOP/s over peak FLOP/s (MFU or HFU, by what ``flops_per_token`` counts)."""
    if not peak_flops:
        return None
    return tokens_per_s * flops_per_token / peak_flops


def project_sft(
    tokens_per_s: float,
    flops_per_token: float,
    peak_flops: float | None,
    *,
    tokens_per_pair: int,
    pairs: int = PUBLISHED_PAIRS,
    epochs: int = PUBLISHED_EPOCHS,
) -> dict[str, Any]:
    """The published SFT workload at the measured tokens/s, packed rows assumed."""
    tokens = pairs * epochs * tokens_per_pair
    required = tokens / (TARGET_MINUTES * 60)
    published_tps = tokens / (PUBLISHED_MINUTES * 60)
    return {
        "pairs": pairs,
        "epochs": epochs,
        "tokens_per_pair": tokens_per_pair,
        "tokens": tokens,
        "packing_assumed": True,
        "minutes": tokens / tokens_per_s / 60,
        "target_minutes": TARGET_MINUTES,
        "required_tokens_per_s": required,
        "required_mfu": utilisation(required, flops_per_token, peak_flops),
        "published_minutes": PUBLISHED_MINUTES,
        "published_hardware": "2x RTX 4090",
        "published_tokens_per_s": published_tps,
        "published_mfu": utilisation(published_tps, flops_per_token, PUBLISHED_PEAK_TFLOPS * 1e12),
    }


# ---------------------------------------------------------------------------------------------
# Measurement


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def _time_steps(step: Callable[[], None], warmup: int, steps: int, device: str) -> list[float]:
    """Seconds of each timed step, after ``warmup`` untimed ones; the GPU is drained before the
    clock starts and before it stops."""
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        _sync(device)
        started = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def _row(
    seconds: list[float],
    *,
    tokens_per_step: float,
    items_per_step: float,
    item: str,
    flops_per_token: float,
    hardware_flops_per_token: float,
    peak_flops: float | None,
    device: str,
    warmup: int,
) -> dict[str, Any]:
    total = sum(seconds)
    tps = tokens_per_step * len(seconds) / total
    return {
        "tokens_per_s": tps,
        "items_per_s": items_per_step * len(seconds) / total,
        "item": item,
        "step_seconds": total / len(seconds),
        "step_seconds_min": min(seconds),
        "step_seconds_max": max(seconds),
        "steps": len(seconds),
        "warmup_steps": warmup,
        "tokens_per_step": tokens_per_step,
        "peak_gib": _peak_gib(device),
        "flops_per_token": flops_per_token,
        "mfu": utilisation(tps, flops_per_token, peak_flops),
        "hfu": utilisation(tps, hardware_flops_per_token, peak_flops),
    }


@dataclass(frozen=True)
class _Run:
    device: str
    shape: BenchShape
    steps: int
    warmup: int
    peak_flops: float | None
    n_body: int
    n_head: int
    n_lora: int
    gradient_checkpointing: bool
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]

    @property
    def n_frozen(self) -> int:
        return self.n_body + self.n_head

    def flops(self, fn: Callable[..., float]) -> float:
        s = self.shape
        return fn(self.n_frozen, self.n_lora, s.layers, s.hidden, s.seq_len)

    def recompute(self) -> float:
        if not self.gradient_checkpointing:
            return 0.0
        s = self.shape
        return recompute_flops_per_token(self.n_body, self.n_lora, s.layers, s.hidden, s.seq_len)


def _random_rows(run: _Run, rows: int) -> Any:
    import torch

    return torch.randint(0, run.shape.vocab, (rows, run.shape.seq_len), device=run.device)


def _optimizer(model: Any, device: str) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW: what transformers' Trainer picks by default on a GPU.
    return torch.optim.AdamW(params, lr=2e-4, fused=device == "cuda")


def bench_sft(model: Any, run: _Run, batch: int, accum: int) -> dict[str, Any]:
    """Time LoRA SFT optimizer steps of ``batch`` x ``accum`` random rows."""
    _reset_peak(run.device)
    optimizer = _optimizer(model, run.device)
    micro = [_random_rows(run, batch) for _ in range(accum)]
    losses: list[Any] = []

    def step() -> None:
        for ids in micro:
            with run.autocast():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            (loss / accum).backward()
            losses.append(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _time_steps(step, run.warmup, run.steps, run.device)
    row = _row(
        seconds,
        tokens_per_step=batch * accum * run.shape.seq_len,
        items_per_step=batch * accum,
        item="sequences",
        flops_per_token=run.flops(train_flops_per_token),
        hardware_flops_per_token=run.flops(train_flops_per_token) + run.recompute(),
        peak_flops=run.peak_flops,
        device=run.device,
        warmup=run.warmup,
    )
    row.update(micro_batch=batch, grad_accum=accum, loss=float(losses[-1]))
    return row


def _sequence_logps(logits: Any, ids: Any) -> Any:
    import torch

    token_lp = -torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none"
    )
    return token_lp.view(ids.shape[0], -1).sum(-1)


def _bench_dpo_with_its_adapter(model: Any, run: _Run, shape: BenchShape) -> dict[str, Any]:
    """DPO as the recipe trains it: its own LoRA adapter (``dpo.lora``), not the SFT one."""
    import dataclasses

    from peft import LoraConfig

    model.add_adapter(
        "dpo",
        LoraConfig(
            r=shape.dpo_lora_r,
            lora_alpha=shape.dpo_lora_alpha,
            lora_dropout=shape.dpo_lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    model.set_adapter("dpo")
    n_lora = sum(p.numel() for n, p in model.named_parameters() if ".dpo." in n)
    try:
        return bench_dpo(
            model,
            dataclasses.replace(run, n_lora=n_lora),
            shape.dpo_batch,
            shape.dpo_accum,
            shape.dpo_beta,
        )
    finally:
        model.set_adapter("default")


def bench_dpo(model: Any, run: _Run, pairs: int, accum: int, beta: float) -> dict[str, Any]:
    """Time DPO optimizer steps of ``pairs`` x ``accum`` random chosen/rejected pairs; the
    reference is the policy with its adapter disabled."""
    import torch

    _reset_peak(run.device)
    optimizer = _optimizer(model, run.device)
    # Chosen rows, then rejected rows: one forward pass for both, as trl concatenates them.
    micro = [_random_rows(run, 2 * pairs) for _ in range(accum)]
    losses: list[Any] = []

    def step() -> None:
        for ids in micro:
            with torch.no_grad(), model.disable_adapter(), run.autocast():
                ref = _sequence_logps(model(input_ids=ids, use_cache=False).logits, ids)
            with run.autocast():
                policy = _sequence_logps(model(input_ids=ids, use_cache=False).logits, ids)
            chosen, rejected = (policy - ref).chunk(2)
            loss = -torch.nn.functional.logsigmoid(beta * (chosen - rejected)).mean()
            (loss / accum).backward()
            losses.append(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _time_steps(step, run.warmup, run.steps, run.device)
    row = _row(
        seconds,
        tokens_per_step=2 * pairs * accum * run.shape.seq_len,
        items_per_step=pairs * accum,
        item="pairs",
        flops_per_token=run.flops(dpo_flops_per_token),
        hardware_flops_per_token=run.flops(dpo_flops_per_token) + run.recompute(),
        peak_flops=run.peak_flops,
        device=run.device,
        warmup=run.warmup,
    )
    row.update(micro_batch_pairs=pairs, grad_accum=accum, beta=beta, loss=float(losses[-1]))
    return row


def mcq_prompts(
    tokenizer: Any, count: int, context_tokens: int
) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """``count`` rendered scoring prompts: the quickstart questions in turn, each behind
    ``context_tokens`` tokens of the bundled docs (a different window each time), with the
    evaluation recipe's default templates and the tokenizer's chat template."""
    from ragft_dagster.config.recipe import EvaluationRecipe
    from ragft_dagster.evaluation.mcq import load_questions
    from ragft_dagster.prompts import mcq_messages

    ev = EvaluationRecipe()
    questions = load_questions(QUICKSTART / "mcq.csv")
    doc_ids = [
        i
        for path in sorted(QUICKSTART.glob("docs/*.md"))
        for i in tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    ]
    stride = max(1, (len(doc_ids) - context_tokens) // max(count, 1))
    prompts, options = [], []
    for i in range(count):
        q = questions[i % len(questions)]
        start = (i * stride) % max(1, len(doc_ids) - context_tokens)
        context = tokenizer.decode(doc_ids[start : start + context_tokens])
        messages = mcq_messages(
            q.question,
            q.options,
            system_prompt=ev.system_prompt,
            user_template=ev.user_template,
            context_template=ev.context_template,
            context=context,
        )
        prompts.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
        options.append(q.options)
    return prompts, options


def bench_mcq(model: Any, tokenizer: Any, run: _Run, batch: int) -> dict[str, Any]:
    """Time :func:`ragft_dagster.evaluation.mcq.score_questions` on ``run.steps`` batches
    (tokenisation, both forward passes and the per-question bookkeeping: the scorer's whole
    cost)."""
    from ragft_dagster.evaluation.mcq import score_questions

    s = run.shape
    prompts, options = mcq_prompts(
        tokenizer, (run.warmup + run.steps) * batch, s.mcq_context_tokens
    )
    cut = run.warmup * batch
    warm_p, warm_o, timed_p, timed_o = prompts[:cut], options[:cut], prompts[cut:], options[cut:]
    model.eval()
    if warm_p:
        score_questions(model, tokenizer, warm_p, warm_o, batch_size=batch, device=run.device)
    _reset_peak(run.device)
    _sync(run.device)
    started = time.perf_counter()
    records = score_questions(
        model, tokenizer, timed_p, timed_o, batch_size=batch, device=run.device
    )
    _sync(run.device)
    seconds = time.perf_counter() - started

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt_lens = [length(p) for p in timed_p]
    # The scorer feeds an empty option as one pad token.
    option_lens = [[max(1, length(t)) for t in opts] for opts in timed_o]
    tokens = sum(prompt_lens) + sum(map(sum, option_lens))
    flops = mcq_flops(prompt_lens, option_lens, run.n_body, run.n_head, s.layers, s.hidden)
    tps = tokens / seconds
    return {
        "tokens_per_s": tps,
        "items_per_s": len(records) / seconds,
        "item": "questions",
        "step_seconds": seconds / run.steps,
        "steps": run.steps,
        "warmup_steps": run.warmup,
        "batch_size": batch,
        "mean_prompt_tokens": sum(prompt_lens) / len(prompt_lens),
        "tokens_per_step": tokens / run.steps,
        "peak_gib": _peak_gib(run.device),
        "flops_per_token": flops / tokens,
        "mfu": utilisation(tps, flops / tokens, run.peak_flops),
        "hfu": utilisation(tps, flops / tokens, run.peak_flops),
    }


def _resolve_device(requested: str, shape: BenchShape) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "auto":
        requested = "cuda" if has_cuda else "cpu"
    if shape.name == "7b" and (requested != "cuda" or not has_cuda):
        raise SystemExit(f"gpu_bench: --shape 7b {NO_CUDA}")
    if requested == "cuda" and not has_cuda:
        raise SystemExit(f"gpu_bench: --device cuda {NO_CUDA}")
    if requested == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("gpu_bench: this GPU has no bf16 support; the 7B recipe trains in bf16")
    return requested


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, time the three workloads and project the published SFT run.

    Returns:
        The figures :func:`main` prints and writes as JSON.
    """
    shape = recipe_shape() if args.shape == "7b" else SHAPES[args.shape]
    device = _resolve_device(args.device, shape)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragft_dagster.models.tiny import build_tiny_tokenizer

    seq_len = args.seq_len or shape.seq_len
    if seq_len != shape.seq_len:
        shape = BenchShape(**{**asdict(shape), "seq_len": seq_len})
    steps = args.steps or shape.steps
    warmup = shape.warmup if args.warmup is None else args.warmup
    if steps < 1 or warmup < 0:
        raise SystemExit("gpu_bench: --steps must be >= 1 and --warmup >= 0")
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    if device == "cuda":
        device_name = torch.cuda.get_device_name()
        peak_tflops = args.peak_tflops or peak_tflops_for(device_name)
    else:
        device_name = "cpu"
        peak_tflops = args.peak_tflops
    peak_flops = peak_tflops * 1e12 if peak_tflops else None

    torch.manual_seed(0)
    started = time.perf_counter()
    # Built in place on the target device: a 7B model never exists on the host.
    model: Any
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            shape.config(), dtype=dtype, attn_implementation=args.attn_implementation
        )
    n_body = sum(
        m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)
    )
    n_head = model.lm_head.weight.numel()
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    model = get_peft_model(
        model,
        LoraConfig(
            r=shape.lora_r,
            lora_alpha=shape.lora_alpha,
            lora_dropout=shape.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    build_seconds = time.perf_counter() - started
    model.train()

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=dtype)

    run = _Run(
        device=device,
        shape=shape,
        steps=steps,
        warmup=warmup,
        peak_flops=peak_flops,
        n_body=n_body,
        n_head=n_head,
        n_lora=n_lora,
        gradient_checkpointing=args.gradient_checkpointing,
        autocast=autocast,
    )
    rows = {
        "sft_lora": bench_sft(
            model, run, args.batch_size or shape.sft_batch, args.grad_accum or shape.sft_accum
        ),
        "dpo": _bench_dpo_with_its_adapter(model, run, shape),
    }
    # Scored as the pipeline scores the sft model: adapter merged into the base weights.
    model = model.merge_and_unload()
    model.activation_checkpointing_disable()
    model.config.use_cache = True
    with tempfile.TemporaryDirectory(prefix="ragft-gpu-bench-") as tmp:
        tokenizer = build_tiny_tokenizer(Path(tmp))
    rows["mcq_scoring"] = bench_mcq(model, tokenizer, run, shape.mcq_batch)

    sft = rows["sft_lora"]
    projection = project_sft(
        sft["tokens_per_s"],
        sft["flops_per_token"],
        peak_flops,
        tokens_per_pair=args.tokens_per_pair,
    )
    at_target_shape = shape.name == "7b"
    checks: dict[str, bool | None] = {
        f"published SFT workload <= {TARGET_MINUTES:g} min": (
            projection["minutes"] <= TARGET_MINUTES if at_target_shape else None
        ),
        f"SFT MFU >= {TARGET_MFU:.0%}": (
            sft["mfu"] >= TARGET_MFU if at_target_shape and sft["mfu"] is not None else None
        ),
    }
    return {
        "shape": shape.name,
        "device": device,
        "device_name": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_tflops": peak_tflops,
        "attn_implementation": model.config._attn_implementation,
        "gradient_checkpointing": args.gradient_checkpointing,
        "versions": _versions(),
        "model": {
            **{k: v for k, v in asdict(shape).items() if k not in ("steps", "warmup")},
            "matmul_params": n_body + n_head,
            "lm_head_params": n_head,
            "lora_params": n_lora,
            "build_seconds": build_seconds,
        },
        "rows": rows,
        "projection": projection,
        "checks": checks,
    }


# ---------------------------------------------------------------------------------------------
# Report

LABELS = {"sft_lora": "SFT LoRA", "dpo": "DPO (LoRA)", "mcq_scoring": "MCQ scoring"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def format_report(figures: dict[str, Any]) -> str:
    """The markdown table, its footnotes, the projection and the checks."""
    m, rows, p = figures["model"], figures["rows"], figures["projection"]
    sft, dpo, mcq = rows["sft_lora"], rows["dpo"], rows["mcq_scoring"]
    details = {
        "sft_lora": f"r={m['lora_r']}, {sft['micro_batch']}x{m['seq_len']}, "
        f"accum {sft['grad_accum']}",
        "dpo": f"{dpo['micro_batch_pairs']} pairs x 2x{m['seq_len']}, accum {dpo['grad_accum']}",
        "mcq_scoring": f"batch {mcq['batch_size']}, ~{mcq['mean_prompt_tokens']:.0f}-token prompts",
    }
    peak = f"{figures['peak_tflops']:g} TFLOP/s" if figures["peak_tflops"] else "unknown peak"
    lines = [
        f"{figures['shape']} Mistral shape ({m['matmul_params'] / 1e9:.2f}B matmul weights, "
        f"LoRA {m['lora_params'] / 1e6:.1f}M), random init, {figures['device_name']} "
        f"({peak}), {figures['dtype']}, {figures['attn_implementation']} attention, gradient "
        f"checkpointing {'on' if figures['gradient_checkpointing'] else 'off'}; "
        f"{sft['steps']} timed steps after {sft['warmup_steps']} warm-up",
        "",
        "| workload | tokens/s | items/s | step time | peak GiB | MFU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, row in rows.items():
        gib = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        lines.append(
            f"| {LABELS[key]} ({details[key]}) | {row['tokens_per_s']:,.0f} | "
            f"{row['items_per_s']:,.2f} {row['item']} | {row['step_seconds']:.3f} s | {gib} | "
            f"{_pct(row['mfu'])} |"
        )
    lines += [
        "",
        "MFU = tokens/s x useful FLOPs per token / dense bf16 peak. N = frozen matmul weights, "
        "N_lora = adapter weights, L layers, d hidden, s sequence. SFT: 4N + 6 N_lora + 6 L d s "
        "(no weight gradients for frozen weights); DPO: + 2N + 2 L d s (reference forward); "
        "MCQ: forward FLOPs of the scored tokens. Gradient-checkpointing recompute is not "
        f"counted (HFU: SFT {_pct(sft['hfu'])}, DPO {_pct(dpo['hfu'])}). Step time: one "
        "optimizer step (SFT, DPO), one batch of questions (MCQ).",
        "",
        f"Published SFT workload: {p['pairs']:,} pairs x {p['epochs']} epochs x "
        f"{p['tokens_per_pair']} tokens/pair = {p['tokens']:,} tokens, packed rows assumed "
        f"(no pad tokens) -> {p['minutes']:.1f} min at the measured SFT tokens/s "
        f"(published: {p['published_minutes']:g} min on {p['published_hardware']}, "
        f"= {p['published_tokens_per_s']:,.0f} tokens/s, {_pct(p['published_mfu'])} MFU by the "
        "same formula).",
        f"The {p['target_minutes']:g}-minute target needs {p['required_tokens_per_s']:,.0f} "
        f"tokens/s ({_pct(p['required_mfu'])} MFU on this device).",
        "",
    ]
    for name, ok in figures["checks"].items():
        verdict = "PASS" if ok else "FAIL"
        if ok is None:
            verdict = (
                "n/a (no peak FLOP/s for this device: --peak-tflops)"
                if figures["shape"] == "7b"
                else f"n/a ({figures['shape']} shape)"
            )
        lines.append(f"{verdict}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ragft_dagster.benchmarks.gpu_bench",
        description="SFT LoRA / DPO / MCQ scoring throughput and MFU of a random-init "
        "Mistral-7B-shaped model at the published settings (see the module docstring).",
    )
    parser.add_argument(
        "--shape",
        choices=sorted({"7b", *SHAPES}),
        default="7b",
        help="7b: Mistral-7B-v0.1 (needs a CUDA GPU); tiny: 2 layers, checks the script on CPU",
    )
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--steps", type=int, help="timed steps per workload (default: 10 for 7b, 3 for tiny)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 2; tiny 1)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default: 1024; tiny 128)")
    parser.add_argument("--batch-size", type=int, help="SFT micro-batch (default: 8; tiny 2)")
    parser.add_argument("--grad-accum", type=int, help="SFT accumulation (default: 2)")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="as the 7B recipe trains (default: on)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="weights and autocast dtype (default: bfloat16 on a GPU, float32 on CPU)",
    )
    parser.add_argument(
        "--attn-implementation",
        default="sdpa",
        help="transformers attention backend: sdpa (default), eager, or flash_attention_2 "
        "where the flash-attn package is installed",
    )
    parser.add_argument(
        "--tokens-per-pair",
        type=int,
        default=DEFAULT_TOKENS_PER_PAIR,
        help="tokens of one chat-formatted Q&A pair for the projection (default: "
        f"{DEFAULT_TOKENS_PER_PAIR})",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="dense bf16 peak of this device, when its name is not in the built-in table",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run_benchmark(args)
    print(format_report(figures))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if any(ok is False for ok in figures["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
