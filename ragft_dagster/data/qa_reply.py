"""An LLM's Q&A reply read tolerantly (Dagster-free): JSON (fenced, wrapped in an object, or a
fragment inside prose) or numbered ``Q:``/``A:`` text. The prompt is built in
:mod:`ragft_dagster.prompts`."""

from __future__ import annotations

import json
import re
from typing import Any


def parse_qa_reply(text: str) -> tuple[list[dict[str, str]], str]:
    """Parse an LLM reply into Q&A pairs, tolerating code fences, prose around JSON and
    plain ``Q:``/``A:`` text.

    Returns:
        (pairs, how) where ``how`` is ``json``, ``json_fragment``, ``text`` or ``failed``.
    """
    body = re.sub(r"```(?:json)?", "", text or "").strip()
    candidates = [(body, "json")]
    for open_c, close_c in (("[", "]"), ("{", "}")):
        i, j = body.find(open_c), body.rfind(close_c)
        if 0 <= i < j:
            candidates.append((body[i : j + 1], "json_fragment"))
    for candidate, how in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        pairs = _pairs_from_json(data)
        if pairs:
            return pairs, how
    # A reply cut off mid-JSON (finish_reason "length") still holds its complete objects.
    pairs = _pairs_from_json(_complete_json_objects(body))
    if pairs:
        return pairs, "json_partial"
    for m in re.finditer(
        r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]\s*(.+?)\s*\n\s*(?:A|Answer)\s*[:.]\s*"
        r"(.+?)(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]|\Z)",
        body,
        re.S | re.I,
    ):
        pairs.append({"question": m.group(1).strip(), "answer": m.group(2).strip()})
    return (pairs, "text") if pairs else ([], "failed")


def _complete_json_objects(text: str) -> list[Any]:
    """Every complete, outermost JSON object in ``text``, in order (a cut-off tail is left out)."""
    decoder = json.JSONDecoder()
    objects, pos = [], 0
    while (start := text.find("{", pos)) >= 0:
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1  # not a complete object from here: try the next brace inside it
            continue
        objects.append(obj)
    return objects


def _pairs_from_json(data: Any) -> list[dict[str, str]]:
    if isinstance(data, dict):
        for key in ("questions", "qa", "pairs", "items", "data"):
            if isinstance(data.get(key), list):
                return _pairs_from_json(data[key])
        data = [data]
    pairs = []
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            low = {str(k).lower(): v for k, v in item.items()}
            q = low.get("question", low.get("q"))
            a = low.get("answer", low.get("a"))
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                pairs.append({"question": q.strip(), "answer": a.strip()})
    return pairs
