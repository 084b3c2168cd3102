"""Multiple-choice benchmark: loading, prompting and log-likelihood scoring (Dagster-free).

Local models are scored by log-likelihood, with lm-evaluation-harness's metric names:

* ``acc`` is the letter, as the harness scores MMLU: the log-probability of each answer letter as
  the next token after the chat prompt, renormalised over A-D. The raw probability mass on A-D is
  recorded too: a model that puts little mass there is not really answering. API models answer
  with a letter too, so this is the one metric every cell has.
* ``acc_norm`` is the option text, as the harness scores ARC and HellaSwag: each option's
  log-likelihood after the prompt per character (the harness's ``acc_norm``); ``acc_bytes``
  divides by UTF-8 bytes instead (the harness's ``acc_bytes``; the two differ only for options
  with non-ASCII text).
* ``acc_option`` is that option log-likelihood unnormalised (what the harness's ARC calls
  ``acc``; named apart here because this benchmark's ``acc`` is the letter).

Every score is computed in float32 from the model's final hidden state, whatever its dtype, and
a tie for the top choice is recorded and counted as 1/k correct, never as the first letter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# the benchmark file's model, re-exported for the scorers that read it with the scores
from ragft_dagster.data.benchmark import COLUMNS as COLUMNS
from ragft_dagster.data.benchmark import LETTERS as LETTERS
from ragft_dagster.data.benchmark import McqError as McqError
from ragft_dagster.data.benchmark import Question as Question
from ragft_dagster.data.benchmark import load_questions as load_questions
from ragft_dagster.data.benchmark import question_set as question_set
from ragft_dagster.text import content_words


@dataclass(frozen=True)
class AnswerTokens:
    """How one prompt's answers are tokenised for scoring.

    As lm-evaluation-harness does with its target delimiter, the prompt's trailing whitespace is
    moved into the answer: after a generation prompt ending in ``"Answer: "`` the letter is
    scored as ``" B"`` after ``"Answer:"``, the one token a GPT-2-style BPE writes for it, never
    as an unspaced ``"B"`` after a lone-space token (a sequence the model hardly ever saw).
    """

    context_ids: list[int]
    """What the model reads: the prompt without its trailing whitespace, plus the tokens every
    letter's continuation starts with (e.g. a chat template's closing newline, which a BPE keeps
    apart from the letter): for a prompt without trailing space, exactly the prompt's tokens."""
    letter_ids: tuple[int, ...]
    """A-D: the one token each letter is written as after ``context_ids``."""
    option_ids: tuple[list[int], ...]
    """Each option's text, written after the same whitespace, as tokens after ``context_ids``."""


