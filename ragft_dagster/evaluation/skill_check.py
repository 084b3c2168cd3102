"""Does a derived specialist have its skill? Measured on its own held-out data (Dagster-free).

The merge is meant to carry a specialist's skill into the base; whether the specialist had the
skill at all is a question of its own data, not of the docs benchmark or the general set. So
the base and the specialist answer the same held-out problems of the skill set
(:func:`ragft_dagster.data.skills.skill_problems`: the training templates, another seed, none
of the training questions) the way the specialist learnt to: the problem as the user turn,
the reply generated greedily. A reply is right when its final number is the problem's result,
the way lm-evaluation-harness scores GSM8K ("The answer is N" when the reply says it, else its
last number: the harness's strict and flexible extractions). A multiple-choice read-out (the
option's log-likelihood right after the question) does not fit a model that was taught to
write the calculation first. The two are compared question by question with the exact
one-sided McNemar test: the specialist is expected to be better, and the direction was fixed
before looking.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ragft_dagster.data.skills import skill_problems
from ragft_dagster.stats import (
    expected_p,
    mcnemar_one_sided,
    whole,
    wilson_interval,
)

SKILL_EVAL_FILE = "skill_eval.json"
"""Written into the specialist's folder: the held-out comparison, for the report."""
ALPHA = 0.05
MAX_NEW_TOKENS = 48
"""Longest reply: a worked answer of the skill set is 10-30 tokens."""
BATCH_SIZE = 40
"""Problems a forward pass (left-padded): the prompts are short and of similar length, and on
a CPU a wide batch is what makes generating cheap (bfloat16, the quickstart's 40 problems:
base 11 s and the specialist 7 s in one batch, 14 s and 11 s in batches of 16)."""
METRIC = f"final number of the generated reply, up to {MAX_NEW_TOKENS} tokens"

_STATED = re.compile(r"answer is\s*\$?(-?[\d,]*\d)")
_NUMBER = re.compile(r"-?\d[\d,]*")


def final_number(reply: str) -> int | None:
    """The number a reply ends on: the one after "The answer is" when it says so, else its
    last number; None when it holds none."""
    stated = _STATED.findall(reply)
    found = stated[-1:] or _NUMBER.findall(reply)[-1:]
    if not found:
        return None
    try:
        return int(found[0].replace(",", ""))
    except ValueError:
        return None


def held_out_problems(
    skill: str, n: int, seed: int, training_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``n`` held-out problems of ``skill``, none of ``training_rows``'.

    The problems' seed is derived from the training seed (``seed + 1``), so another training
    seed gets another held-out set, and the same recipe always gets the same one.
    """
    return skill_problems(skill, n, seed + 1, exclude=training_rows)


def skill_credits(
    problems: list[dict[str, Any]], model: Any, tokenizer: Any, *, device: str
) -> tuple[list[float], dict[str, int]]:
    """One model's credit per held-out problem (1 when its reply's final number is the
    result), and counts: replies cut off at :data:`MAX_NEW_TOKENS`, replies that state "The
    answer is"."""
    from ragft_dagster.models.generation import generate_replies

    replies = generate_replies(
        model,
        tokenizer,
        [[{"role": "user", "content": p["question"]}] for p in problems],
        device=device,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=BATCH_SIZE,
    )
    credits = [
        float(final_number(r.text) == p["result"]) for p, r in zip(problems, replies, strict=True)
    ]
    counts = {
        "truncated": sum(r.truncated for r in replies),
        "stated": sum(bool(_STATED.search(r.text)) for r in replies),
    }
    return credits, counts


def compare_on_skill(
    base: list[float], specialist: list[float], *, skill: str, metric: str
) -> dict[str, Any]:
    """Base vs. specialist on the same held-out skill questions.

    Args:
        base: The base's credit per question (1/k for a correct option tied with k - 1 others).
        specialist: The specialist's, same questions, same order.
        skill: The skill's name, for the sentence.
        metric: The metric the credits are of, for the sentence.

    Returns:
        Accuracies with 95% Wilson intervals, the discordant counts, the one-sided exact
        McNemar p (its expectation over tie-breaks), ``gained`` (p < 0.05 and the specialist
        ahead) and a plain sentence saying what that means for the merge.
    """
    if len(base) != len(specialist) or not base:
        raise ValueError("base and specialist must answer the same, non-empty question set")
    n = len(base)
    only_spec = whole(sum(s * (1 - b) for b, s in zip(base, specialist, strict=True)))
    only_base = whole(sum(b * (1 - s) for b, s in zip(base, specialist, strict=True)))
    p = expected_p(specialist, base, mcnemar_one_sided)
    acc_b, acc_s = sum(base) / n, sum(specialist) / n
    gained = p < ALPHA and acc_s > acc_b
    figures = (
        f"{acc_s:.1%} vs. base {acc_b:.1%} on {n} held-out {skill} questions ({metric}; "
        f"{only_spec} right only by the specialist, {only_base} only by base; one-sided exact "
        f"McNemar p={p:.3f})"
    )
    if gained:
        sentence = (
            f"The specialist has its skill: {figures}. Whether the merge keeps it shows in the "
            "general set's arithmetic column."
        )
    else:
        sentence = (
            f"The specialist did not measurably gain its skill: {figures}, not significant at "
            f"{ALPHA:.0%}. The merge has no measured skill to carry; a longer or larger "
            "specialist run (specialist.examples, specialist.args) is the setting to change, "
            "judged on these held-out questions, never on the benchmark."
        )
    return {
        "skill": skill,
        "metric": metric,
        "questions": n,
        "base_accuracy": acc_b,
        "base_interval": list(wilson_interval(sum(base), n)),
        "specialist_accuracy": acc_s,
        "specialist_interval": list(wilson_interval(sum(specialist), n)),
        "only_specialist": only_spec,
        "only_base": only_base,
        "p_one_sided": p,
        "gained": gained,
        "sentence": sentence,
    }


def write_skill_eval(folder: Path, result: dict[str, Any]) -> None:
    (folder / SKILL_EVAL_FILE).write_text(json.dumps(result, indent=2))


def read_skill_eval(folder: Path) -> dict[str, Any] | None:
    path = folder / SKILL_EVAL_FILE
    return json.loads(path.read_text()) if path.is_file() else None
