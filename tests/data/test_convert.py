"""Documents in the formats teams keep them (issue 28): a real file of each format is built here
and its text, and no markup, must reach the chunks with headings from its own structure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from ragft_dagster.data.chunking import DocumentError, chunk_document
from ragft_dagster.data.convert import FORMATS, convert_document
from ragft_dagster.data.documents import discover_documents

from ..conftest import LOCAL_PROFILE, write_recipe

# --- Real files of each format ----------------------------------------------------------------


def write_pdf(
    path: Path,
    pages: list[list[str]],
    outline: list[tuple[str, int, int]] = (),
    title: str | None = None,
) -> Path:
    """A PDF 1.4 written byte by byte, as a report generator writes one: each page's lines in
    Helvetica, bookmarks given as (title, page index, depth) in reading order, an Info title."""
    objects: list[bytes] = []

    def add(body: bytes = b"") -> int:
        objects.append(body)
        return len(objects)

    def string(text: str) -> bytes:
        raw = text.encode("latin-1")
        return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"

    catalog, tree = add(), add()
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    page_ids = []
    for lines in pages:
        ops = b"BT /F1 11 Tf 14 TL 72 740 Td " + b" T* ".join(string(s) + b" Tj" for s in lines)
        ops += b" ET"
        content = add(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(ops), ops))
        page_ids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font "
                b"<< /F1 %d 0 R >> >> /Contents %d 0 R >>" % (tree, font, content)
            )
        )
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects[tree - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))
    # bookmarks: a tree from the depths, then one dictionary per item linked to its siblings
    root: dict = {"children": []}
    stack = [root]
    for name, page, depth in outline:
        node = {"name": name, "page": page, "children": [], "id": add()}
        del stack[depth + 1 :]
        stack[-1]["children"].append(node)
        stack.append(node)
    outlines = add() if outline else None

    def link(parent_id: int, items: list[dict]) -> None:
        for i, item in enumerate(items):
            body = b"<< /Title %s /Parent %d 0 R /Dest [%d 0 R /XYZ 0 792 0]" % (
                string(item["name"]),
                parent_id,
                page_ids[item["page"]],
            )
            if i > 0:
                body += b" /Prev %d 0 R" % items[i - 1]["id"]
            if i + 1 < len(items):
                body += b" /Next %d 0 R" % items[i + 1]["id"]
            if item["children"]:
                first, last = item["children"][0]["id"], item["children"][-1]["id"]
                body += b" /First %d 0 R /Last %d 0 R /Count %d" % (
                    first,
                    last,
                    len(item["children"]),
                )
            objects[item["id"] - 1] = body + b" >>"
            link(item["id"], item["children"])

    root_entry = b""
    if outlines is not None:
        top = root["children"]
        objects[outlines - 1] = b"<< /Type /Outlines /First %d 0 R /Last %d 0 R /Count %d >>" % (
            top[0]["id"],
            top[-1]["id"],
            len(top),
        )
        link(outlines, top)
        root_entry = b" /Outlines %d 0 R" % outlines
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R%s >>" % (tree, root_entry)
    info = add(b"<< /Title %s /Producer (ragft tests) >>" % string(title or ""))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\n" % (
        len(objects) + 1,
        catalog,
        info,
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    path.write_bytes(bytes(out))
    return path


PDF_PAGES = [
    [
        "Operating the Widget Service",
        "The widget service renders widgets on demand for the dashboard.",
        "Backups",
        "Nightly backups are kept for thirty days in the archive bucket.",
        "# not a heading: a shell comment printed in the manual",
    ],
    [
        "Restoring a backup takes about four minutes per gigabyte (see <archive>).",
        "Troubleshooting",
        "A widget that renders blank usually lacks its font cache.",
    ],
]
PDF_OUTLINE = [
    ("Operating the Widget Service", 0, 0),
    ("Backups", 0, 1),
    ("Troubleshooting", 1, 1),
]


def write_docx(path: Path) -> Path:
    """A Word file as a team writes one: a Title, heading styles, lists, a table."""
    import docx

    document = docx.Document()
    document.core_properties.title = "Widget runbook"
    document.add_heading("Widget Runbook", 0)
    document.add_paragraph("This runbook covers the widget service on call rotation.")
    document.add_heading("Restarting", 1)
    document.add_paragraph("Check the health endpoint before a restart.")
    document.add_paragraph("Drain the load balancer", style="List Number")
    document.add_paragraph("Restart the pods one by one", style="List Number")
    document.add_paragraph("Keep the incident channel informed", style="List Bullet")
    document.add_heading("Limits", 2)
    table = document.add_table(rows=3, cols=2)
    for row, (name, value) in zip(
        table.rows, [("Setting", "Value"), ("max_widgets", "500"), ("timeout", "30 s")], strict=True
    ):
        row.cells[0].text, row.cells[1].text = name, value
    document.add_paragraph("Escalate to the platform team after two failed restarts.")
    document.save(path)
    return path


# A Sphinx page: directives plain docutils does not know, roles, a toctree, an include.
SPHINX_PAGE = """\
:orphan:
:og:description: Installing the widget service

