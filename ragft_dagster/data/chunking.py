"""Markdown-aware chunking in the base model's tokenizer (Dagster-free).

A document is first reduced to the text a reader sees (:func:`strip_markup`): YAML front matter
is read (its ``title`` becomes the root of every heading path) and dropped, and outside code
blocks so are HTML/MDX tags (their inner text stays), HTML comments and MDX ``import``/``export``
statements, as on a Docusaurus page. Code blocks are kept line for line. The text is then split
at headings into sections (each keeps its heading path); a section longer than ``chunk_size``
tokens is cut into windows of ``chunk_size`` tokens that overlap by ``chunk_overlap`` tokens. A
chunk never spans two sections or two files, its id is a hash of its document and text, so ids
are stable across runs and partitions, and its character offsets point into the original file.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import UnreadableText, read_utf8

# A UTF-8 byte order mark (Windows editors) must not hide the first heading.
_HEADING = re.compile(r"^\ufeff?(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
# Front matter opens the file (after a byte order mark) and closes at the next --- or ... line.
_FRONT_MATTER = re.compile(
    r"\A\ufeff?---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S | re.M
)
# Cheap test for the markup strip_markup removes: most pages have none and skip the slow path.
_MARKUP_HINT = re.compile(r"<[A-Za-z/!]|\{#|\{/\*|^(?:import|export)\s|^[ \t]*:::", re.M)
# A JSX {expression} in a tag's attributes, with up to three levels of braces inside
# (values={[{label: 'Linux', value: 'linux'}]}, style={{margin: 0}}).
_JSX_EXPRESSION = r"\{(?:[^{}]|\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\})*\}"
# Markup in prose. Inline code comes first so that `<placeholder>` inside backticks is skipped
# over, never stripped. A tag's attributes may hold quoted strings and JSX {expressions}.
_MARKUP = re.compile(
    r"(?P<code>(?P<ticks>`+)[^\n]*?(?P=ticks))"
    r"|(?P<comment><!--.*?-->|\{/\*.*?\*/\})"
    r"|(?P<tag></?[A-Za-z][\w.-]*(?:\s(?:[^<>\"'{}]|\"[^\"\n]*\"|'[^'\n]*'|"
    + _JSX_EXPRESSION
    + r"){0,2000})?/?>)"
    r"|(?P<anchor>[ \t]*\{#[\w.:-]+\}[ \t]*$)"  # Docusaurus heading id: ## Install {#install}
    r"|(?P<admonition>^[ \t]*:::[\w-]*(?:\[(?=[^\]\n]*\][ \t]*$))?)"  # :::note / :::tip[Title
    r"|(?P<title_end>(?<=[^\n\]])\](?=[ \t]*$))",  # the ] after an admonition's title
    re.S | re.M,
)
_ADMONITION_TITLE = re.compile(r"[ \t]*:::[\w-]*\[[^\]\n]*\][ \t]*$", re.M)
_MDX_IMPORT = re.compile(
    r"^import[ \t]+(?:[\w*{}\s,]{1,2000}?\sfrom[ \t]+)?(['\"])[^'\"\n]+\1;?[ \t]*(?:\n|\Z)", re.M
)
_MDX_EXPORT = re.compile(
    r"^export[ \t]+(?:default|const|let|var|function|class|async)\b|^export[ \t]*\{", re.M
)

# A section longer than this is tokenised in blocks cut at line ends. One tokenizer call over
# a whole section needs ~200 bytes of memory per character (a 5 MB section: 1.1 GB, so ~11 GB
# for 50 MB); in blocks a 50 MB section takes ~300 MB and about a minute on 2 cores. Shorter
# sections (all real ones: ~8,000 tokens) are tokenised whole, exactly as before.
BLOCK_CHARS = 32_768
_BLOCKS_PER_CALL = 32


class DocumentError(ValueError):
    """A document that cannot be chunked; the message names the file."""


@dataclass
class Section:
    heading_path: list[str]
    text: str
    start: int  # character offset of the section body in the document


@dataclass
class Chunk:
    id: str
    doc: str
    heading_path: list[str]
    text: str
    n_tokens: int
    start_char: int
    end_char: int
    position: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_id(doc: str, text: str) -> str:
    """A content hash: the same text in the same document always gets the same id."""
    return hashlib.sha256(f"{doc}\n{text}".encode()).hexdigest()[:24]


def read_document(path: Path, doc_key: str) -> str:
    """Read a text document (markdown, MDX, reStructuredText, plain text) with
    :func:`~ragft_dagster.artifacts.read_utf8` (a byte-order mark dropped; line endings made LF),
    with errors that name the file and say what to do.

    Raises:
        DocumentError: The file is gone, unreadable, binary (NUL bytes: an image, a PDF, UTF-16
            text) or not valid UTF-8; the message names the file, where, and the fix.
    """
    try:
        text = read_utf8(path, binary_check=True)
    except UnreadableText as exc:
        raise unreadable_document(exc, path, doc_key) from None
    # Windows and old Mac line endings are the same text (and the same content hash)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def unreadable_document(exc: UnreadableText, path: Path, doc_key: str) -> DocumentError:
    """The :class:`DocumentError` for a document that could not be read as text: names the
    file, what is wrong and the fix."""
    message = {
        "missing": f"document not found at {path} (was it deleted?)",
        "unreadable": f"cannot read {path} ({exc.detail}); fix it or remove it from the "
        "docs folder",
        "utf16": f"{path} is UTF-16 text; re-save it as UTF-8 (documents must be UTF-8)",
        "binary": f"{path} looks like a binary file, not a text document ({exc.detail}); remove "
        "it from the docs folder or narrow docs.glob in the recipe",
        "encoding": f"{path} is not valid UTF-8 ({exc.detail}, line {exc.line}); re-save "
        "the file as UTF-8",
    }[exc.problem]
    return DocumentError(f"{doc_key}: {message}")


def empty_document_warning(doc_key: str, text: str, *, markup: bool = True) -> str | None:
    """The warning for a document with no text (zero chunks, so no Q&A and nothing indexed),
    or None when it has some. An empty page is valid (a stub, a placeholder): its partition
    succeeds rather than blocking every downstream asset, and this says why it adds nothing.

    ``markup`` as in :func:`chunk_document`: False for text that a converter wrote, which has no
    front matter or tags to see through."""
    if not text.strip():
        what = "is empty" if not text else "holds only whitespace"
    elif not markup:
        return None
    else:
        try:
            if strip_markup(text, doc_key).text.strip():
                return None
        except DocumentError:
            return None  # chunking names the broken front matter
        what = "holds only front matter and markup (no text a reader sees)"
    return (
        f"{doc_key} {what}: 0 chunks, so no Q&A and nothing in the index; write the page or "
        "remove it from the docs folder"
    )


@dataclass(frozen=True)
class CleanDocument:
    """A document as it is chunked: the text a reader sees, and where each run of it came from.

    ``runs`` holds one ``(clean offset, original offset)`` pair where each kept run of the
    original starts, so offsets in ``text`` map back to the file (one pair when nothing was
    removed).
    """

    text: str
    title: str | None = None
    """The front matter's ``title``: the root of every heading path."""
    runs: tuple[tuple[int, int], ...] = ((0, 0),)

    def original_offset(self, offset: int) -> int:
        """The offset in the original document of the character at ``offset`` in ``text``."""
        clean, original = self.runs[bisect_right(self.runs, (offset, float("inf"))) - 1]
        return original + offset - clean

    def original_end(self, end: int) -> int:
        """The original offset just after ``text[:end]`` (not after markup removed there)."""
        return self.original_offset(end - 1) + 1 if end > 0 else self.original_offset(0)