def answer_tokens(tokenizer: Any, prompt: str, options: Sequence[str] = ()) -> AnswerTokens:
    """The context and the answer tokens of one prompt, as the tokenizer writes them.

    Each answer (``whitespace + letter``, ``whitespace + option``) is tokenised together with
    the prompt and its tokens are those after the prompt's own; only the prompt's last
    characters are re-tokenised with each answer (a long RAG prompt is not tokenised nine
    times) when their tokens, bar the first two, are the end of the prompt's own tokens.

    Args:
        tokenizer: The model's tokenizer.
        prompt: The rendered prompt (chat template applied, generation prompt added).
        options: The four option texts, for ``acc_norm``/``acc_option``; none for letters only.

    Returns:
        The context and the letter and option tokens that follow it.

    Raises:
        McqError: When no answer letter can follow the prompt as a token of its own (the
            tokenizer merges it with the prompt's last characters).
    """
    context = prompt.rstrip()
    delimiter = prompt[len(context) :]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    tail = context[-64:]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    # The tail's first two tokens may start mid-word; the rest must be the context's own.
    tail_fits = len(tail) < len(context) and context_ids[2 - len(tail_ids) :] == tail_ids[2:]
    base_text, base_ids = (
        (tail, tail_ids) if len(tail_ids) > 2 and tail_fits else (context, context_ids)
    )
    answers = [delimiter + text for text in (*LETTERS, *options)]
    written = tokenizer([base_text + a for a in answers], add_special_tokens=False)["input_ids"]
    after = [ids[len(base_ids) :] if ids[: len(base_ids)] == base_ids else [] for ids in written]
    letters = after[:4]
    for letter, ids in zip(LETTERS, letters, strict=True):
        if not ids:
            raise McqError(
                f"no answer letter can follow the prompt: the tokenizer merges {letter!r} with "
                f"the prompt's last characters {context[-16:]!r}; end the user template (or the "
                "chat template's generation prompt) with a separator such as 'Answer:'"
            )
    shared = letters[0][:-1]
    if any(ids[:-1] != shared for ids in letters) or len({ids[-1] for ids in letters}) < 4:
        shown = [tokenizer.convert_ids_to_tokens(ids) for ids in letters]
        raise McqError(
            f"no answer letter can follow the prompt as one token of its own: after "
            f"{context[-16:]!r} the tokenizer writes the letters A-D as {shown}; end the user "
            "template (or the chat template's generation prompt) with a separator such as "
            "'Answer:'"
        )
    option_ids = []
    for text, ids in zip(options, after[4:], strict=True):
        if len(ids) > len(shared) and ids[: len(shared)] == shared:
            option_ids.append(ids[len(shared) :])
        else:
            # The tokenizer merges this option with the prompt's end (or with what the letters
            # keep apart): its own tokens after the same context are the closest it can be.
            option_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return AnswerTokens(context_ids + shared, tuple(ids[-1] for ids in letters), tuple(option_ids))


def letter_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The token each letter A-D is written as after ``prompt`` (``" A"`` after ``"Answer: "``);
    it follows :func:`answer_tokens`' ``context_ids``, which for a prompt without trailing
    whitespace are the prompt's own tokens."""
    return list(answer_tokens(tokenizer, prompt).letter_ids)


