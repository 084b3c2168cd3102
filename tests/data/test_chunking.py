"""Chunking pages of real documentation sites: front matter, HTML/MDX markup, code blocks."""

import pytest

from ragft_dagster.data.chunking import (
    DocumentError,
    chunk_document,
    chunk_id,
    empty_document_warning,
    read_document,
    split_sections,
    strip_markup,
)

from ..conftest import DOC

CODE = """def configure(app):
    if app.debug:
        app.port = 8080
        app.reload = True
    return app"""

# A Docusaurus page as its sites write them (see e.g. docusaurus.io/docs/markdown-features).
DOCUSAURUS_PAGE = f"""---
title: Deploying the Widget Service
slug: /deploy/widget-service
keywords: [deployment, widgets, kubernetes]
sidebar_position: 3
---

import Tabs from '@theme/Tabs';
import TabItem from '@theme/TabItem';

<!-- TODO: add screenshots of the dashboard -->

The widget service is a small HTTP server that renders widgets on demand.

## Configure the service {{#configure}}

<div class="code-snippet-left">

```python
{CODE}
```

</div>

The `port` setting defaults to `8080`. Use <code>widgetctl</code> to check it, for example
`widgetctl status <name>`.

<Tabs>
<TabItem value="linux" label="Linux">

To start the service, run:

```bash
widgetctl start --port 8080
```

</TabItem>
</Tabs>

:::note
The service needs at most 512 MB of memory.
:::
"""
TITLE = "Deploying the Widget Service"


@pytest.fixture()
def page_chunks(tiny_tokenizer):
    return chunk_document(DOCUSAURUS_PAGE, "deploy.md", tiny_tokenizer, 300, 30)


def test_front_matter_is_read_not_chunked(page_chunks):
    texts = "\n".join(c.text for c in page_chunks)
    for key in ("title:", "slug", "/deploy/widget-service", "keywords", "kubernetes", "sidebar_"):
        assert key not in texts, key
    assert "---" not in texts
    assert all(c.heading_path[0] == TITLE for c in page_chunks)
    assert [c.heading_path for c in page_chunks] == [[TITLE], [TITLE, "Configure the service"]]
    assert page_chunks[0].text == (
        "The widget service is a small HTTP server that renders widgets on demand."
    )


def test_markup_is_dropped_its_text_kept(page_chunks):
    texts = "\n".join(c.text for c in page_chunks)
    for markup in ("<div", "</div>", "<Tabs", "<TabItem", "<code>", "<!--", "import ", ":::"):
        assert markup not in texts, markup
    assert "{#configure}" not in texts
    assert "Use widgetctl to check it" in texts  # a tag's inner text stays
    assert "`widgetctl status <name>`" in texts  # inline code is never stripped
    assert "The service needs at most 512 MB of memory." in texts
    assert "\n\n\n" not in texts  # wrapper lines leave no runs of blank lines


def test_code_blocks_keep_their_lines_and_indentation(page_chunks):
    configure = page_chunks[1].text
    assert f"```python\n{CODE}\n```" in configure
    assert "```bash\nwidgetctl start --port 8080\n```" in configure


def test_chunk_ids_are_content_hashes_and_offsets_point_into_the_file(page_chunks, tiny_tokenizer):
    again = chunk_document(DOCUSAURUS_PAGE, "deploy.md", tiny_tokenizer, 300, 30)
    assert [c.id for c in again] == [c.id for c in page_chunks]
    for c in page_chunks:
        assert c.id == chunk_id("deploy.md", c.text)
        original = DOCUSAURUS_PAGE[c.start_char : c.end_char]
        lines = c.text.splitlines()
        assert lines[0] in original and lines[-1] in original
    assert page_chunks[0].start_char > DOCUSAURUS_PAGE.index("sidebar_position")
    assert page_chunks[-1].end_char <= len(DOCUSAURUS_PAGE)


def test_markup_inside_code_blocks_is_never_touched():
    html = '<div class="card">\n  <!-- kept -->\n  <Tabs>x</Tabs>\n</div>'
    jsx = "import Tabs from '@theme/Tabs';\n\nexport const x = {\n  a: 1,\n};"
    page = (
        f"# Snippets\n\n<div>Outside</div>\n\n```html\n{html}\n```\n\n"
        f"~~~jsx\n{jsx}\n```\nstill code\n~~~\n\nexport const meta = {{\n  a: 1,\n}};\n\nEnd.\n"
    )
    text = strip_markup(page, "snippets.md").text
    assert f"```html\n{html}\n```" in text
    assert f"~~~jsx\n{jsx}\n```\nstill code\n~~~" in text  # a ``` line does not close ~~~
    assert "<div>Outside</div>" not in text and "Outside" in text
    assert "export const meta" not in text and text.count("a: 1,") == 1  # its body went too
    assert text.endswith("End.\n")