.. _install:

==========
Installing
==========

.. toctree::
   :maxdepth: 2

   intro
   usage

The widget service needs Python 3.11. See :ref:`the usage guide <usage>` and
:func:`~widgets.client.connect`. Version |release| is current.

.. note::

   Run the installer as an ordinary user, never as root.

.. warning:: Ports below 1024 need privileges.

Configure
---------

.. code-block:: python
   :linenos:
   :emphasize-lines: 2

   def configure(app):
       app.port = 8080

.. versionadded:: 2.1
   The ``--port`` flag.

.. include:: ../snippets/footer.rst

.. tab-set::

   .. tab-item:: Linux

      Install it with ``apt install widgets``.

.. list-table:: Defaults
   :header-rows: 1

   * - Option
     - Value
   * - port
     - 8080

.. raw:: html

   <b>raw markup</b>

.. index:: single: widgets; install

.. function:: connect(host, port=8080)

   Open a connection to the widget service.
"""

# A Docusaurus page: front matter, imports/exports, JSX components, an MDX comment.
DOCUSAURUS_PAGE = """\
---
title: Deploying the Widget Service
description: How to deploy
sidebar_position: 3
tags: [deploy, widgets]
---

import Tabs from '@theme/Tabs';
import TabItem from '@theme/TabItem';
import {Highlight} from '@site/src/components/Highlight';
export const toc = [{value: 'Configure', id: 'configure', level: 2}];

The widget service renders widgets on <Highlight color="#25c2a0">demand</Highlight>.

{/* editors: keep this page short */}

## Configure {#configure}

<Tabs groupId="os" values={[{label: 'Linux', value: 'linux'}, {label: 'macOS', value: 'mac'}]}>
  <TabItem value="linux" label="Linux">

Start it with `widgetctl start <name>`.

  </TabItem>
  <TabItem value="mac">

On macOS install it with Homebrew.

  </TabItem>
</Tabs>

<details>
<summary>Why port 8080?</summary>

Ports below 1024 need root.

</details>

<Card title="Next steps" link={{href: '/docs/next', label: "next"}} />

:::tip[Pro tip]
Set the port once.
:::
"""

# An HTML export with the site around the page: navigation, scripts, styles, a search form.
HTML_PAGE = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Monitoring — Widgets 2.1</title>
<meta name="description" content="Monitoring the widget service">
<style>body { color: #333; } .hidden { display: none }</style>
<script>var analyticsId = "UA-1234-5";</script>
</head><body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/blog">Blog</a></li></ul></nav></header>
<div class="sphinxsidebar" role="navigation"><h3>Contents</h3><ul><li>Sidebar entry</li></ul></div>
<div class="body" role="main">
<section id="monitoring"><h1>Monitoring<a class="headerlink" href="#monitoring">¶</a></h1>
<p>The widget service exports <strong>Prometheus</strong> metrics. Query them with
<code>widgetctl metrics &lt;name&gt;</code>.</p>
<h2>Alerts</h2>
<div class="highlight-yaml"><div class="highlight"><pre><span class="nt">alert</span>: WidgetDown
<span class="nt">for</span>: 5m
</pre></div></div>
<ul><li>Page the on-call engineer.</li><li>Open an incident.</li></ul>
<table><thead><tr><th>Metric</th><th>Meaning</th></tr></thead>
<tbody><tr><td>widgets_rendered</td><td>widgets served</td></tr></tbody></table>
<form><input type="search"><button>Search</button></form>
</section></div>
<footer>© 2026 Widgets Inc. Privacy policy</footer>
<script src="theme.js"></script>
</body></html>
"""

