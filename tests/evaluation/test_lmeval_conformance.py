"""Our scorer against lm-evaluation-harness on the same prompts (slow: the quickstart's real
model is converted once, ~25 s, then both score every other of its 36 questions closed-book in
float32; ``make bench-scoring`` compares the answers on all 36).

lm-eval's ``hf`` model reads a local task whose ``doc_to_text`` is our rendered chat prompt,
word for word, and whose choices are the four letters (``acc``) or the four option texts
(``acc_norm``, ``acc_bytes``, ``acc_option``); lm-eval's picks are what its own
``process_results`` marks correct (:func:`ragft_dagster.benchmarks.bench.lmeval_score`).

Both move the prompt's trailing whitespace into the answer (lm-eval's ``_encode_pair``, our
``answer_tokens``), so the target delimiter is empty. The quickstart's generation prompt ends in
a newline that SmolLM2's tokenizer writes as a token of its own before every answer: lm-eval
counts that token's log-probability in each choice's log-likelihood, our scorer leaves it in
the context. So lm-eval's log-likelihood is ours plus one number per question, the same for its
four letters and four options: log p(newline | prompt), between -1.9e-3 and -1.2e-4 nats here.
The log-likelihoods are compared with it taken out (it is measured from the letters), and it
is checked to be that small: it changes no prediction here, but for a model unsure of the
newline it would tilt lm-eval's per-character ``acc_norm`` towards short options where ours
does not.

Offline: tests/conftest.py sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE; the task's data is a
JSONL file written under tmp_path and read with the ``json`` builder into a cache there.
"""

from __future__ import annotations

import math

import pytest

from . import test_real_model

pytestmark = pytest.mark.slow

# The quickstart's converted model and tokenizer, built as the real-model tests build them.
real = test_real_model.real

LOGLIK_TOLERANCE = 1e-3
METRICS = {  # our prediction field: the divisor of the option log-likelihood
    "predicted_norm": lambda text: len(text),
    "predicted_bytes": lambda text: len(text.encode("utf-8")),
    "predicted_option": lambda text: 1,
}


@pytest.fixture(scope="module")
def both(real, tmp_path_factory):
    """(questions, our records, lm-eval's log-likelihoods and picks per question id)."""
    import torch

    from ragft_dagster.benchmarks.bench import lmeval_model, lmeval_score, lmeval_tasks
    from ragft_dagster.evaluation.mcq import load_questions
    from ragft_dagster.evaluation.scoring import recipe_messages, score_local
    from ragft_dagster.models.loading import load_scoring_model
    from ragft_dagster.models.refs import LocalModels

    recipe, layout, tokenizer = real
    model_dir = LocalModels.of(recipe, layout).paths("base")[0]
    # every other question: half of lm-eval's minutes (it runs the prompt again per option)
    questions = load_questions(recipe.questions_path)[::2]
    hits: list[list[dict]] = [[] for _ in questions]
    messages = recipe_messages(recipe.evaluation, questions, hits)
    model, tok = load_scoring_model(
        model_dir, None, device="cpu", dtype=torch.float32, chat_template=recipe.chat_template
    )
    ours = score_local(
        questions, hits, messages, model, tok, batch_size=recipe.evaluation.batch_size, device="cpu"
    )
    del model
    # what score_local renders for the model, word for word
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]
    tasks = lmeval_tasks(questions, prompts, tmp_path_factory.mktemp("lmeval"))
    harness = lmeval_score(lmeval_model(model_dir, batch_size=8, dtype="float32"), tasks)
    assert sorted(harness) == sorted(q.id for q in questions)
    return questions, ours, harness


def _delimiter_logprob(rec: dict, letters: list[float]) -> list[float]:
    """Per letter, lm-eval's log-likelihood minus ours (our log-probability of a letter is its
    share of the A-D mass times that mass): each is log p(newline | prompt)."""
    return [
        ll - math.log(rec["probs"][letter] * rec["mass"])
        for letter, ll in zip("ABCD", letters, strict=True)
    ]


def test_option_log_likelihoods_match_lm_eval(both):
    """lm-eval's log-likelihood of every letter and option is ours plus the newline token's
    log-probability: one number per question, within 1e-3 (seen: 2e-5 for letters, 1.5e-4
    for options)."""
    questions, ours, harness = both
    worst = 0.0
    for q, rec in zip(questions, ours, strict=True):
        delimiter = _delimiter_logprob(rec, harness[q.id]["letters"])
        newline = sum(delimiter) / 4
        assert -0.01 < newline < 1e-4, (q.row, newline)  # a nearly certain token
        assert max(delimiter) - min(delimiter) < LOGLIK_TOLERANCE, (q.row, delimiter)
        for letter, ll in zip("ABCD", harness[q.id]["options"], strict=True):
            diff = ll - newline - rec["option_logprobs"][letter]
            worst = max(worst, abs(diff))
            assert abs(diff) < LOGLIK_TOLERANCE, (q.row, letter, diff)
    assert worst > 0  # two implementations, so not bit-identical: this compared real numbers


def test_letter_probabilities_match_lm_eval(both):
    """Renormalised over A-D, the letters' probabilities from lm-eval's log-likelihoods (the
    shared newline token's log-probability cancels out)."""
    questions, ours, harness = both
    for q, rec in zip(questions, ours, strict=True):
        lls = harness[q.id]["letters"]
        top = max(lls)
        norm = sum(math.exp(ll - top) for ll in lls)
        for letter, ll in zip("ABCD", lls, strict=True):
            assert rec["probs"][letter] == pytest.approx(
                math.exp(ll - top) / norm, abs=LOGLIK_TOLERANCE
            ), (q.row, letter)


@pytest.mark.parametrize("field", ["predicted", *METRICS])
def test_same_prediction_as_lm_eval_on_every_question(both, field):
    """The same answer on every question (lm-eval's pick is what its own ``process_results``
    marks correct), unless lm-eval's scores of the two answers are closer than the
    log-likelihood tolerance can tell apart (a near tie: the scores themselves are checked
    above)."""
    questions, ours, harness = both
    differ = []
    for q, rec in zip(questions, ours, strict=True):
        mine, theirs = "ABCD".index(rec[field]), "ABCD".index(harness[q.id][field])
        if mine == theirs:
            continue
        if field == "predicted":
            scores, scale = harness[q.id]["letters"], 1
        else:
            lengths = [METRICS[field](text) for text in q.options]
            scores = [ll / n for ll, n in zip(harness[q.id]["options"], lengths, strict=True)]
            scale = min(lengths[mine], lengths[theirs])
        if abs(scores[theirs] - scores[mine]) > 2 * LOGLIK_TOLERANCE / scale:
            differ.append((q.row, rec[field], harness[q.id][field]))
    assert differ == [], f"{field}: (row, ours, lm-eval) {differ}"
    # the predictions are not all one letter: the comparison could have failed
    assert len({rec[field] for rec in ours}) > 1
