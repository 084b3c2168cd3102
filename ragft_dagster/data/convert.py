"""Documents in the formats teams keep them, as markdown for chunking (Dagster-free).

One converter per format turns a file into markdown whose ``#`` headings come from the
document's own structure (reStructuredText sections, HTML ``<h1>``-``<h6>``, Word heading
styles, a PDF's bookmarks), so they become the chunks' heading paths:

======================  ======================================================================
``.md`` ``.markdown``   the page as written; chunking drops its front matter (kept as metadata)
``.mdx``                and, outside code, its MDX imports/exports and JSX tags (their text stays)
``.rst``                docutils; Sphinx directives handled: code blocks stay code, admonitions
                        and version notes keep their text, toctree/index/autodoc leave nothing
``.html`` ``.htm``      lxml; the main content (``<main>``, ``role="main"``, one ``<article>``),
                        without navigation, scripts, styles, forms or heading anchors
``.txt``                the text as written (a ``#`` line is a heading, nothing is removed)
``.pdf``                pypdf; the text of every page in order, bookmarks as headings
``.docx``               python-docx; heading styles as headings, paragraphs, lists, tables
======================  ======================================================================

Every converter runs offline (no model, no download). A text format's content hash is the one
the folder scan computes (:func:`~ragft_dagster.text.content_hash` of the bytes), and
so is a binary one's: the file is read once and converted from those bytes. docs/documents.md
says what each converter keeps and drops, and why these libraries.
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ragft_dagster.artifacts import UnreadableText
from ragft_dagster.data.chunking import (
    DocumentError,
    front_matter,
    read_document,
    unreadable_document,
)
from ragft_dagster.text import content_hash

# Suffix (lower case) -> format. Anything else matched by docs.glob is skipped, naming it.
FORMATS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "mdx",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
    ".pdf": "pdf",
    ".docx": "docx",
}


def document_format(name: str) -> str | None:
    """The format of a file named ``name`` (by its suffix, any case), or None when ragft does
    not read that type."""
    return FORMATS.get(PurePosixPath(name).suffix.lower())


def unsupported_reason(name: str) -> str:
    """Why a file the glob matched is not a document, and what to do."""
    suffix = PurePosixPath(name).suffix
    kind = f"a {suffix} file" if suffix else "a file without a suffix"
    return (
        f"{kind} is not a document format ragft reads ({', '.join(FORMATS)}); convert it, add "
        f"{'*' + suffix if suffix else 'its name'} to docs.exclude or narrow docs.glob"
    )


@dataclass(frozen=True)
class ConvertedDocument:
    """A document as chunking takes it."""

    text: str
    """Markdown: the page itself (``markup``) or what a converter wrote from the file."""
    format: str
    content_hash: str
    """:func:`~ragft_dagster.text.content_hash` of the file's bytes: the folder scan's."""
    markup: bool = False
    """Whether ``text`` is the author's page, whose front matter and tags chunking removes."""
    title: str | None = None
    """The root of every heading path when the converter found one outside the headings."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Front matter, reStructuredText file fields, HTML ``<title>``, PDF or Word properties."""
    notes: tuple[str, ...] = ()
    """What the conversion could not keep and the reader should know (one line each)."""