def test_a_page_without_front_matter_or_markup_is_chunked_as_written(tiny_tokenizer):
    page = "# Guide\n\n---\n\nA rule above, and `a <b>` in code.\n\n## Next\n\nMore text.\n"
    assert strip_markup(page, "guide.md").text == page
    chunks = chunk_document(page, "guide.md", tiny_tokenizer)
    assert [c.heading_path for c in chunks] == [["Guide"], ["Guide", "Next"]]
    assert chunks[0].start_char == 0 and chunks[-1].end_char == len(page)
    # A leading --- rule around plain text is not front matter.
    ruled = "---\nJust a sentence.\n---\n\nBody.\n"
    assert strip_markup(ruled, "ruled.md").text == ruled


def test_the_title_is_the_root_and_a_matching_h1_is_not_repeated():
    same = "---\ntitle: Setup\n---\n# Setup\n\nIntro.\n\n## Install\n\nSteps.\n"
    body = strip_markup(same, "setup.md")
    paths = [s.heading_path for s in split_sections(body.text, body.title)]
    assert paths == [["Setup"], ["Setup", "Install"]]
    other = "---\ntitle: Setup\n---\n# Getting started\n\nIntro.\n"
    body = strip_markup(other, "setup.md")
    assert [s.heading_path for s in split_sections(body.text, body.title)] == [
        ["Setup", "Getting started"]
    ]
    untitled = strip_markup("---\nslug: /x\n---\nText.\n", "x.md")
    assert untitled.title is None and untitled.text == "Text.\n"


def test_broken_front_matter_names_the_document_and_the_line():
    page = "---\ntitle: Setup\nkeywords: [a, b\n---\nText.\n"
    with pytest.raises(DocumentError, match=r"setup\.md: its front matter .* not valid YAML"):
        strip_markup(page, "setup.md")


def test_a_page_of_only_front_matter_and_markup_gets_the_empty_warning():
    warning = empty_document_warning("stub.md", "---\ntitle: Stub\n---\n\n<div>\n</div>\n")
    assert warning is not None and "stub.md holds only front matter and markup" in warning
    assert empty_document_warning("page.md", "---\ntitle: Page\n---\nText.\n") is None


def test_jsx_props_with_nested_braces_and_admonition_titles_leave_no_markup():
    """Issue 28: Docusaurus components take object props, and v3 admonitions a [title]."""
    page = (
        "<Tabs values={[{label: 'Linux', value: 'linux'}, {label: 'Mac', value: 'mac'}]}>\n"
        '<TabItem value="linux">\n\nRun it.\n\n</TabItem>\n</Tabs>\n\n'
        "<Card link={{href: '/next', label: \"next\"}} />\n\n"
        ":::tip[Pro tip]\nSet the port once.\n:::\n\n"
        "A [link] at the end of a line stays [as written]\n"
    )
    text = strip_markup(page, "tabs.mdx").text
    assert text == (
        "Run it.\n\nPro tip\nSet the port once.\n\nA [link] at the end of a line stays "
        "[as written]\n"
    )


def test_converted_text_keeps_what_looks_like_markup(tiny_tokenizer):
    """A converter's markdown (markup=False) is chunked as it is: no tag stripping, the title
    given is the root of every heading path."""
    text = "Run `tool <name>` or tool <name> directly.\n\n## Flags\n\nSee <flags>.\n"
    chunks = chunk_document(text, "x.pdf", tiny_tokenizer, markup=False, title="Manual")
    assert [(c.heading_path, c.text) for c in chunks] == [
        (["Manual"], "Run `tool <name>` or tool <name> directly."),
        (["Manual", "Flags"], "## Flags\n\nSee <flags>."),
    ]
    assert empty_document_warning("x.pdf", text, markup=False) is None
    assert "x.pdf is empty" in empty_document_warning("x.pdf", "", markup=False)


def test_sections_keep_heading_paths_and_ignore_code_fences():
    text = "# A\nx\n```\n# not a heading\n```\n## B\ny\n### C\nz\n## D\nw\n"
    paths = [s.heading_path for s in split_sections(text)]
    assert paths == [["A"], ["A", "B"], ["A", "B", "C"], ["A", "D"]]


def test_chunks_respect_size_overlap_and_ids(tiny_tokenizer):
    chunks = chunk_document(DOC, "guide.md", tiny_tokenizer, chunk_size=300, chunk_overlap=30)
    assert all(c.n_tokens <= 300 for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)
    flags = [c for c in chunks if c.heading_path == ["Guide", "Usage", "Flags"]]
    assert len(flags) > 2  # the long section is windowed
    a, b = flags[0], flags[1]
    assert a.end_char > b.start_char  # consecutive windows overlap
    again = chunk_document(DOC, "guide.md", tiny_tokenizer)
    assert [c.id for c in again] == [c.id for c in chunks]
    other = chunk_document(DOC, "other.md", tiny_tokenizer)
    assert not {c.id for c in other} & {c.id for c in chunks}


def test_read_document_errors_name_the_file(tmp_path):
    (tmp_path / "bad.md").write_bytes(b"caf\xe9")
    with pytest.raises(DocumentError, match="bad.md.*UTF-8"):
        read_document(tmp_path / "bad.md", "bad.md")
    (tmp_path / "bin.md").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DocumentError, match="binary"):
        read_document(tmp_path / "bin.md", "bin.md")
