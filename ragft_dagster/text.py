"""Text helpers every layer uses (Dagster-free, no imports of ours): how two texts are found to
be the same, and which of their words carry meaning. Data preparation, contamination checks,
the SFT split and the benchmark's diagnosis all compare texts the same way."""

from __future__ import annotations

import hashlib
import re

_WORDS = re.compile(r"\w+")

_STOP = frozenset(
    _WORDS.findall(
        "a an and are as at be by can do does for from has have how in is it its of on or the "
        "that this to what when where which who why will with you your"
    )
)


def fold(text: str) -> str:
    """Lower case, whitespace collapsed: how two questions are found to be the same question
    (benchmark duplicates, SFT duplicates and the SFT split hash)."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: ``"Key-value heads?"`` -> ``["key", "value",
    "heads"]``."""
    return _WORDS.findall(text.lower())


def content_words(text: str) -> set[str]:
    """The words that carry meaning (common function words dropped), as a set."""
    return {w for w in words(text) if w not in _STOP}


def content_hash(data: bytes) -> str:
    """A document's content identity: the one definition the folder scan (the file's bytes)
    and ``doc_chunks`` (the text it read, encoded) both use, so they agree.

    What reading drops does not count: a UTF-8 byte-order mark, and Windows (CRLF) or old Mac
    (CR) line endings, which are the same text as LF. A page saved with a mark or by a Windows
    editor is not "changed" on every run.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return hashlib.sha256(data).hexdigest()