TEXT_NOTES = """\
Release 2.1 notes

The widget service now listens on port 8080 by default. Use widgetctl status <name>
to see a widget's state.
"""

MARKDOWN_PAGE = """\
# Scaling

Add replicas with `widgetctl scale --replicas 3`. Each replica holds 500 widgets.
"""

# What no chunk of a converted page may hold: markup of any of the formats above.
MARKUP = re.compile(
    r"\b(?:BT|ET|Tj|TL|endstream|endobj|xref)\b|/F1|/Type"  # PDF operators and objects
    r"|w:p\b|<w:|word/document\.xml"  # Word XML
    r"|^\.\. |::\s*$|:ref:|:func:|toctree|:linenos:|\|release\|"  # reStructuredText
    r"|^import |^export |</?(?:Tabs|TabItem|Highlight|Card|details|summary)\b|\{/\*|:::"  # MDX
    r"|<(?:script|style|nav|div|p|h1|h2|pre|ul|li|table|form)\b|analyticsId|color: #333"  # HTML
    r"|Sidebar entry|Privacy policy|>Home<|Search",
    re.M,
)


def build_docs(folder: Path) -> dict[str, str]:
    """One page in each supported format below ``folder``: key -> a sentence of its text."""
    folder.mkdir(parents=True, exist_ok=True)
    write_pdf(folder / "operations.pdf", PDF_PAGES, PDF_OUTLINE, title="Widget operations")
    write_docx(folder / "runbook.docx")
    (folder / "install.rst").write_text(SPHINX_PAGE)
    (folder / "deploy.mdx").write_text(DOCUSAURUS_PAGE)
    (folder / "monitoring.html").write_text(HTML_PAGE)
    (folder / "release-notes.txt").write_text(TEXT_NOTES)
    (folder / "scaling.md").write_text(MARKDOWN_PAGE)
    return {
        "operations.pdf": "Nightly backups are kept for thirty days in the archive bucket.",
        "runbook.docx": "Check the health endpoint before a restart.",
        "install.rst": "Run the installer as an ordinary user, never as root.",
        "deploy.mdx": "On macOS install it with Homebrew.",
        "monitoring.html": "Page the on-call engineer.",
        "release-notes.txt": "The widget service now listens on port 8080 by default.",
        "scaling.md": "Each replica holds 500 widgets.",
    }


def chunks_of(path: Path, tokenizer, key: str | None = None):
    """The document converted and chunked (chunks large enough that a section is one)."""
    key = key or path.name
    doc = convert_document(path, key)
    return doc, chunk_document(
        doc.text, key, tokenizer, 1000, 10, markup=doc.markup, title=doc.title
    )


def text_of(chunks) -> str:
    return "\n".join(c.text for c in chunks)


def no_markup(chunks: Iterable) -> list[str]:
    """The markup found in chunks (objects or records): none, when conversion worked."""
    texts = [c["text"] if isinstance(c, dict) else c.text for c in chunks]
    return [m.group() for text in texts for m in MARKUP.finditer(text)]


# --- One test per format ------------------------------------------------------------------


def test_a_pdf_gives_its_pages_text_in_order_with_bookmarks_as_headings(tmp_path, tiny_tokenizer):
    path = write_pdf(tmp_path / "ops.pdf", PDF_PAGES, PDF_OUTLINE, title="Widget operations")
    doc, chunks = chunks_of(path, tiny_tokenizer)
    text = text_of(chunks)
    order = [text.index(line) for page in PDF_PAGES for line in page[1:] if line[0] != "#"]
    assert order == sorted(order), text  # every line, pages in order
    assert "see <archive>" in text  # a converter's text keeps what looks like a tag
    assert no_markup(chunks) == []
    paths = {c.heading_path[-1]: c.heading_path for c in chunks}
    assert paths["Backups"] == ["Operating the Widget Service", "Backups"]
    assert paths["Troubleshooting"] == ["Operating the Widget Service", "Troubleshooting"]
    # a printed shell comment is text, not a heading of its own
    assert "Restoring a backup" in next(c.text for c in chunks if "Backups" in c.heading_path)
    assert doc.metadata == {"title": "Widget operations", "pages": 2}
    assert doc.content_hash == discover_documents(tmp_path).documents["ops.pdf"]


