"""Does a derived specialist have its skill? Measured on its own held-out data (Dagster-free).

The merge is meant to carry a specialist's skill into the base; whether the specialist had the
skill at all is a question of its own data, not of the docs benchmark or the general set. So
the base and the specialist answer the same held-out multiple-choice questions of the skill set
(:func:`ragft_dagster.data.skills.skill_questions`: the training templates, another seed, none
of the training questions), scored as the benchmark is scored (same prompt, same scorer), and
compared question by question with the exact one-sided McNemar test: the specialist is
expected to be better, and the direction was fixed before looking.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragft_dagster.data.skills import skill_questions
from ragft_dagster.evaluation.mcq import Question
from ragft_dagster.stats import (
    expected_p,
    mcnemar_one_sided,
    whole,
    wilson_interval,
)

SKILL_EVAL_FILE = "skill_eval.json"
"""Written into the specialist's folder: the held-out comparison, for the report."""
ALPHA = 0.05


def held_out_questions(
    skill: str, n: int, seed: int, training_rows: list[dict[str, Any]]
) -> list[Question]:
    """``n`` held-out multiple-choice questions of ``skill``, none of ``training_rows``'.

    The question set's seed is derived from the training seed (``seed + 1``), so another
    training seed gets another held-out set, and the same recipe always gets the same one.
    """
    rows = skill_questions(skill, n, seed + 1, exclude=training_rows)
    return [
        Question(
            id=f"{skill}-{i}",
            row=i + 1,
            question=r["question"],
            options=(r["a"], r["b"], r["c"], r["d"]),
            correct=r["correct"],
        )
        for i, r in enumerate(rows)
    ]


def skill_credits(
    ev: Any, questions: list[Question], model: Any, tokenizer: Any, *, metric: str, device: str
) -> list[float]:
    """One model's credit per held-out skill question under ``metric``, closed-book, with the
    benchmark's prompt (``ev``: the recipe's evaluation section) and scorer."""
    from ragft_dagster.evaluation.scoring import recipe_messages, score_local

    hits: list[list[dict[str, Any]]] = [[] for _ in questions]
    records = score_local(
        questions,
        hits,
        recipe_messages(ev, questions, hits),
        model,
        tokenizer,
        batch_size=ev.batch_size,
        device=device,
    )
    key = "is_correct" if metric == "acc" else f"is_correct_{metric.removeprefix('acc_')}"
    return [float(r[key]) for r in records]


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