def convert_document(path: Path, doc_key: str) -> ConvertedDocument:
    """Read one document and convert it to markdown.

    Args:
        path: The file.
        doc_key: Its key (path below the docs folder), named in errors and notes.

    Returns:
        The markdown, its content hash, title, metadata and notes.

    Raises:
        DocumentError: The file is unreadable, of a type ragft does not read, or broken (a PDF
            or Word file that does not open); one line naming the file and what to do.
    """

    kind = document_format(path.name)
    if kind is None:
        raise DocumentError(f"{doc_key}: {unsupported_reason(path.name)}")
    if kind in ("markdown", "mdx", "text", "rst"):
        text = read_document(path, doc_key)
        digest = content_hash(text.encode("utf-8"))  # the bytes' hash: only BOM/CR were dropped
        if kind == "text":
            return ConvertedDocument(text, kind, digest)
        if kind == "rst":
            return _rst(text, doc_key, digest)
        meta, _ = front_matter(text, doc_key)
        title = meta.get("title")
        return ConvertedDocument(
            text,
            kind,
            digest,
            markup=True,
            title=str(title).strip() if isinstance(title, str | int | float) else None,
            metadata=_jsonable(meta),
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise unreadable_document(UnreadableText("missing"), path, doc_key) from None
    except OSError as exc:
        detail = exc.strerror or str(exc)
        raise unreadable_document(UnreadableText("unreadable", detail), path, doc_key) from None
    convert = {"html": _html, "pdf": _pdf, "docx": _docx}[kind]
    return convert(raw, path, doc_key, content_hash(raw))


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it (YAML dates and the like become strings)."""
    return json.loads(json.dumps(value, default=str))


# --- Markdown writing shared by the converters ---------------------------------------------

# The start of a line of converted prose that chunking would read as a heading or a code fence
# (a fence may be indented).
_BLOCK_SYNTAX = re.compile(r"^(?=#{1,6}(?:[ \t]|$)|[ \t]*(?:`{3,}|~{3,}))", re.M)


def _escape(text: str) -> str:
    """Prose as markdown: a line that would open a heading or a code fence gets a backslash
    (``\\# not a heading``), as markdown escapes it."""
    return _BLOCK_SYNTAX.sub(r"\\", text)


def _squash(text: str) -> str:
    """Whitespace runs (line breaks too) as one space, ends stripped."""
    return " ".join(text.split())


def _heading(level: int, text: str) -> list[str]:
    text = _squash(text)
    return [f"{'#' * max(1, min(level, 6))} {text}"] if text else []


def _fence(code: str, language: str = "") -> str:
    """A fenced code block whose fence no line of ``code`` can close."""
    code = code.strip("\n")
    runs = [len(m.group(1)) for m in re.finditer(r"^[ \t]*(`{3,})", code, re.M)]
    fence = "`" * max([3, *(n + 1 for n in runs)])
    return f"{fence}{language}\n{code}\n{fence}"


def _indent(blocks: list[str], first: str, rest: str) -> list[str]:
    """``blocks`` as one list item or definition: the first line after ``first``, every other
    line after ``rest`` (blank lines stay blank)."""
    lines = "\n\n".join(blocks).split("\n")
    out = [first + lines[0]] + [rest + line if line.strip() else "" for line in lines[1:]]
    return ["\n".join(out)]


def _table(rows: list[list[str]], header: bool = True) -> list[str]:
    """Rows of cell texts as a markdown table (a ragged row is padded)."""
    rows = [[_squash(c).replace("|", "\\|") for c in r] for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    width = max(len(r) for r in rows)
    lines = ["| " + " | ".join(r + [""] * (width - len(r))) + " |" for r in rows]
    if header:
        lines.insert(1, "|" + " --- |" * width)
    return ["\n".join(lines)]


def _join(blocks: list[str]) -> str:
    text = "\n\n".join(b for b in blocks if b.strip())
    return text + "\n" if text else ""


# --- reStructuredText (docutils) ----------------------------------------------------------

# Sphinx directives plain docutils does not know, by what becomes of them. Any other unknown
# directive (an extension's) keeps its argument line and its content.
_RST_CODE = {
    "code-block", "sourcecode", "code", "code-tab", "doctest", "testcode", "testoutput",
    "testsetup", "ipython", "jupyter-execute", "productionlist",
}  # fmt: skip
_RST_NOTHING = {
    "toctree", "index", "highlight", "currentmodule", "module", "py:module", "py:currentmodule",
    "tabularcolumns", "sectionauthor", "codeauthor", "moduleauthor", "todo", "graphviz",
    "digraph", "graph", "mermaid", "uml", "plantuml", "inheritance-diagram", "automodule",
    "autoclass", "autofunction", "automethod", "autoattribute", "autodata", "autoexception",
    "autosummary", "autoprogram", "default-role", "default-domain",
}  # fmt: skip
_RST_UNREAD = {"include", "literalinclude"}
_RST_VERSION = {
    "versionadded": "Added in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
    "versionremoved": "Removed in version",
}
_RST_ADMONITION = {"seealso": "See also"}
_RST_CONTENT_ONLY = {"only", "ifconfig", "glossary", "hlist", "centered"}
# Roles that name code (shown as `code`); other unknown roles show their text.
_RST_CODE_ROLE = re.compile(
    r"^(?:\w+:)?(?:func|meth|class|attr|mod|obj|data|const|exc|type|member|var|macro|struct"
    r"|enum|enumerator|option|envvar|program|command|file|samp|kbd|code|function|method)$"
)
_RST_DIRECTIVE_NAME = re.compile(r"^[ \t]*\.\.[ \t]+([\w][\w:+.-]*)[ \t]*::", re.M)
_RST_ROLE_NAME = re.compile(r":([A-Za-z][\w:+.-]*):`")
# docutils keeps its directive and role tables in module globals: one conversion at a time
# registers ours and puts the tables back after.
_RST_LOCK = threading.Lock()


def _rst(text: str, doc_key: str, digest: str) -> ConvertedDocument:
    from docutils.core import publish_doctree

    notes: list[str] = []
    settings = {
        # no file of the machine is read (an include would not count in the content hash), no
        # raw HTML passes, no docutils.conf is read, nothing is printed, nothing halts
        "file_insertion_enabled": False,
        "raw_enabled": False,
        "_disable_config": True,
        "report_level": 5,
        "halt_level": 5,
        "warning_stream": io.StringIO(),
        "doctitle_xform": False,  # the first title is the top heading, like any section's
        "syntax_highlight": "none",
        "smart_quotes": False,
        "language_code": "en",
    }
    writer = _RstWriter(doc_key, notes)
    try:
        with _sphinx_markup(text, doc_key, notes):
            tree = publish_doctree(text, source_path=doc_key, settings_overrides=settings)
        blocks = writer.blocks(tree, 0)
    except Exception as exc:  # docutils gives up on some pathological pages: one line, not a trace
        raise DocumentError(
            f"{doc_key}: cannot convert this reStructuredText ({type(exc).__name__}: "
            f"{_squash(str(exc))[:200]}); fix the markup near it or remove the page"
        ) from None
    return ConvertedDocument(
        _join(blocks), "rst", digest, metadata=writer.metadata, notes=tuple(notes)
    )


@contextmanager
def _sphinx_markup(text: str, doc_key: str, notes: list[str]) -> Iterator[None]:
    """docutils with the Sphinx directives and roles ``text`` uses registered, for one parse."""
    from docutils.parsers.rst import directives, roles
    from docutils.parsers.rst.languages import en

    with _RST_LOCK:
        saved_directives, saved_roles = dict(directives._directives), dict(roles._roles)
        try:
            for name in {m.lower() for m in _RST_DIRECTIVE_NAME.findall(text)}:
                known = name in directives._directive_registry or name in en.directives
                if name in _RST_CODE or name in _RST_UNREAD or not known:
                    directives.register_directive(name, _rst_directive(name, doc_key, notes))
            for name in {m.lower() for m in _RST_ROLE_NAME.findall(text)}:
                if name not in roles._role_registry and name not in en.roles:
                    roles.register_local_role(name, _rst_role(name))
            yield
        finally:
            directives._directives.clear()
            directives._directives.update(saved_directives)
            roles._roles.clear()
            roles._roles.update(saved_roles)


def _rst_directive(name: str, doc_key: str, notes: list[str]) -> type:
    """A directive class for ``name`` that accepts any options (Sphinx's code-block takes
    :linenos:, :emphasize-lines:... that docutils' code directive refuses)."""
    from docutils import nodes
    from docutils.parsers.rst import Directive, directives

    class AnyOption(dict):
        def __missing__(self, key: str) -> Callable[[str], str]:
            return directives.unchanged

        def __bool__(self) -> bool:  # docutils reads options only where option_spec is truthy
            return True

    bare = name.split(":")[-1]

    class SphinxDirective(Directive):
        optional_arguments = 1
        final_argument_whitespace = True
        option_spec = AnyOption()
        has_content = True

        def run(self) -> list[Any]:
            argument = self.arguments[0].strip() if self.arguments else ""
            if name in _RST_CODE:
                code = "\n".join(self.content)
                language = "" if name == "productionlist" else argument.split(" ")[0]
                return [nodes.literal_block(code, code, language=language)] if code else []
            if name in _RST_UNREAD:
                notes.append(
                    f"{doc_key}: line {self.lineno}: `.. {name}:: {argument}` is not read (the "
                    "content hash covers this file alone); paste the text in, or keep it as "
                    "its own page in the docs folder"
                )
                return []
            if name in _RST_NOTHING or name.startswith("auto"):
                return []
            body: list[Any] = []
            label = _RST_VERSION.get(bare)
            if label:
                version, rest = [*argument.split(None, 1), ""][:2]
                lead = nodes.paragraph()
                lead += nodes.Text(f"{label} {version}" + (": " if rest else ""))
                lead += self.inline(rest)
                body.append(lead)
            elif bare in _RST_ADMONITION:
                box = nodes.admonition()
                box += nodes.title(text=_RST_ADMONITION[bare])
                if argument:
                    box += nodes.paragraph("", "", *self.inline(argument))
                self.state.nested_parse(self.content, self.content_offset, box)
                return [box]
            elif argument and bare not in _RST_CONTENT_ONLY:
                # a tab's or card's label, an object's signature (`connect(host, port)`)
                signature = ":" in name or bare in _RST_SIGNATURES
                lead = nodes.paragraph()
                if signature:
                    lead += nodes.literal(argument, argument)
                else:
                    lead += self.inline(argument)
                body.append(lead)
            box = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, box)
            return body + list(box.children)

        def inline(self, text: str) -> list[Any]:
            """Inline markup in an argument (``:mod:`x```, ````code````) as nodes."""
            if not text:
                return []
            found, _messages = self.state.inline_text(text, self.lineno)
            return found

    return SphinxDirective


# Object descriptions (``.. function:: connect(host)``): the argument is a signature.
_RST_SIGNATURES = {
    "function", "class", "method", "attribute", "data", "exception", "decorator", "option",
    "envvar", "describe", "object", "program", "cmdoption", "staticmethod", "classmethod",
    "property", "type", "macro", "member", "var", "struct", "enum", "enumerator", "confval",
}  # fmt: skip


def _rst_role(name: str) -> Callable[..., Any]:
    """A role that shows its text as Sphinx does: ``title <target>`` shows the title,
    ``~pkg.mod.func`` the last name; code references as code."""
    from docutils import nodes
    from docutils.utils import unescape

    code = bool(_RST_CODE_ROLE.match(name))

    def role(role_name, rawtext, text, lineno, inliner, options=None, content=None):  # noqa: ARG001
        shown = unescape(text)
        titled = re.match(r"^(.*?\S)\s*<[^<>]*>$", shown, re.S)
        if titled:
            shown = titled.group(1)
        elif shown.startswith("~"):
            shown = shown[1:].rsplit(".", 1)[-1]
        shown = shown.lstrip("!")
        return [nodes.literal(rawtext, shown) if code else nodes.Text(shown)], []

    return role


class _RstWriter:
    """A docutils doctree as markdown (see the module's table)."""

    def __init__(self, doc_key: str, notes: list[str]) -> None:
        self.doc_key, self.notes = doc_key, notes
        self.metadata: dict[str, Any] = {}
        """The fields a file opens with (Sphinx's file-wide metadata, docinfo)."""

    def blocks(self, node: Any, depth: int) -> list[str]:
        out: list[str] = []
        for child in node.children:
            out.extend(self.block(child, depth))
        return out

    def block(self, node: Any, depth: int) -> list[str]:
        from docutils import nodes

        if isinstance(node, nodes.section):
            title = node.next_node(nodes.title)
            head = _heading(depth + 1, self.inline(title)) if title is not None else []
            rest = [c for c in node.children if not isinstance(c, nodes.title)]
            return head + [b for c in rest for b in self.block(c, depth + 1)]
        if isinstance(node, nodes.docinfo | nodes.field_list) and not self._after_text(node):
            # Fields that open the file (:orphan:, :author:, :og:description:) are metadata.
            for field_node in node.children:
                if isinstance(field_node, nodes.field):
                    name, body = field_node.children[0], field_node.children[1]
                    self.metadata[name.astext()] = _squash(body.astext())
                else:
                    self.metadata[field_node.tagname] = _squash(field_node.astext())
            return []
        if (
            isinstance(node, nodes.system_message)
            and node.get("level", 0) >= 3
            and node.next_node(nodes.literal_block) is not None
        ):
            # An error that took the source with it (an inconsistent title level, a malformed
            # table): that text is not converted, so say where.
            message = _squash(node.children[0].astext()) if node.children else "an error"
            self.notes.append(
                f"{self.doc_key}: line {node.get('line', '?')}: {message} (reStructuredText; "
                "the text there is left out); fix the markup there"
            )
            return []
        if isinstance(node, _rst_skipped()):
            return []
        if isinstance(node, nodes.paragraph | nodes.rubric):
            text = _squash(self.inline(node))
            return [_escape(text)] if text else []
        if isinstance(node, nodes.literal_block | nodes.doctest_block):
            language = node.get("language") or ""
            classes = node.get("classes", [])
            if not language and "code" in classes:  # docutils' own code directive
                language = next(iter(classes[classes.index("code") + 1 :]), "")
            if isinstance(node, nodes.doctest_block):
                language = "pycon"
            return [_fence(node.astext(), language)]
        if isinstance(node, nodes.math_block):
            return [f"$$\n{node.astext().strip()}\n$$"]
        if isinstance(node, nodes.bullet_list | nodes.enumerated_list):
            start = node.get("start", 1) if isinstance(node, nodes.enumerated_list) else None
            out = []
            for i, item in enumerate(node.children):
                mark = f"{start + i}. " if start is not None else "- "
                out += _indent(self.blocks(item, depth) or [""], mark, " " * len(mark))
            return ["\n".join(out)]
        if isinstance(node, nodes.definition_list):
            out = []
            for item in node.children:
                terms = [c for c in item.children if isinstance(c, nodes.term | nodes.classifier)]
                term = " : ".join(_squash(self.inline(t)) for t in terms)
                body = [b for c in item.children if isinstance(c, nodes.definition)
                        for b in self.blocks(c, depth)]  # fmt: skip
                described = _indent(body, "  ", "  ")[0] if body else ""
                out.append(_escape(term) + ("\n" + described if described else ""))
            return out
        if isinstance(node, nodes.field_list):
            out = []
            for field_node in node.children:
                name, body = field_node.children[0], field_node.children[1]
                out += _indent(self.blocks(body, depth) or [""], f"{name.astext()}: ", "  ")
            return out
        if isinstance(node, nodes.option_list):
            out = []
            for item in node.children:
                group, description = item.children[0], item.children[1]
                out += _indent(
                    self.blocks(description, depth) or [""], f"`{group.astext()}` ", "  "
                )
            return out
        if isinstance(node, nodes.table):
            return self.table(node)
        if isinstance(node, nodes.Admonition):
            title = node.next_node(nodes.title)
            label = self.inline(title) if title is not None else node.tagname.capitalize()
            body = [b for c in node.children if not isinstance(c, nodes.title)
                    for b in self.block(c, depth)]  # fmt: skip
            if body and not body[0].startswith(("```", "- ", "|", "$$")):
                return [f"{_squash(label)}: {body[0]}", *body[1:]]
            return [f"{_squash(label)}:", *body]
        if isinstance(node, nodes.topic | nodes.sidebar):
            if "contents" in node.get("classes", []):
                return []  # a generated table of contents: navigation
            title = node.next_node(nodes.title)
            head = [_escape(_squash(self.inline(title)))] if title is not None else []
            return head + [b for c in node.children if not isinstance(c, nodes.title)
                           for b in self.block(c, depth)]  # fmt: skip
        if isinstance(node, nodes.line_block):
            lines = [_squash(self.inline(line)) for line in node.findall(nodes.line)]
            return [_escape("\n".join(lines))] if any(lines) else []
        if isinstance(node, nodes.attribution):
            return [f"— {_squash(self.inline(node))}"]
        if isinstance(node, nodes.footnote | nodes.citation):
            label = node.next_node(nodes.label)
            body = [b for c in node.children if not isinstance(c, nodes.label)
                    for b in self.block(c, depth)]  # fmt: skip
            return [f"[{label.astext()}] {body[0]}", *body[1:]] if label and body else body
        if isinstance(node, nodes.caption | nodes.legend | nodes.title):
            text = _squash(self.inline(node))
            return [_escape(text)] if text else []
        if isinstance(node, nodes.Text):
            text = _squash(str(node))
            return [_escape(text)] if text else []
        if isinstance(node, nodes.TextElement):
            text = _squash(self.inline(node))
            return [_escape(text)] if text else []
        return self.blocks(node, depth)  # containers, block quotes, figures, compounds ...

    @staticmethod
    def _after_text(node: Any) -> bool:
        """Whether a field list comes after any text of its document (else: file metadata)."""
        from docutils import nodes

        if isinstance(node, nodes.docinfo):
            return False
        parent = node.parent
        if not isinstance(parent, nodes.document):
            return True
        before = parent.children[: parent.index(node)]
        return any(not isinstance(c, (*_rst_skipped(), nodes.docinfo)) for c in before)

    def inline(self, node: Any) -> str:
        from docutils import nodes

        parts = []
        for child in node.children:
            if isinstance(child, nodes.Text):
                parts.append(str(child))
            elif isinstance(child, nodes.literal):
                parts.append(f"`{child.astext()}`")
            elif isinstance(child, nodes.math):
                parts.append(f"${child.astext()}$")
            elif isinstance(child, nodes.problematic):
                parts.append(_unmarked(child.astext()))
            elif isinstance(
                child,
                nodes.footnote_reference
                | nodes.citation_reference
                | nodes.image
                | nodes.raw
                | nodes.substitution_definition
                | nodes.system_message
                | nodes.target,
            ) and not (isinstance(child, nodes.target) and child.children):
                continue
            else:
                parts.append(self.inline(child))
        return "".join(parts)

    def table(self, node: Any) -> list[str]:
        from docutils import nodes

        title = node.next_node(nodes.title)
        head = [_escape(_squash(self.inline(title)))] if title is not None else []
        rows, header = [], False
        for part in node.findall(lambda n: isinstance(n, nodes.thead | nodes.tbody)):
            if part.parent.parent is not node:
                continue  # a nested table's rows
            for row in part.children:
                cells = [" ".join(self.blocks(entry, 0)) for entry in row.children]
                rows.append(cells)
            header = header or isinstance(part, nodes.thead)
        return head + _table(rows, header)


def _unmarked(text: str) -> str:
    """The text of markup docutils could not resolve (an undefined ``|substitution|``, a
    reference to a missing target), without the markup."""
    m = re.fullmatch(
        r"\|(.+)\|_{0,2}|`(.+?)`_{1,2}|(\w[\w.-]*)_{1,2}|:[\w:.+-]+:`(.+)`", text, re.S
    )
    return next((g for g in m.groups() if g), text) if m else text


@functools.cache
def _rst_skipped() -> tuple[type, ...]:
    """docutils nodes that hold no text a reader sees (or only markup)."""
    from docutils import nodes

    return (
        nodes.comment, nodes.target, nodes.substitution_definition, nodes.system_message,
        nodes.pending, nodes.raw, nodes.meta, nodes.decoration, nodes.transition, nodes.image,
    )  # fmt: skip


# --- HTML (lxml) ----------------------------------------------------------------------------

_HTML_BLOCK = {
    "address", "article", "aside", "blockquote", "body", "center", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4",
    "h5", "h6", "header", "hgroup", "hr", "html", "li", "main", "ol", "p", "pre", "section",
    "summary", "table", "ul", "caption", "tbody", "thead", "tfoot", "tr", "td", "th",
}  # fmt: skip
# Never text of the page: code, styles, page furniture, controls, embedded media.
_HTML_DROP = {
    "script", "style", "noscript", "template", "nav", "head", "title", "meta", "link", "base",
    "form", "button", "input", "select", "textarea", "iframe", "object", "embed", "svg",
    "canvas", "video", "audio", "map", "img", "picture", "footer", "dialog", "menu",
}  # fmt: skip
_HTML_DROP_ROLES = {
    "navigation", "banner", "contentinfo", "search", "complementary", "menu", "menubar",
    "toolbar", "tablist", "dialog", "button",
}  # fmt: skip
# Class names of navigation that is not marked as such: tables of contents, breadcrumbs, the
# heading anchors of Sphinx (¶), MkDocs and Docusaurus (#), "skip to content" links.
_HTML_DROP_CLASS = re.compile(
    r"^(?:toc|toc-.*|.*-toc|table-of-contents|theme-doc-toc.*|contents|breadcrumbs?|headerlink"
    r"|hash-link|anchorjs-link|skip-?link|skip-to-content|sphinxsidebar|related|navbar.*"
    r"|pagination-nav.*|theme-edit-this-page|sr-only|visually-hidden|screen-reader-text)$"
)
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", re.I)


def _html(raw: bytes, path: Path, doc_key: str, digest: str) -> ConvertedDocument:
    import lxml.html

    text = _decode_html(raw, path, doc_key)
    # lxml takes no encoding declaration on text that is already decoded
    text = _XML_DECLARATION.sub("", text, count=1)
    if not text.strip():
        return ConvertedDocument("", "html", digest)
    try:
        page = lxml.html.document_fromstring(text)
    except lxml.etree.ParserError:  # no element at all (only a comment): an empty page
        return ConvertedDocument("", "html", digest)
    metadata: dict[str, Any] = {}
    title = _squash(" ".join(page.xpath("/html/head/title//text()")))
    if title:
        metadata["title"] = title
    description = page.xpath("/html/head/meta[@name='description']/@content")
    if description and _squash(description[0]):
        metadata["description"] = _squash(description[0])
    root = _html_main(page)
    writer = _HtmlWriter(in_main=root.tag != "body" and root.tag != "html")
    blocks = writer.blocks(root)
    has_heading = any(re.match(r"#{1,6} ", b) for b in blocks)
    return ConvertedDocument(
        _join(blocks),
        "html",
        digest,
        title=None if has_heading else title or None,
        metadata=metadata,
    )


def _decode_html(raw: bytes, path: Path, doc_key: str) -> str:
    """The page's text: UTF-8 (a byte-order mark dropped), else the charset it declares."""
    text: str | None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        declared = _META_CHARSET.search(raw[:4096])
        try:
            text = raw.decode(declared.group(1).decode("ascii")) if declared else None
        except (LookupError, UnicodeDecodeError):
            text = None
        if text is None:
            line = raw.count(b"\n", 0, exc.start) + 1
            problem = UnreadableText(
                "encoding", f"byte 0x{raw[exc.start]:02x} at offset {exc.start}", line
            )
            raise unreadable_document(problem, path, doc_key) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _html_main(page: Any) -> Any:
    """The element that holds the page's own content: ``<main>``, else ``role="main"`` (Sphinx,
    Read the Docs), else the one ``<article>`` (MkDocs), else ``<body>``."""
    for query in ("//main", "//*[@role='main']"):
        found = page.xpath(query)
        if found:
            return found[0]
    articles = page.xpath("//article")
    if len(articles) == 1:
        return articles[0]
    body = page.find("body")
    return body if body is not None else page


class _HtmlWriter:
    def __init__(self, in_main: bool):
        # Outside a marked main content, <aside> and <header> are the site's, not the page's.
        self.in_main = in_main

    def dropped(self, el: Any) -> bool:
        tag = el.tag
        if not isinstance(tag, str):
            return True  # a comment or processing instruction
        if tag in _HTML_DROP or el.get("hidden") is not None or el.get("aria-hidden") == "true":
            return True
        if (el.get("role") or "").strip() in _HTML_DROP_ROLES:
            return True
        if any(_HTML_DROP_CLASS.match(c) for c in (el.get("class") or "").split()):
            return True
        if tag == "aside" and not self.in_main:
            return True
        return tag == "header" and (not self.in_main and bool(el.xpath(".//nav|.//ul")))

    def blocks(self, el: Any) -> list[str]:
        """The block-level markdown of ``el``'s content."""
        out: list[str] = []
        run: list[str] = []

        def flush() -> None:
            text = "\n".join(_squash(line) for line in "".join(run).split("\n")).strip()
            if text:
                out.append(_escape(text))
            run.clear()

        run.append(_spaces(el.text))
        for child in el:
            if not self.dropped(child):
                if child.tag in _HTML_BLOCK or self._holds_blocks(child):
                    flush()
                    out.extend(self.block(child))
                else:
                    run.append(self.inline(child))
            run.append(_spaces(child.tail))
        flush()
        return out

    def _holds_blocks(self, el: Any) -> bool:
        return any(isinstance(d.tag, str) and d.tag in _HTML_BLOCK for d in el.iterdescendants())

    def block(self, el: Any) -> list[str]:
        tag = el.tag
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            return _heading(int(tag[1]), self.inline(el))
        if tag == "pre":
            return [_fence(self.pre_text(el), _code_language(el))]
        if tag in ("ul", "ol"):
            start = (
                int(el.get("start", "1")) if tag == "ol" and el.get("start", "1").isdigit() else 1
            )
            out = []
            n = start
            for li in el:
                if not isinstance(li.tag, str) or self.dropped(li):
                    continue
                mark = f"{n}. " if tag == "ol" else "- "
                n += 1
                item = self.blocks(li) if li.tag == "li" else self.block(li)
                out += _indent(item or [""], mark, " " * len(mark))
            return ["\n".join(out)] if out else []
        if tag == "dl":
            out = []
            for child in el:
                if not isinstance(child.tag, str) or self.dropped(child):
                    continue
                if child.tag == "dd":
                    out += _indent(self.blocks(child) or [""], "  ", "  ")
                else:
                    out += self.blocks(child)
            return out
        if tag == "table":
            return self.table(el)
        if tag == "hr":
            return []
        return self.blocks(el)

    def inline(self, el: Any) -> str:
        if self.dropped(el):
            return ""
        tag = el.tag
        if tag == "br":
            return "\n"
        if tag in ("code", "kbd", "samp", "tt", "var"):
            code = _squash(el.text_content())
            return f"`{code}`" if code else ""
        parts = [_spaces(el.text)]
        for child in el:
            parts.append(self.inline(child))
            parts.append(_spaces(child.tail))
        return "".join(parts)

    def pre_text(self, el: Any) -> str:
        """A ``<pre>``'s text as written; ``<br>`` is a line break (Docusaurus writes one per
        line of code)."""
        parts = [el.text or ""]
        for child in el:
            if isinstance(child.tag, str) and child.tag == "br":
                parts.append("\n")
            elif isinstance(child.tag, str) and not self.dropped(child):
                parts.append(self.pre_text(child))
            parts.append(child.tail or "")
        return "".join(parts)

    def table(self, el: Any) -> list[str]:
        rows: list[list[str]] = []
        header = False
        head = [_squash(" ".join(self.blocks(c))) for c in el.findall("caption")]
        for tr in el.xpath("./tr|./thead/tr|./tbody/tr|./tfoot/tr"):
            cells = [c for c in tr if isinstance(c.tag, str) and c.tag in ("td", "th")]
            if not rows:
                header = bool(cells) and all(c.tag == "th" for c in cells)
                header = header or tr.getparent().tag == "thead"
            rows.append([" ".join(self.blocks(c)) for c in cells])
        return [_escape(h) for h in head if h] + _table(rows, header)


def _spaces(text: str | None) -> str:
    """HTML text as a browser shows it: any whitespace run is one space (a line break in the
    source is not one on the page; ``<br>`` is)."""
    return re.sub(r"\s+", " ", text) if text else ""


def _code_language(el: Any) -> str:
    """A code block's language from its classes (``language-bash``, Sphinx's
    ``highlight-python`` on a wrapper) or none."""
    for node in (el, *el.findall("code"), el.getparent(), el.getparent().getparent()
                 if el.getparent() is not None else None):  # fmt: skip
        if node is None:
            continue
        for name in (node.get("class") or "").split():
            m = re.match(r"^(?:language|lang|highlight)-([\w+#.-]+)$", name)
            if m and m.group(1) not in ("default", "none", "text"):
                return m.group(1)
    return ""


# --- PDF (pypdf) ----------------------------------------------------------------------------

_PDF_FIX = (
    "re-export it from the program that made it (or repair it with e.g. `qpdf in.pdf out.pdf`) "
    "and replace the file, or remove it from the docs folder"
)


def _pdf(raw: bytes, path: Path, doc_key: str, digest: str) -> ConvertedDocument:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileNotDecryptedError("a password is needed")
        pages = [page.extract_text() or "" for page in reader.pages]
        outline = _pdf_outline(reader)
        info: dict[str, Any] = dict(reader.metadata or {})
    except FileNotDecryptedError:
        raise DocumentError(
            f"{doc_key}: the PDF is password-protected; save a copy without a password and "
            "replace the file, or remove it from the docs folder"
        ) from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
            RecursionError, AssertionError, ZeroDivisionError) as exc:  # fmt: skip
        # pypdf raises its own errors on a damaged file, and plain ones from deep inside it
        raise DocumentError(
            f"{doc_key}: not a readable PDF ({type(exc).__name__}: {_squash(str(exc))[:200]}); "
            f"{_PDF_FIX}"
        ) from None
    metadata: dict[str, Any] = {
        key.lstrip("/").lower(): _squash(str(value))
        for key, value in info.items()
        if key in ("/Title", "/Subject", "/Keywords") and _squash(str(value))
    }
    metadata["pages"] = len(pages)
    headings: dict[int, list[tuple[int, str]]] = {}
    for page_number, depth, title in outline:
        headings.setdefault(page_number, []).append((depth, title))
    texts = [_pdf_page(text, headings.get(i, [])) for i, text in enumerate(pages)]
    notes = []
    if pages and not any(t.strip() for t in pages):
        notes.append(
            f"{doc_key}: none of its {len(pages)} page(s) has a text layer (a scanned PDF?); run "
            "OCR on it (e.g. `ocrmypdf in.pdf out.pdf`) and replace the file"
        )
    return ConvertedDocument(_join(texts), "pdf", digest, metadata=metadata, notes=tuple(notes))


def _pdf_outline(reader: Any) -> list[tuple[int, int, str]]:
    """The bookmarks: (page index, depth, title) in outline order."""
    found: list[tuple[int, int, str]] = []

    def walk(items: list[Any], depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
                continue
            title = _squash(str(getattr(item, "title", "") or ""))
            page = reader.get_destination_page_number(item)
            if title and page is not None and page >= 0:
                found.append((page, depth, title))

    walk(reader.outline, 0)
    return found


def _pdf_page(text: str, headings: list[tuple[int, str]]) -> str:
    """One page's text with its bookmarks as headings: on the line that holds the bookmark's
    title when there is one, else before the rest of the page."""
    lines = [line.rstrip() for line in _escape(text.replace("\r\n", "\n")).split("\n")]
    at = 0
    for depth, title in headings:
        heading = _heading(depth + 1, title)[0]
        wanted = _squash(title).casefold()
        match = next(
            (i for i in range(at, len(lines)) if _squash(lines[i]).casefold() == wanted), None
        )
        if match is None:
            lines.insert(at, heading)
            at += 1
        else:
            lines[match] = heading
            at = match + 1
    # a heading needs a blank line around it to stand apart from the page's prose
    out: list[str] = []
    for line in lines:
        if line.startswith("#"):
            out += ["", line, ""]
        else:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


# --- Word (python-docx) ---------------------------------------------------------------------

_DOCX_FIX = (
    "open it in Word or LibreOffice and save it again as .docx (an old .doc, or a file renamed "
    "to .docx, does not open), or remove it from the docs folder"
)
_DOCX_HEADING = re.compile(r"^heading\s*([1-9])$", re.I)


def _docx(raw: bytes, path: Path, doc_key: str, digest: str) -> ConvertedDocument:
    import zipfile

    import docx
    from docx.opc.exceptions import OpcError
    from docx.table import Table
    from lxml.etree import LxmlError

    try:
        document = docx.Document(io.BytesIO(raw))
        content = list(document.iter_inner_content())
        props = document.core_properties
        metadata = {
            name: _squash(str(getattr(props, name) or ""))
            for name in ("title", "subject", "keywords")
            if _squash(str(getattr(props, name) or ""))
        }
        writer = _DocxWriter(document)
        blocks: list[str] = []
        for item in content:
            blocks += writer.table(item) if isinstance(item, Table) else writer.paragraph(item)
    except (OpcError, zipfile.BadZipFile, KeyError, ValueError, LxmlError, AttributeError,
            TypeError, IndexError, OSError) as exc:  # fmt: skip
        # python-docx raises its own error for a file that is no Word package, and plain ones
        # (a missing part, bad XML) from deep inside a damaged one
        raise DocumentError(
            f"{doc_key}: not a readable Word document ({type(exc).__name__}: "
            f"{_squash(str(exc))[:200]}); {_DOCX_FIX}"
        ) from None
    return ConvertedDocument(_join(blocks), "docx", digest, metadata=metadata)


class _DocxWriter:
    """Word paragraphs and tables as markdown: Title and ``Heading N`` styles as headings (one
    level lower under a Title), list paragraphs as list items, tables as markdown tables."""

    def __init__(self, document: Any):
        self.document = document
        self.has_title = any(self._style(p).lower() == "title" for p in document.paragraphs[:50])
        self.counters: dict[tuple[str, int], int] = {}
        self.list_run: list[str] = []

    @staticmethod
    def _style(paragraph: Any) -> str:
        try:
            return paragraph.style.name or "" if paragraph.style is not None else ""
        except (KeyError, ValueError):  # a style the styles part does not define
            return ""

    def paragraph(self, paragraph: Any) -> list[str]:
        text = paragraph.text.replace("\t", " ").strip()
        if not text:
            return []
        style = self._style(paragraph)
        m = _DOCX_HEADING.match(style)
        level = int(m.group(1)) + self.has_title if m else self._outline_level(paragraph)
        if style.lower() == "title":
            level = 1
        if level:
            self.counters.clear()
            return _heading(level, text)
        item = self._list_item(paragraph, style)
        if item is not None:
            mark, depth = item
            lines = [_squash(line) for line in text.split("\n")]
            return ["  " * depth + mark + " " + "\n".join(lines)]
        lines = [_squash(line) for line in text.split("\n")]
        return [_escape("\n".join(line for line in lines if line))]

    @staticmethod
    def _outline_level(paragraph: Any) -> int:
        """A heading's level from a direct outline level (custom heading styles), else 0."""
        found = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")
        if found and str(found[0]).isdigit() and int(found[0]) < 9:
            return int(found[0]) + 1
        return 0

    def _list_item(self, paragraph: Any, style: str) -> tuple[str, int] | None:
        """("- " or "3.", depth) for a list paragraph, None for any other."""
        num_id = paragraph._p.xpath("./w:pPr/w:numPr/w:numId/@w:val")
        ilvl = paragraph._p.xpath("./w:pPr/w:numPr/w:ilvl/@w:val")
        depth = int(ilvl[0]) if ilvl and str(ilvl[0]).isdigit() else 0
        lower = style.lower()
        if num_id and num_id[0] != "0":
            numbered = self._numbered(num_id[0], depth)
        elif lower.startswith("list number"):
            numbered = True
        elif lower.startswith(("list bullet", "list paragraph")):
            numbered = False
        else:
            return None
        if not numbered:
            return "-", depth
        key = (num_id[0] if num_id else lower, depth)
        self.counters[key] = self.counters.get(key, 0) + 1
        return f"{self.counters[key]}.", depth

    def _numbered(self, num_id: str, depth: int) -> bool:
        """Whether list ``num_id`` numbers its items at ``depth`` (else it has bullets)."""
        try:
            numbering = self.document.part.numbering_part.element
        except (KeyError, NotImplementedError, AttributeError):
            return False
        abstract = numbering.xpath(f"./w:num[@w:numId='{num_id}']/w:abstractNumId/@w:val")
        if not abstract:
            return False
        formats = numbering.xpath(
            f"./w:abstractNum[@w:abstractNumId='{abstract[0]}']/w:lvl[@w:ilvl='{depth}']"
            "/w:numFmt/@w:val"
        )
        return bool(formats) and formats[0] not in ("bullet", "none")

    def table(self, table: Any) -> list[str]:
        rows = []
        for row in table.rows:
            cells, seen = [], set()
            for cell in row.cells:
                if id(cell._tc) in seen:
                    continue  # a merged cell repeats in every column it spans
                seen.add(id(cell._tc))
                cells.append(" ".join(p.text for p in cell.paragraphs))
            rows.append(cells)
        return _table(rows)