def test_a_docx_gives_headings_paragraphs_lists_and_tables(tmp_path, tiny_tokenizer):
    doc, chunks = chunks_of(write_docx(tmp_path / "runbook.docx"), tiny_tokenizer)
    assert doc.text.startswith("# Widget Runbook\n\nThis runbook covers")
    assert "1. Drain the load balancer\n\n2. Restart the pods one by one" in doc.text
    assert "- Keep the incident channel informed" in doc.text
    assert "| max_widgets | 500 |" in doc.text and "| Setting | Value |" in doc.text
    by_heading = {tuple(c.heading_path): c.text for c in chunks}
    assert "Check the health endpoint" in by_heading[("Widget Runbook", "Restarting")]
    limits = by_heading[("Widget Runbook", "Restarting", "Limits")]
    assert "timeout | 30 s" in limits and "Escalate to the platform team" in limits
    assert no_markup(chunks) == []
    assert doc.metadata == {"title": "Widget runbook"}
    assert doc.content_hash == discover_documents(tmp_path).documents["runbook.docx"]


def test_a_sphinx_page_keeps_code_and_admonitions_and_drops_directive_markup(
    tmp_path, tiny_tokenizer
):
    (tmp_path / "install.rst").write_text(SPHINX_PAGE)
    doc, chunks = chunks_of(tmp_path / "install.rst", tiny_tokenizer)
    text = text_of(chunks)
    assert "```python\ndef configure(app):\n    app.port = 8080\n```" in text
    assert "Note: Run the installer as an ordinary user, never as root." in text
    assert "Warning: Ports below 1024 need privileges." in text
    assert "Added in version 2.1: The `--port` flag." in text
    assert "See the usage guide and `connect`. Version release is current." in text
    assert "Linux" in text and "Install it with `apt install widgets`." in text
    assert "| Option | Value |" in text and "| port | 8080 |" in text
    assert "`connect(host, port=8080)`" in text and "Open a connection" in text
    assert "raw markup" not in text and "intro" not in text  # raw HTML, the toctree
    assert no_markup(chunks) == []
    assert {tuple(c.heading_path) for c in chunks} == {("Installing",), ("Installing", "Configure")}
    # the file's leading fields are metadata; the include is named, not read
    assert doc.metadata == {"orphan": "", "og:description": "Installing the widget service"}
    (note,) = doc.notes
    assert note.startswith("install.rst: line ") and "include:: ../snippets/footer.rst" in note


def test_a_docusaurus_page_keeps_jsx_children_and_drops_imports_and_tags(tmp_path, tiny_tokenizer):
    (tmp_path / "deploy.mdx").write_text(DOCUSAURUS_PAGE)
    doc, chunks = chunks_of(tmp_path / "deploy.mdx", tiny_tokenizer)
    text = text_of(chunks)
    for kept in (
        "renders widgets on demand.",
        "Start it with `widgetctl start <name>`.",  # in inline code: kept as written
        "On macOS install it with Homebrew.",
        "Why port 8080?",
        "Ports below 1024 need root.",
        "Pro tip\nSet the port once.",
    ):
        assert kept in text
    assert no_markup(chunks) == [] and "Next steps" not in text and "sidebar_position" not in text
    assert {tuple(c.heading_path) for c in chunks} == {
        ("Deploying the Widget Service",),
        ("Deploying the Widget Service", "Configure"),
    }
    # front matter is metadata, not text
    assert doc.metadata["tags"] == ["deploy", "widgets"] and doc.metadata["sidebar_position"] == 3


def test_an_html_page_keeps_its_main_content_only(tmp_path, tiny_tokenizer):
    (tmp_path / "monitoring.html").write_text(HTML_PAGE)
    doc, chunks = chunks_of(tmp_path / "monitoring.html", tiny_tokenizer)
    text = text_of(chunks)
    assert "exports Prometheus metrics. Query them with `widgetctl metrics <name>`." in text
    assert "```yaml\nalert: WidgetDown\nfor: 5m\n```" in text
    assert "- Page the on-call engineer.\n- Open an incident." in text
    assert "| widgets_rendered | widgets served |" in text
    assert no_markup(chunks) == [] and "¶" not in text and "Blog" not in text
    assert {tuple(c.heading_path) for c in chunks} == {("Monitoring",), ("Monitoring", "Alerts")}
    assert doc.metadata == {
        "title": "Monitoring — Widgets 2.1",
        "description": "Monitoring the widget service",
    }