def strip_markup(text: str, doc: str = "document") -> CleanDocument:
    """The text of a markdown (or MDX) page as a reader sees it.

    YAML front matter is read and dropped; outside fenced code blocks, HTML/MDX tags (their inner
    text stays), HTML and MDX comments, MDX ``import``/``export`` statements, heading ids
    (``{#id}``) and admonition fences (``:::note``) are dropped too, and a line left blank by that
    is removed. Code blocks are never touched, so their lines and indentation stay as written.

    Args:
        text: The document.
        doc: Its key, named in errors.

    Returns:
        The cleaned text, the front matter's title, and the map back to ``text``'s offsets.

    Raises:
        DocumentError: The front matter is not valid YAML (the message names the document and
            the line).
    """
    title, body_start = _front_matter(text, doc)
    if body_start == 0 and not _MARKUP_HINT.search(text):
        return CleanDocument(text)
    removed: list[tuple[int, int]] = [(0, body_start)] if body_start else []
    offset, block_start, fence = body_start, body_start, ""
    for line in text[body_start:].splitlines(keepends=True):
        if fence:
            if _closes_fence(line, fence):
                fence, block_start = "", offset + len(line)
        elif m := _FENCE.match(line):
            removed += _prose_markup(text, block_start, offset)
            fence = m.group(1)
        offset += len(line)
    if not fence:
        removed += _prose_markup(text, block_start, len(text))
    pieces: list[str] = []
    runs: list[tuple[int, int]] = []
    at = 0
    for start, end in _complement(_merge(sorted(removed)), len(text)):
        if start > 0 and (at == 0 or "".join(pieces[-2:]).endswith("\n\n")):
            # Where markup was cut out between blank lines (or at the top), its blank lines
            # would pile up: keep one.
            start = _after_blank_lines(text, start, end)
        if start < end:
            runs.append((at, start))
            pieces.append(text[start:end])
            at += end - start
    return CleanDocument("".join(pieces), title, tuple(runs) or ((0, 0),))


