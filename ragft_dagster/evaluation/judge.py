"""An LLM judge of open answers, and how far it can be trusted (Dagster-free).

Two fixed rubrics, each a binary verdict: ``correctness`` (the answer states the reference's
fact) and ``faithfulness`` (every statement of the answer is in the retrieved chunks). The
judge is asked through the one request runner (cached, budgeted, retried), with a JSON schema
where the server takes one (``structured_output``); a reply that names no verdict is
*unreadable*: counted, shown, and left out of every figure rather than guessed.

Its trust is measured, not assumed: on answers labelled by people, Cohen's kappa with a 95%
interval (statsmodels); on a sample judged twice (a second request, the same prompt), how often
it repeats itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragft_dagster.config.recipe import OpenJudgeRecipe
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import Endpoint, LlmStats, RequestBudget
from ragft_dagster.llm.runner import LlmRequest, run_requests
from ragft_dagster.prompts import render_prompt
from ragft_dagster.tables import read_csv

SECTION = "evaluation.open_answers.judge"
RUBRICS = {
    "correctness": ("correct", "incorrect"),
    "faithfulness": ("faithful", "unfaithful"),
}
"""Each rubric's (positive, negative) verdict."""


def verdict_format(rubric: str) -> dict[str, Any]:
    """The ``response_format`` of a rubric's reply: a verdict among its two words, a reason."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": f"{rubric}_verdict",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "verdict": {"type": "string", "enum": list(RUBRICS[rubric])},
                    "reason": {"type": "string"},
                },
                "required": ["verdict", "reason"],
                "additionalProperties": False,
            },
        },
    }


_OBJECT = re.compile(r"\{[^{}]*\}", re.S)


@dataclass(frozen=True)
class Verdict:
    value: bool | None
    """True: correct/faithful; False: incorrect/unfaithful; None: unreadable."""
    how: str
    """``json`` (a JSON object), ``word`` (the reply starts with the verdict) or
    ``unreadable``."""
    reason: str = ""
    reply: str = ""


def parse_verdict(text: str, rubric: str) -> Verdict:
    """A judge's reply as a verdict: the first JSON object whose ``verdict`` is one of the
    rubric's two words (code fences and prose around it ignored), else a reply whose first word
    is one of them; anything else is unreadable (never guessed from a word inside prose)."""
    positive, negative = RUBRICS[rubric]
    for match in _OBJECT.finditer(text or ""):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        value = str(data.get("verdict", "")).strip().lower() if isinstance(data, dict) else ""
        if value in (positive, negative):
            return Verdict(value == positive, "json", str(data.get("reason", ""))[:300], text)
    first = re.match(r"\W*(\w+)", (text or "").lower())
    if first and first.group(1) in (positive, negative):
        return Verdict(first.group(1) == positive, "word", "", text)
    return Verdict(None, "unreadable", "", text)


@dataclass(frozen=True)
class JudgeTask:
    """One verdict to ask for: ``index`` says where it goes, ``round`` > 0 asks again."""

    index: Any
    rubric: str
    question: str
    answer: str
    reference: str = ""
    context: str = ""
    round: int = 0


@dataclass
class JudgeRun:
    """Verdicts by task index, and what asking for them cost."""

    verdicts: dict[Any, Verdict]
    stats: LlmStats
    structured_refused: str | None = None

    @property
    def unreadable(self) -> int:
        return sum(v.value is None for v in self.verdicts.values())

    def figures(self) -> dict[str, Any]:
        hows = [v.how for v in self.verdicts.values()]
        return {
            "judge_verdicts": len(hows),
            "judge_unreadable": hows.count("unreadable"),
            "judge_json": hows.count("json"),
            "judge_word": hows.count("word"),
            "judge_requests": self.stats.requests,
            "judge_cache_hits": self.stats.cache_hits,
            "judge_off_schema": self.stats.off_schema,
            "judge_truncated": self.stats.truncated,
            "judge_tokens": self.stats.prompt_tokens + self.stats.completion_tokens,
        }


def run_judge(
    tasks: list[JudgeTask],
    judge: OpenJudgeRecipe,
    *,
    client: Any,
    cache: ReplyCache,
    sleep: Callable[[float], None] = time.sleep,
) -> JudgeRun:
    """Ask the judge for every task's verdict (cached ones are not asked again).

    Every reply is cached by (judge model, endpoint, rubric prompt as sent, max_tokens, round)
    the moment it arrives: an unchanged answer is never judged twice, and a rerun after a
    failure or a spent budget continues where it stopped.

    Raises:
        BudgetExceeded: ``judge.budget`` would be crossed.
        LlmCallError: The endpoint failed in a way retrying did not fix.
    """
    stats = LlmStats()
    where = str(getattr(client, "base_url", ""))
    replies: dict[Any, dict[str, Any]] = {}
    todo: list[LlmRequest] = []
    rubric_of: dict[Any, str] = {}
    for task in tasks:
        rubric_of[task.index] = task.rubric
        template = (
            judge.correctness_prompt if task.rubric == "correctness" else judge.faithfulness_prompt
        )
        prompt = render_prompt(
            template,
            question=task.question,
            answer=task.answer,
            reference=task.reference,
            context=task.context,
        )
        key = ReplyCache.key(
            kind="open_judge",
            endpoint=where,
            model=judge.model,
            prompt=hashlib.sha256(prompt.encode()).hexdigest(),
            max_tokens=judge.max_tokens,
            round=task.round,
        )
        if (hit := cache.get(key)) is not None:
            stats.cache_hits += 1
            replies[task.index] = hit
            continue
        schema = (
            {"response_format": verdict_format(task.rubric)}
            if judge.structured_output != "off"
            else {}
        )
        request = {
            "model": judge.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": judge.max_tokens,
            **schema,
        }
        todo.append(LlmRequest(task.index, key, request))
    endpoint = Endpoint(client, judge, SECTION, sleep, structured=judge.structured_output)
    if todo:
        replies.update(
            run_requests(
                todo,
                endpoint,
                cache,
                concurrency=judge.max_concurrency,
                budget=RequestBudget(judge.budget.max_requests, judge.budget.max_tokens, SECTION),
                stats=stats,
                cached=len(tasks) - len(todo),
                total=len(tasks),
                what="the open-answer judge: ",
            )
        )
    verdicts = {}
    for index, reply in replies.items():
        verdict = parse_verdict(reply.get("content", ""), rubric_of[index])
        if reply.get("structured") and verdict.how != "json":
            stats.off_schema += 1
        if reply.get("finish_reason") == "length":
            stats.truncated += 1
        verdicts[index] = verdict
    return JudgeRun(verdicts, stats, endpoint.structured_refused)


class LabelsError(ValueError):
    """A judge-label file problem; names the file, row and column and the fix."""


LABEL_COLUMNS = ("question", "reference", "answer", "label")


@dataclass(frozen=True)
class LabelledAnswer:
    row: int
    question: str
    reference: str
    answer: str
    correct: bool
    """The person's label."""