def test_an_html_page_without_headings_takes_its_title_and_its_declared_charset(
    tmp_path, tiny_tokenizer
):
    page = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9 hours</title></head>'
    page += "<body><p>The caf\xe9 opens at nine.</p></body></html>"
    (tmp_path / "cafe.htm").write_bytes(page.encode("latin-1"))
    doc, chunks = chunks_of(tmp_path / "cafe.htm", tiny_tokenizer)
    assert [(c.heading_path, c.text) for c in chunks] == [
        (["Café hours"], "The café opens at nine.")
    ]
    assert doc.content_hash == discover_documents(tmp_path).documents["cafe.htm"]


def test_plain_text_is_kept_as_written(tmp_path, tiny_tokenizer):
    (tmp_path / "notes.txt").write_text(TEXT_NOTES)
    doc, chunks = chunks_of(tmp_path / "notes.txt", tiny_tokenizer)
    assert doc.text == TEXT_NOTES and not doc.markup
    assert "widgetctl status <name>" in text_of(chunks)  # no tag stripping in plain text


# --- Broken files: one line naming the file and what to do --------------------------------


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("broken.pdf", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", "not a readable PDF"),
        ("fake.pdf", b"<html>not a pdf</html>", "not a readable PDF"),
        ("broken.docx", b"PK\x03\x04 truncated zip", "not a readable Word document"),
        ("old.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512, "old .doc"),
    ],
)
def test_a_broken_pdf_or_docx_fails_in_one_line_naming_it(tmp_path, name, data, says):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DocumentError) as err:
        convert_document(tmp_path / name, f"manuals/{name}")
    message = str(err.value)
    assert message.startswith(f"manuals/{name}: ") and says in message
    assert "\n" not in message and ("replace the file" in message or "save it again" in message)


def test_a_password_protected_pdf_says_so(tmp_path):
    from pypdf import PdfReader, PdfWriter

    plain = write_pdf(tmp_path / "plain.pdf", [["Secret text."]])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password="s3cret", algorithm="RC4-128")
    with open(tmp_path / "locked.pdf", "wb") as fh:
        writer.write(fh)
    with pytest.raises(DocumentError, match=r"^locked\.pdf: the PDF is password-protected; save"):
        convert_document(tmp_path / "locked.pdf", "locked.pdf")


def test_a_scanned_pdf_without_text_is_named_in_a_note(tmp_path):
    doc = convert_document(write_pdf(tmp_path / "scan.pdf", [[], []]), "scan.pdf")
    assert doc.text == ""
    assert doc.notes == (
        "scan.pdf: none of its 2 page(s) has a text layer (a scanned PDF?); run OCR on it (e.g. "
        "`ocrmypdf in.pdf out.pdf`) and replace the file",
    )


def test_rst_markup_docutils_gives_up_on_is_named_where_not_a_traceback(tmp_path):
    page = "Page\n====\n\nIntro.\n\n+-----+----+\n| a | b |\n+----+\n\nAfter the table.\n"
    (tmp_path / "broken.rst").write_text(page)
    doc = convert_document(tmp_path / "broken.rst", "broken.rst")
    assert doc.text == "# Page\n\nIntro.\n\nAfter the table.\n"  # no +---+ borders
    assert doc.notes == (
        "broken.rst: line 7: Malformed table. Right border not aligned or missing. "
        "(reStructuredText; the text there is left out); fix the markup there",
    )


def test_an_html_page_with_no_element_is_empty_not_broken(tmp_path):
    (tmp_path / "stub.html").write_text("<!-- generated later -->\n")
    assert convert_document(tmp_path / "stub.html", "stub.html").text == ""


# --- The folder scan ----------------------------------------------------------------------


