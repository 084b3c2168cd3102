"""Deterministic skill sets for deriving a specialist model (Dagster-free).

The published method merges a base model with specialists that were fine-tuned on one skill
(MetaMath-Mistral-7B on math word problems). When only one pretrained model is at hand, the
``specialist`` recipe section derives such a specialist from it with a short fine-tune on a skill
set generated here: the same seed always gives the same rows, so the specialist is cached and
keyed like every artifact.

``arithmetic``: short word problems (sums, differences, products, shares, percentages, rates) and
unit conversions (km/m, kg/g, hours/minutes, litres/ml), each answered with the worked
calculation and a final "The answer is N." line, in chat ``messages`` format.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

SKILLS = ("arithmetic",)
"""Skill sets :func:`skill_rows` can generate."""
# Bump when a template below changes: the rows, hence the specialist's key, change.
SKILL_SET_VERSION = "1"

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi")
_ITEMS = ("apples", "books", "pens", "stamps", "marbles", "cards", "shells", "stickers")
_CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("crate", "crates"), ("shelf", "shelves"))
_UNITS = (
    ("kilometres", "metres", 1000, "1 km = 1000 m"),
    ("kilograms", "grams", 1000, "1 kg = 1000 g"),
    ("litres", "millilitres", 1000, "1 L = 1000 ml"),
    ("hours", "minutes", 60, "1 hour = 60 minutes"),
    ("minutes", "seconds", 60, "1 minute = 60 seconds"),
    ("metres", "centimetres", 100, "1 m = 100 cm"),
)


@dataclass(frozen=True)
class _Problem:
    question: str
    work: str
    """The worked calculation, ending in ``= result``."""
    result: int

    @property
    def answer(self) -> str:
        return f"{self.work}. The answer is {self.result}."


def _total(rng: random.Random) -> _Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(5, 90), rng.randint(2, 60)
    c = rng.randint(1, a + b - 1)
    q = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} are left?"
    r = a + b - c
    return _Problem(q, f"{a} + {b} - {c} = {r}", r)


def _product(rng: random.Random) -> _Problem:
    (one, many), item = rng.choice(_CONTAINERS), rng.choice(_ITEMS)
    a, b = rng.randint(3, 25), rng.randint(2, 12)
    q = f"Each {one} holds {a} {item}. How many {item} are in {b} {many}?"
    return _Problem(q, f"{b} x {a} = {a * b}", a * b)


def _share(rng: random.Random) -> _Problem:
    item = rng.choice(_ITEMS)
    people, each = rng.randint(2, 12), rng.randint(2, 15)
    total = people * each
    q = f"{total} {item} are shared equally among {people} friends. How many does each get?"
    return _Problem(q, f"{total} / {people} = {each}", each)


def _percent(rng: random.Random) -> _Problem:
    pct = rng.choice((10, 20, 25, 50, 75))
    base = rng.randint(2, 40) * (100 // _gcd(pct, 100))
    result = base * pct // 100
    q = f"What is {pct}% of {base}?"
    work = f"{pct}% of {base} = {base} x {pct} / 100 = {result}"
    return _Problem(q, work, result)


def _rate(rng: random.Random) -> _Problem:
    speed, hours = rng.randint(3, 90), rng.randint(2, 9)
    q = f"A cyclist rides at {speed} km per hour for {hours} hours. How many km does she ride?"
    r = speed * hours
    return _Problem(q, f"{speed} x {hours} = {r}", r)


def _convert(rng: random.Random) -> _Problem:
    big, small, factor, fact = rng.choice(_UNITS)
    n = rng.randint(2, 15)
    if rng.random() < 0.5:
        q = f"How many {small} are in {n} {big}?"
        r = n * factor
        return _Problem(q, f"{fact}, so {n} x {factor} = {r}", r)
    q = f"How many {big} are {n * factor} {small}?"
    work = f"{fact}, so {n * factor} / {factor} = {n}"
    return _Problem(q, work, n)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


_TEMPLATES: tuple[Callable[[random.Random], _Problem], ...] = (
    _total,
    _product,
    _share,
    _percent,
    _rate,
    _convert,
)


def _problems(skill: str, n: int, seed: int, exclude: Collection[str] = ()) -> list[_Problem]:
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; one of {list(SKILLS)}")
    rng = random.Random(f"{skill}:{seed}")
    found: list[_Problem] = []
    seen = set(exclude)
    for _ in range(n * 20):  # bounded: the templates have far more distinct questions
        if len(found) == n:
            break
        problem = rng.choice(_TEMPLATES)(rng)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        found.append(problem)
    return found


def skill_rows(skill: str, examples: int, seed: int = 0) -> list[dict[str, Any]]:
    """``examples`` distinct rows of a skill set in chat ``messages`` format.

    Args:
        skill: One of :data:`SKILLS`.
        examples: How many rows.
        seed: The same seed always gives the same rows.

    Returns:
        ``[{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}, ...]``.

    Raises:
        ValueError: An unknown skill.
    """
    return [
        {
            "messages": [
                {"role": "user", "content": p.question},
                {"role": "assistant", "content": p.answer},
            ]
        }
        for p in _problems(skill, examples, seed)
    ]


def skill_problems(
    skill: str, n: int, seed: int, exclude: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """A held-out set of a skill's problems with their results, to measure a specialist on its
    own data (never on a benchmark's questions): the same templates, another seed.

    Args:
        skill: One of :data:`SKILLS`.
        n: How many problems.
        seed: Use another seed than the training rows'.
        exclude: Training rows (:func:`skill_rows`) whose questions must not appear.

    Returns:
        Rows ``{"question", "answer", "result"}``: the worked answer the training rows would
        give and its final number.
    """
    taken = {r["messages"][0]["content"] for r in exclude}
    return [
        {"question": p.question, "answer": p.answer, "result": p.result}
        for p in _problems(skill, n, seed, taken)
    ]
