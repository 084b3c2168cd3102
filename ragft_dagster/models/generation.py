"""Greedy and sampled replies of a local causal LM, and the settings it generates with
(Dagster-free). ``ragft ask``, ``open_scores`` and the specialist's skill check generate here,
so an answer is the same wherever it is asked."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ragft_dagster.compute import ComputeSettings


def generation_settings(compute: ComputeSettings) -> ComputeSettings:
    """The settings a local model generates answers with (``ragft ask`` and ``open_scores``):
    the profile's, except that ``dtype: auto`` on a CPU generates in float32.

    Under load, token-by-token decoding is where bfloat16 loses on a CPU: measured on this
    project's 2-core CPU with avx512_bf16 (SmolLM2-135M sft, a 3-chunk RAG prompt, load average
    ~7), reading the prompt took 5-6 s and each new token 1.3 s in bfloat16, 0.85 s and 0.12 s
    in float32. Idle, bfloat16 was the faster one, but its answers changed more under batching
    (docs/open-answers.md). Scoring (one forward pass per question) keeps the profile's
    inference dtype.
    """
    if compute.dtype == "auto" and compute.torch_device() == "cpu":
        return replace(compute, dtype="float32")
    return compute


@dataclass(frozen=True)
class Reply:
    """A generated reply and how it ended."""

    text: str
    new_tokens: int
    """Tokens generated (the end-of-turn token included when the model wrote one)."""
    truncated: bool
    """Cut off at ``max_new_tokens`` before the model ended its turn."""


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    device: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    write: Callable[[str], Any] | None = None,
) -> Reply:
    """Generate a reply, handing each piece of text to ``write`` as soon as it is decoded.

    Generation runs in a thread feeding a ``TextIteratorStreamer``; this thread writes. The
    text is the streamer's, so what ``ragft ask`` prints and what ``open_scores`` scores are the
    same characters.

    Args:
        model: A causal LM on ``device``.
        tokenizer: Its tokenizer (with a chat template).
        messages: The chat so far.
        device: Torch device of the model.
        max_new_tokens: Longest reply, in tokens.
        temperature: 0 decodes greedily; above 0 samples at that temperature.
        write: Receives the reply piece by piece (None: nobody is watching).

    Returns:
        The whole reply, its length in tokens and whether it was cut off.
    """
    import torch
    from transformers import TextIteratorStreamer

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The chat template writes the BOS token itself.
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        sampling["temperature"] = temperature
    failure: list[BaseException] = []
    output: list[Any] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                output.append(
                    model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tokenizer.pad_token_id,
                        streamer=streamer,
                        **sampling,
                    )
                )
        except BaseException as exc:
            failure.append(exc)
            streamer.end()  # else the loop below waits for text forever

    model.eval()
    worker = threading.Thread(target=generate, name="ragft-ask-generate", daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        if piece:
            pieces.append(piece)
            if write is not None:
                write(piece)
    worker.join()
    if failure:
        raise failure[0]
    new = output[0][0, enc["input_ids"].shape[1] :].tolist() if output else []
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops] if stops is not None else [])
    ended = bool(new) and new[-1] in stops
    return Reply("".join(pieces), len(new), len(new) >= max_new_tokens and not ended)


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    device: str,
    max_new_tokens: int,
    batch_size: int = 1,
) -> list[Reply]:
    """Greedy replies to many conversations, ``batch_size`` prompts a forward pass.

    With ``batch_size`` 1 every reply is the one :func:`generate_reply` streams at temperature
    0, token for token (the same prompt, the same greedy search). Above 1, prompts of similar
    length are left-padded into one batch: the same search, but the padded matrix products add
    in another order, so a near-tie between two tokens may break the other way and the reply
    differ from there on.

    Args:
        model: A causal LM on ``device``.
        tokenizer: Its tokenizer (with a chat template).
        conversations: One chat per reply.
        device: Torch device of the model.
        max_new_tokens: Longest reply, in tokens.
        batch_size: Prompts per forward pass.

    Returns:
        The replies, in the order of ``conversations``.
    """
    import torch

    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in conversations
    ]
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops] if stops is not None else [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    replies: dict[int, Reply] = {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the new tokens follow every prompt directly
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # The chat template writes the BOS token itself.
            enc = tokenizer(
                [prompts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
            for i, row in zip(batch, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
                end = next((k + 1 for k, t in enumerate(row) if t in stops), None)
                ids = row if end is None else row[:end]
                text = tokenizer.decode(ids, skip_special_tokens=True)
                replies[i] = Reply(text, len(ids), end is None and len(ids) >= max_new_tokens)
    finally:
        tokenizer.padding_side = side
    return [replies[i] for i in range(len(prompts))]