def _after_blank_lines(text: str, start: int, end: int) -> int:
    """``start`` moved past the whitespace-only lines that begin ``text[start:end]``."""
    while start < end:
        line_end = text.find("\n", start, end)
        if line_end < 0 or text[start:line_end].strip():
            break
        start = line_end + 1
    return start


def front_matter(text: str, doc: str = "document") -> tuple[dict[str, Any], int]:
    """The YAML front matter a page opens with, and the offset where its body starts
    (``({}, 0)`` for a page without; a ``---`` rule around plain text is not front matter).

    Raises:
        DocumentError: The front matter is not valid YAML (naming the document and the line).
    """
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}, 0
    import yaml

    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise DocumentError(
            f"{doc}: its front matter (the --- block at the top) is not valid YAML ({problem}"
            f"{where}); fix it, or remove the --- lines if the page has no front matter"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return {}, 0  # a --- rule around plain text, not front matter
    return data, m.end()


def _front_matter(text: str, doc: str) -> tuple[str | None, int]:
    """(title, offset where the body starts) of a page that opens with YAML front matter;
    (None, 0) for a page without."""
    data, body_start = front_matter(text, doc)
    title = data.get("title")
    title = str(title).strip() if isinstance(title, str | int | float) else ""
    return title or None, body_start


def _closes_fence(line: str, fence: str) -> bool:
    """Whether ``line`` closes a code block opened by ``fence`` (same character, at least as
    long, nothing after it): a ```` ```python ```` line inside a ```` ```` ```` block does not."""
    mark = line.strip()
    return mark.startswith(fence) and mark == fence[0] * len(mark)


def _prose_markup(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of ``text[start:end]`` (prose, no code block) that hold markup, plus the lines that
    removing it leaves blank."""
    spans: list[tuple[int, int]] = []
    for m in _MARKUP.finditer(text, start, end):
        if m.lastgroup == "code":
            continue
        if m.lastgroup == "tag" and "\n\n" in m.group():
            continue  # a stray '<' in one paragraph and a '>' in another: not a tag
        if m.lastgroup == "title_end" and not _ADMONITION_TITLE.match(
            text, text.rfind("\n", 0, m.start()) + 1
        ):
            continue  # a ] ending any other line is text
        spans.append(m.span())
    for m in _MDX_IMPORT.finditer(text, start, end):
        spans.append(m.span())
    for m in _MDX_EXPORT.finditer(text, start, end):
        spans.append((m.start(), _statement_end(text, m.start(), end)))
    if not spans:
        return []
    spans = _merge(sorted(spans))
    starts = [a for a, _ in spans]
    # A line that held only markup goes entirely, so wrappers leave no runs of blank lines.
    lines: set[tuple[int, int]] = set()
    for a, b in spans:
        line_start = text.rfind("\n", 0, a) + 1
        while line_start < b:
            line_end = text.find("\n", line_start, end)
            line_end = end if line_end < 0 else line_end + 1
            lines.add((line_start, line_end))
            line_start = line_end
    blank = []
    for line_start, line_end in sorted(lines):
        near = spans[max(bisect_right(starts, line_start) - 1, 0) : bisect_right(starts, line_end)]
        if not any(text[a:b].strip() for a, b in _complement(near, line_end, line_start)):
            blank.append((line_start, line_end))
    return _merge(sorted(spans + blank))


def _statement_end(text: str, start: int, end: int) -> int:
    """Where an MDX ``export`` statement starting at ``start`` ends: after the line on which its
    brackets balance (an object or function body may span lines)."""
    depth = 0
    for i in range(start, end):
        ch = text[i]
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == "\n" and depth <= 0:
            return i + 1
    return end


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _complement(spans: list[tuple[int, int]], end: int, start: int = 0) -> list[tuple[int, int]]:
    """The ranges of ``[start, end)`` outside the sorted ``spans``."""
    out, at = [], start
    for a, b in spans:
        a, b = max(a, start), min(b, end)
        if a >= b:
            continue
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < end:
        out.append((at, end))
    return out


def split_sections(text: str, title: str | None = None) -> list[Section]:
    """Split markdown at ATX headings outside code fences, tracking the heading path.

    Args:
        text: The markdown, without front matter (see :func:`strip_markup`).
        title: The page's title from its front matter: the root of every heading path (a
            level-1 heading with the same text is that root, not a level below it).

    Returns:
        The sections that hold text, in document order.
    """
    sections: list[Section] = []
    root = [(0, title)] if title else []
    path: list[tuple[int, str]] = list(root)
    body_start = 0
    fence = ""
    offset = 0
    lines = text.splitlines(keepends=True)

    def close(end: int) -> None:
        body = text[body_start:end]
        if body.strip():
            sections.append(Section([h for _, h in path], body, body_start))

    for line in lines:
        match = None
        if fence:
            if _closes_fence(line, fence):
                fence = ""
        elif m := _FENCE.match(line):
            fence = m.group(1)
        else:
            match = _HEADING.match(line.rstrip("\n"))
        if match:
            close(offset)
            level, heading = len(match.group(1)), match.group(2).strip()
            if level == 1 and title and _same_heading(heading, title):
                path = list(root)
            else:
                path = [(lv, t) for lv, t in path if lv < level] + [(level, heading)]
            body_start = offset  # the heading line stays in its section's text
        offset += len(line)
    close(len(text))
    return sections


def _same_heading(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def chunk_document(
    text: str,
    doc: str,
    tokenizer: Any,
    chunk_size: int = 300,
    chunk_overlap: int = 30,
    *,
    markup: bool = True,
    title: str | None = None,
) -> list[Chunk]:
    """Chunk one markdown document (front matter, HTML/MDX markup and comments removed first,
    see :func:`strip_markup`).

    Args:
        text: The document, as read from its file, or as a converter wrote it
            (:mod:`ragft_dagster.data.convert`).
        doc: Its key (path relative to the docs folder), stored on every chunk.
        tokenizer: A fast tokenizer (offsets are used to cut the original text exactly).
        chunk_size: Tokens per chunk.
        chunk_overlap: Tokens shared by consecutive windows of one section.
        markup: Whether ``text`` is a page as its author wrote it, whose front matter and tags
            are removed. False for a converter's markdown (and plain text): nothing is removed,
            so a ``<name>`` placeholder in a PDF's prose stays; its ``#`` headings still split.
        title: The root of every heading path when ``markup`` is False (a page's own front
            matter gives it otherwise).

    Returns:
        Chunks in document order; their offsets point into ``text``.

    Raises:
        DocumentError: The front matter is not valid YAML.
    """
    if chunk_overlap >= chunk_size:
        raise ValueError("chunk_overlap must be smaller than chunk_size")
    chunks: list[Chunk] = []
    step = chunk_size - chunk_overlap
    page = strip_markup(text, doc) if markup else CleanDocument(text, title)
    for section in split_sections(page.text, page.title):
        starts_at, ends_at = _token_offsets(tokenizer, section.text)
        n = len(starts_at)
        starts = [0] if n <= chunk_size else list(range(0, n - chunk_overlap, step))
        for s in starts:
            e = min(s + chunk_size, n)
            lo = starts_at[s] if s > 0 else 0
            hi = ends_at[e - 1] if e < n else len(section.text)
            piece = section.text[lo:hi].strip()
            if not piece:
                continue
            chunks.append(
                Chunk(
                    id=chunk_id(doc, piece),
                    doc=doc,
                    heading_path=section.heading_path,
                    text=piece,
                    n_tokens=e - s,
                    start_char=page.original_offset(section.start + lo),
                    end_char=page.original_end(section.start + hi),
                    position=len(chunks),
                )
            )
    # Identical text twice in one document is one chunk (same id, same content).
    unique: dict[str, Chunk] = {}
    for c in chunks:
        unique.setdefault(c.id, c)
    return list(unique.values())


def _blocks(text: str) -> Iterator[tuple[int, str]]:
    """``text`` in pieces of at most :data:`BLOCK_CHARS`, cut after a newline (else a space)
    where there is one in the second half of the block: (offset, piece)."""
    start = 0
    while start < len(text):
        end = start + BLOCK_CHARS
        if end < len(text):
            half = start + BLOCK_CHARS // 2
            cut = text.rfind("\n", half, end)
            if cut < 0:
                cut = text.rfind(" ", half, end)
            end = cut + 1 if cut >= 0 else end
        yield start, text[start:end]
        start = end


def _token_offsets(tokenizer: Any, text: str) -> tuple[Any, Any]:
    """(start, end) character offsets of every token of ``text``, as two sequences."""
    if len(text) <= BLOCK_CHARS:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pairs = enc["offset_mapping"]
        return [a for a, _ in pairs], [b for _, b in pairs]
    # Two machine-word arrays: 16 bytes a token, not a Python tuple each.
    starts, ends = array("q"), array("q")
    blocks = _blocks(text)
    while group := list(islice(blocks, _BLOCKS_PER_CALL)):
        enc = tokenizer(
            [piece for _, piece in group], add_special_tokens=False, return_offsets_mapping=True
        )
        for (offset, _), pairs in zip(group, enc["offset_mapping"], strict=True):
            starts.extend(offset + a for a, _ in pairs)
            ends.extend(offset + b for _, b in pairs)
    return starts, ends