def test_the_default_glob_takes_every_format_and_names_what_it_cannot_read(tmp_path):
    from ragft_dagster.config.recipe import DEFAULT_EXCLUDE, DocsRecipe

    docs = tmp_path / "docs"
    expected = build_docs(docs)
    (docs / "img").mkdir()
    (docs / "img" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (docs / "LEGACY.DOC").write_bytes(b"\xd0\xcf\x11\xe0")
    (docs / "node_modules" / "pkg").mkdir(parents=True)
    (docs / "node_modules" / "pkg" / "README.md").write_text("# Not ours\n")
    (docs / "v2.0").mkdir()  # a folder with a suffix is no document and no skipped file
    (docs / "v2.0" / "CHANGES.TXT").write_text("Fixed the cache.\n")
    scan = discover_documents(docs, DocsRecipe().glob, exclude=DEFAULT_EXCLUDE)
    assert sorted(scan.documents) == sorted([*expected, "v2.0/CHANGES.TXT"])
    assert sorted(scan.skipped) == ["LEGACY.DOC", "img/logo.png"]
    assert scan.skipped["img/logo.png"].startswith(
        "a .png file is not a document format ragft reads (.md, .markdown, .mdx, .rst, .html, "
        ".htm, .txt, .pdf, .docx); convert it, add *.png to docs.exclude or narrow docs.glob"
    )
    assert scan.excluded == {"node_modules/": 1}
    # doc_chunks records the hash the scan computes, for every format
    for key, digest in scan.documents.items():
        assert convert_document(docs / key, key).content_hash == digest
    assert set(FORMATS) >= {Path(k).suffix.lower() for k in scan.documents}


# The stage that reads documents (the whole graph over the quickstart's pages is
# tests/test_runner.py's end-to-end test; run here it takes ~6 min on 2 cores).
E2E_JOBS = {"documents_job"}


# --- End to end: `ragft run` over a folder of every format ----------------------------------


@pytest.mark.slow
def test_a_docs_folder_of_every_format_runs_with_the_default_glob(tmp_path):
    """Issue 28, done when: one page in each format, a copy of the tiny recipe with the default
    glob; every page's text reaches its chunks without markup, nothing fails, the second run is
    a no-op, and an edit of a Word file goes through the docs sensor."""
    import dagster as dg

    from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
    from ragft_dagster.cli import run_pipeline
    from ragft_dagster.definitions import build_definitions

    from ..orchestration.test_automation import _tick

    docs = tmp_path / "docs"
    expected = build_docs(docs)
    (docs / "img").mkdir()
    (docs / "img" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    def default_glob(raw: dict) -> None:
        raw["docs"].pop("glob", None)
        raw["docs"]["path"] = str(docs)

    recipe = write_recipe(tmp_path, default_glob)
    root = tmp_path / "artifacts"
    layout = ArtifactLayout(root)
    lines: list[str] = []

    def run():
        lines.clear()
        result = run_pipeline(
            str(recipe), str(LOCAL_PROFILE), instance=instance, artifact_root=root,
            echo=lines.append, jobs=E2E_JOBS,
        )  # fmt: skip
        assert result, "\n".join(lines)
        return result

    with dg.instance_for_test() as instance:
        first = run()
        assert sorted(instance.get_dynamic_partitions("documents")) == sorted(expected)
        (skipped,) = [line for line in lines if "logo.png" in line]
        assert skipped.startswith(f"  skipped {docs.as_posix()}/img/logo.png: a .png file is not")
        assert not [line for line in lines if "FAILED" in line], lines
        # what a conversion could not keep is said once, naming the page
        (note,) = convert_document(docs / "install.rst", "install.rst").notes
        assert [line for line in lines if "is not read" in line] == [
            f"  documents_job [deploy.mdx..scaling.md] (7 documents): {note}"
        ], lines
        formats = {}
        for key, sentence in expected.items():
            chunks = read_jsonl(layout.chunks(key))
            assert sentence in "\n".join(c["text"] for c in chunks), key
            assert no_markup(chunks) == [], key
            (mat,) = [m for m in first.steps[0].materializations if m[:2] == ("doc_chunks", key)]
            formats[key] = mat[2]["format"]
        assert sorted(formats.values()) == sorted(
            ["pdf", "docx", "rst", "mdx", "html", "text", "markdown"]
        )
        assert run().steps == []  # nothing changed: nothing runs

        # An edit of the Word file: the docs sensor asks for that document alone.
        defs = build_definitions(recipe, artifact_root=root)
        import docx

        edited = docx.Document(docs / "runbook.docx")
        edited.add_paragraph("Page the database team when the cache is cold.")
        edited.save(docs / "runbook.docx")
        tick = _tick(defs, instance, root, None)
        assert [r.partition_key for r in tick.run_requests] == ["runbook.docx"]
        assert run().steps[0].partitions == ["runbook.docx"]
        text = "\n".join(c["text"] for c in read_jsonl(layout.chunks("runbook.docx")))
        assert "Page the database team when the cache is cold." in text