def _accepts(model: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class _ScoringHead:
    """The model split at its LM head, so what decides an answer is computed in float32.

    A bfloat16 or float16 LM head writes rounded logits: on the quickstart the four letters'
    logits tied exactly on about a quarter of the questions, and upcasting after the head
    cannot separate them. Here the body runs in the model's dtype and the final hidden state is
    projected with a float32 copy of the head's weight: only the rows asked for (the last
    position of each prompt, the real tokens of each option), in chunks, so neither the rounding
    nor a full-vocabulary float32 tensor over every padded position is paid. Models whose head
    is not a plain projection of ``base_model``'s output keep their own logits (upcast).
    """

    def __init__(self, model: Any):
        import torch

        self.model = model
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        body: Any = getattr(model, "base_model", None)
        weight: Any = getattr(out, "weight", None)
        self.split = body is not None and body is not model and isinstance(weight, torch.Tensor)
        if not self.split:
            return
        self.body = body
        self.weight = weight.detach().float()  # no copy when it is float32 already
        bias = getattr(out, "bias", None)
        self.bias = None if bias is None else bias.detach().float()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
        # What some architectures do after the projection (Cohere scales, Granite divides,
        # Gemma 2/3 soft-cap); the rest of transformers' causal LMs return the projection.
        self.scale = float(getattr(cfg, "logit_scale", None) or 1.0)
        self.scale /= float(getattr(cfg, "logits_scaling", None) or 1.0)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def forward(self, *, last_only: bool = False, **inputs: Any) -> tuple[Any, Any]:
        """(hidden states, or the model's own logits when not split; its key/value cache).
        ``last_only``: only the last position is used (an unsplit model computes only its
        logits)."""
        if self.split:
            out = self.body(**inputs)
            return out.last_hidden_state, out.past_key_values
        if last_only and _accepts(self.model, "logits_to_keep"):
            inputs["logits_to_keep"] = 1
        out = self.model(**inputs)
        return out.logits, out.past_key_values

    def logits(self, hidden: Any) -> Any:
        """Float32 logits over the whole vocabulary of ``hidden`` ([n, hidden] -> [n, vocab])."""
        import torch

        if not self.split:
            return hidden.float()
        z = hidden.to(self.weight.dtype) @ self.weight.T
        if self.bias is not None:
            z = z + self.bias
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def target_logprobs(self, hidden: Any, targets: Any, chunk: int = 512) -> Any:
        """log p(targets[i] | hidden[i]) in float32, ``chunk`` rows at a time."""
        import torch

        out = []
        for start in range(0, hidden.shape[0], chunk):
            z = self.logits(hidden[start : start + chunk])
            t = targets[start : start + chunk]
            out.append(z.gather(1, t[:, None])[:, 0] - torch.logsumexp(z, dim=-1))
        return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _top(scores: Sequence[float]) -> list[int]:
    """Every index sharing the top score (ties are exact: equal floats)."""
    best = max(scores)
    return [i for i, s in enumerate(scores) if s == best]


def _length_groups(lengths: Sequence[int], max_rows: int, slack: float = 1.5) -> list[list[int]]:
    """Rows grouped by length (longest first) so a group's padding stays small: a row starts a
    new group when the group's longest row is more than ``slack`` times its length, or the group
    is full. Long options (code, 400+ tokens) no longer pad every short one to their length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is None or len(g) >= max_rows or lengths[g[0]] > slack * max(lengths[i], 1):
            groups.append([i])
        else:
            g.append(i)
    return groups


def _select_cache(cache: Any, rows: Any, config: Any) -> Any:
    """A new key/value cache holding ``rows`` (batch indices, repeats allowed) of ``cache``;
    ``cache`` itself is left as it is, for the next group."""
    from transformers import DynamicCache

    data = [(layer.keys[rows], layer.values[rows]) for layer in cache.layers]
    return DynamicCache(ddp_cache_data=data, config=config)


def score_questions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    options: list[tuple[str, str, str, str]],
    *,
    batch_size: int = 8,
    device: str = "cpu",
    temperature: float | None = None,
) -> list[dict[str, Any]]:
    """Log-likelihoods of every question's answers, for ``acc``, ``acc_norm``, ``acc_bytes``
    and ``acc_option``, batched.

    Answers are tokenised as :func:`answer_tokens` says (the prompt's trailing whitespace moved
    into the answer). One forward pass over a batch of contexts (left-padded) gives the
    next-token distribution after each, and its key/value cache; further short passes score the
    options as continuations on top of that cache, grouped by length. So the long RAG prompt is
    processed once per question, not once per option. Every score is computed in float32 from
    the final hidden state (:class:`_ScoringHead`), whatever the model's dtype. In
    lm-evaluation-harness's terms:

    * ``acc`` (the letter, as the harness's MMLU): the log-probability of each answer letter as
      the next token;
    * ``acc_norm`` (the option text, as the harness's ARC/HellaSwag ``acc_norm``): the summed
      log-probability of each option's text divided by its length in characters;
    * ``acc_bytes`` (the harness's ``acc_bytes``): the same divided by its length in UTF-8 bytes;
    * ``acc_option`` (the option text, as the harness's ARC/HellaSwag ``acc``): that sum,
      unnormalised.

    A choice is "top" when no other scores higher; ``top`` lists every letter sharing the top
    score (a tie), and ``predicted*`` is the first of them (for display only: accuracy counts a
    tie among k as 1/k, see :func:`ragft_dagster.evaluation.scoring.score_local`).

    Args:
        model: A causal LM (eval mode is set here).
        tokenizer: Its tokenizer.
        prompts: Fully rendered prompts (chat template applied, generation prompt added).
        options: The four option texts of each prompt.
        batch_size: Prompts per forward pass.
        device: Where the model lives.
        temperature: For sampled mode, also return the A-D probabilities of sampling the next
            token at this temperature from the whole vocabulary (the rest is an invalid answer).

    Returns:
        Per prompt: ``logprobs`` (A-D), ``probs`` renormalised over A-D, ``mass`` on A-D,
        ``option_logprobs``, ``option_chars``, ``option_bytes``, ``top`` (per metric, the
        letters sharing the top score), ``predicted`` (acc), ``predicted_norm`` (acc_norm),
        ``predicted_bytes`` (acc_bytes), ``predicted_option`` (acc_option) and, with a
        temperature, ``sample_probs`` (A-D; ``1 - sum`` is the invalid share).
    """
    import torch

    model.eval()
    head = _ScoringHead(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokenized = [answer_tokens(tokenizer, p, o) for p, o in zip(prompts, options, strict=True)]
    # Batches of prompts of similar length (longest first), so little of a forward pass is
    # spent on padding (the quickstart's RAG prompts: 83% of the padded positions were real
    # tokens in question order, 97% sorted); the results go back in question order.
    order = sorted(range(len(prompts)), key=lambda i: -len(tokenized[i].context_ids))
    by_index: dict[int, dict[str, Any]] = {}
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        answers = [tokenized[i] for i in members]
        ctx = [a.context_ids for a in answers]
        width = max(len(c) for c in ctx)
        ids = torch.full((len(ctx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ctx), width), dtype=torch.long)
        for i, c in enumerate(ctx):  # left padding: every prompt ends at the last position
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            hidden, cache = head.forward(
                last_only=True,
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
            )
            next_logits = head.logits(hidden[:, -1, :])
        next_logp = torch.log_softmax(next_logits, dim=-1)
        del hidden

        # Option j of question q is row 4q+j; token 0 of an option follows the prompt, token k
        # follows option token k-1 (scored from the continuation pass of its length group).
        conts = [ids or [pad] for a in answers for ids in a.option_ids]
        option_lps = [float(next_logp[r // 4, c[0]]) for r, c in enumerate(conts)]
        for group in _length_groups([len(c) for c in conts], max_rows=4 * len(members)):
            cwidth = max(len(conts[r]) for r in group)
            if cwidth < 2:
                continue  # one-token options: scored from the prompt's pass alone
            cids = torch.full((len(group), cwidth), pad, dtype=torch.long)
            cmask = torch.zeros((len(group), cwidth), dtype=torch.long)
            for i, r in enumerate(group):
                cids[i, : len(conts[r])] = torch.tensor(conts[r])
                cmask[i, : len(conts[r])] = 1
            question = torch.tensor([r // 4 for r in group])
            lengths = torch.tensor([len(ctx[r // 4]) for r in group])
            with torch.no_grad():
                hidden, _ = head.forward(
                    input_ids=cids.to(device),
                    attention_mask=torch.cat([mask[question], cmask], 1).to(device),
                    position_ids=(lengths[:, None] + torch.arange(cwidth)[None, :]).to(device),
                    past_key_values=_select_cache(
                        cache, question.to(device), getattr(model, "config", None)
                    ),
                    use_cache=False,
                )
                # only real positions that predict a next option token
                where = cmask[:, 1:].bool()
                targets = cids[:, 1:][where].to(device)
                lps = head.target_logprobs(hidden[:, :-1][where.to(device)], targets).tolist()
            del hidden
            per_row = where.sum(1).tolist()
            at = 0
            for r, n in zip(group, per_row, strict=True):
                option_lps[r] += math.fsum(lps[at : at + n])
                at += n
        del cache

        for q, a in enumerate(answers):
            texts = options[members[q]]
            lps = [float(next_logp[q, i]) for i in a.letter_ids]
            best = max(lps)
            norm = sum(math.exp(lp - best) for lp in lps)
            summed = option_lps[4 * q : 4 * q + 4]
            chars = [max(len(t), 1) for t in texts]
            nbytes = [max(len(t.encode("utf-8")), 1) for t in texts]
            top = {
                "acc": _top(lps),
                "acc_norm": _top([lp / n for lp, n in zip(summed, chars, strict=True)]),
                "acc_bytes": _top([lp / n for lp, n in zip(summed, nbytes, strict=True)]),
                "acc_option": _top(summed),
            }
            rec: dict[str, Any] = {
                "logprobs": dict(zip(LETTERS, lps, strict=True)),
                "probs": {
                    L: math.exp(lp - best) / norm for L, lp in zip(LETTERS, lps, strict=True)
                },
                "mass": sum(math.exp(lp) for lp in lps),
                "option_logprobs": dict(zip(LETTERS, summed, strict=True)),
                "option_chars": dict(zip(LETTERS, chars, strict=True)),
                "option_bytes": dict(zip(LETTERS, nbytes, strict=True)),
                "top": {m: [LETTERS[i] for i in idx] for m, idx in top.items()},
                **{
                    field: LETTERS[top[m][0]]
                    for m, field in (
                        ("acc", "predicted"),
                        ("acc_norm", "predicted_norm"),
                        ("acc_bytes", "predicted_bytes"),
                        ("acc_option", "predicted_option"),
                    )
                },
            }
            if temperature is not None:
                tempered = torch.log_softmax(next_logits[q] / temperature, dim=-1)
                rec["sample_probs"] = {
                    L: float(tempered[i].exp()) for L, i in zip(LETTERS, a.letter_ids, strict=True)
                }
            by_index[members[q]] = rec
    return [by_index[i] for i in range(len(prompts))]


_LETTER = re.compile(r"(?<![A-Za-z0-9])([ABCD])(?![A-Za-z0-9])")


def parse_letter(reply: str | None) -> str | None:
    """The answer letter of a generated reply: the first standalone A-D ("B", "B.", "(B)",
    "Answer: B"); None when there is none (an invalid answer, counted as wrong)."""
    if not reply:
        return None
    text = reply.strip()
    text = re.sub(r"^(the\s+)?(correct\s+)?answer\s*(is)?\s*[:\-]?\s*", "", text, flags=re.I)
    for m in _LETTER.finditer(text):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end() :]):
            continue  # the article: "A good guess is C"
        return m.group(1)
    return None


@dataclass(frozen=True)
class Support:
    """Where the correct answer of one question is found among the chunks."""

    chunk_ids: list[str]
    """The chunk(s) that best hold it: the highest coverage, ties broken by the question."""
    coverage: float
    """The share of the correct option's content words those chunks contain (0 to 1)."""


def answer_support(
    question: Question, chunks: list[dict[str, Any]], source: str | None = None
) -> Support:
    """The chunks that best hold the correct answer of ``question``, with how much of it.

    Coverage is graded: a real benchmark's options paraphrase the docs, so a chunk rarely holds
    every content word of a long option. The chunks with the highest coverage win; among those,
    the ones that share the most content words with the question (a number like "64" appears in
    many chunks, the question says which one is meant).

    Args:
        question: The question.
        chunks: Chunks with ``id``, ``text`` and ``doc``.
        source: Search only this document (default: the CSV's optional ``source`` column).

    Returns:
        The best chunk ids and their coverage; no ids and coverage 0 when no chunk holds any
        content word of the answer (or the answer has none, e.g. "it").
    """
    source = source or question.source
    answer = content_words(question.options["ABCD".index(question.correct)])
    if not answer:
        return Support([], 0.0)
    asked = content_words(question.question)
    best: list[str] = []
    best_key = (0.0, 0.0)
    for chunk in chunks:
        if source and chunk.get("doc") != source:
            continue
        held = content_words(chunk["text"])
        # rounded, so that equal shares compare equal and the question breaks the tie
        key = (
            round(len(answer & held) / len(answer), 9),
            round(len(asked & held) / max(len(asked), 1), 9),
        )
        if key[0] == 0 or key < best_key:
            continue
        best = [*best, chunk["id"]] if key == best_key else [chunk["id"]]
        best_key = key
    return Support(best, best_key[0])