def load_labels(path: Path) -> list[LabelledAnswer]:
    """Read ``question,reference,answer,label`` (label ``correct`` or ``incorrect``).

    Raises:
        LabelsError: Naming the file, the row and the column, and the fix.
    """
    table = read_csv(
        path,
        LabelsError,
        what="judge label file",
        key="evaluation.open_answers.judge.labels",
        header=",".join(LABEL_COLUMNS),
        required=LABEL_COLUMNS,
        value_noun="a question or answer",
    )
    out = []
    for row in table.rows:
        where = f"{path}: row {row.number} ({row.lines})"
        for col in LABEL_COLUMNS:
            if not row.values.get(col):
                raise LabelsError(f"{where}: column '{col}' is empty; fill it in")
        label = row.values["label"].lower()
        if label not in RUBRICS["correctness"]:
            raise LabelsError(
                f"{where}: column 'label' is {row.values['label']!r}; it must be correct or "
                "incorrect"
            )
        v = row.values
        out.append(
            LabelledAnswer(
                row.number, v["question"], v["reference"], v["answer"], label == "correct"
            )
        )
    if not out:
        raise LabelsError(f"{path}: no labelled answers below the header")
    return out


def kappa(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Cohen's kappa of two binary raters with its 95% interval (statsmodels
    ``cohens_kappa``, asymptotic standard error, clipped to [-1, 1]), the raw agreement and
    the 2x2 table.

    Args:
        pairs: (rater 1, rater 2) per item.

    Returns:
        ``n``, ``agreement``, ``kappa``, ``kappa_ci_low``/``kappa_ci_high`` (NaN when
        undefined: fewer than two items, or both raters constant) and ``table``
        (rows rater 1 true/false, columns rater 2 true/false).
    """
    import numpy as np
    from statsmodels.stats.inter_rater import cohens_kappa

    table = np.zeros((2, 2), dtype=int)
    for a, b in pairs:
        table[0 if a else 1, 0 if b else 1] += 1
    n = len(pairs)
    out: dict[str, Any] = {
        "n": n,
        "agreement": float(np.trace(table) / n) if n else float("nan"),
        "table": table.tolist(),
        "kappa": float("nan"),
        "kappa_ci_low": float("nan"),
        "kappa_ci_high": float("nan"),
    }
    expected = (table.sum(1) @ table.sum(0)) / n**2 if n else 1.0
    if n >= 2 and expected < 1:
        with warnings.catch_warnings():
            # its z test divides by a null SE that is 0 at perfect agreement; unused here
            warnings.simplefilter("ignore", RuntimeWarning)
            res = cohens_kappa(table)
        # the asymptotic interval can leave [-1, 1] at small n: kappa cannot
        out.update(
            kappa=float(res.kappa),
            kappa_ci_low=max(-1.0, float(res.kappa_low)),
            kappa_ci_high=min(1.0, float(res.kappa_upp)),
        )
    return out


def judge_agreement(
    labels: list[LabelledAnswer],
    judge: OpenJudgeRecipe,
    *,
    client: Any,
    cache: ReplyCache,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The judge's correctness verdicts on the hand-labelled answers, compared with the labels;
    the first ``judge.repeat`` of them judged a second time for self-consistency.

    Returns:
        ``human`` (:func:`kappa` of label vs. verdict over the readable verdicts),
        ``self_consistency`` (:func:`kappa` of the first vs. the second verdict where both are
        readable, plus ``asked_twice`` and ``unreadable``), ``unreadable`` (labelled answers
        without a readable first verdict), ``rows`` (each answer with its label and verdicts)
        and the request figures.
    """
    tasks = [
        JudgeTask((i, 0), "correctness", a.question, a.answer, reference=a.reference)
        for i, a in enumerate(labels)
    ]
    twice = list(range(min(judge.repeat, len(labels))))
    tasks += [
        JudgeTask(
            (i, 1), "correctness", labels[i].question, labels[i].answer, labels[i].reference, "", 1
        )
        for i in twice
    ]
    run = run_judge(tasks, judge, client=client, cache=cache, sleep=sleep)
    first = [run.verdicts[(i, 0)] for i in range(len(labels))]
    human = kappa(
        [(a.correct, v.value) for a, v in zip(labels, first, strict=True) if v.value is not None]
    )
    repeats = [(run.verdicts[(i, 0)].value, run.verdicts[(i, 1)].value) for i in twice]
    readable = [(a, b) for a, b in repeats if a is not None and b is not None]
    consistency = {
        **kappa(readable),
        "asked_twice": len(twice),
        "unreadable": len(repeats) - len(readable),
    }
    rows = [
        {
            "row": a.row,
            "question": a.question,
            "answer": a.answer,
            "label": "correct" if a.correct else "incorrect",
            "verdict": _word(v.value, "correctness"),
            "again": _word(run.verdicts[(i, 1)].value, "correctness") if i in twice else None,
        }
        for i, (a, v) in enumerate(zip(labels, first, strict=True))
    ]
    return {
        "model": judge.model,
        "labelled": len(labels),
        "unreadable": sum(v.value is None for v in first),
        "human": human,
        "self_consistency": consistency,
        "rows": rows,
        "structured_refused": run.structured_refused,
        **run.figures(),
    }


def _word(value: bool | None, rubric: str) -> str:
    if value is None:
        return "unreadable"
    return RUBRICS[rubric][0 if value else 1]
