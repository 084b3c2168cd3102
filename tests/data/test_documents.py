"""A document's content identity (issue 26): the folder scan and doc_chunks agree on it, and
encoding details a reader drops (a byte-order mark, CRLF or CR line endings) do not change it."""

import pytest

from ragft_dagster.data.chunking import DocumentError, read_document
from ragft_dagster.data.convert import convert_document
from ragft_dagster.data.documents import content_hash, discover_documents, plan_document_changes

TEXT = "# Title\n\nA paragraph.\n\n## Section\n\nMore text, and a last line\n"


def test_bom_and_line_endings_do_not_change_a_documents_hash(tmp_path):
    variants = {
        "plain.md": TEXT.encode(),
        "bom.md": b"\xef\xbb\xbf" + TEXT.encode(),
        "crlf.md": TEXT.replace("\n", "\r\n").encode(),
        "both.md": b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode(),
        "cr.md": TEXT.replace("\n", "\r").encode(),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
    scan = discover_documents(tmp_path, "*.md").documents
    assert set(scan.values()) == {content_hash(TEXT.encode())}
    for name in variants:
        text = read_document(tmp_path / name, name)
        assert text == TEXT  # what chunking sees: no mark, LF
        # doc_chunks records the hash of the text it read: the scan's hash, so no rebuild
        assert content_hash(text.encode("utf-8")) == scan[name]


def test_a_real_edit_still_changes_the_hash(tmp_path):
    (tmp_path / "a.md").write_bytes(TEXT.replace("\n", "\r\n").encode())
    before = discover_documents(tmp_path, "*.md").documents["a.md"]
    (tmp_path / "a.md").write_bytes(TEXT.replace("last", "final").replace("\n", "\r\n").encode())
    assert discover_documents(tmp_path, "*.md").documents["a.md"] != before
    assert content_hash(b"a\r\nb") == content_hash(b"a\nb") != content_hash(b"a b")


def test_what_is_not_documentation_is_skipped_and_named_in_one_line(tmp_path):
    """Issue 26: node_modules READMEs, hidden drafts and build outputs became documents."""
    from ragft_dagster.config.recipe import DEFAULT_EXCLUDE

    for key in (
        "guide/intro.md",
        "guide/build-a-model.md",  # a page about building is documentation
        ".draft.md",
        ".git/README.md",
        "node_modules/pkg/README.md",
        "node_modules/pkg/docs/api.md",
        "guide/node_modules/x/README.md",
        "_build/html/index.md",
        ".venv/lib/site-packages/foo/README.md",
    ):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(TEXT)
    scan = discover_documents(tmp_path, "**/*.md", exclude=DEFAULT_EXCLUDE)
    assert sorted(scan.documents) == ["guide/build-a-model.md", "guide/intro.md"]
    assert scan.excluded == {
        ".draft.md": 1,
        ".git/": 1,
        ".venv/": 1,
        "_build/": 1,
        "guide/node_modules/": 1,
        "node_modules/": 2,
    }
    line = scan.excluded_line(tmp_path)
    assert line.startswith(f"{tmp_path.as_posix()}: skipped 7 file(s) as not documentation")
    assert "node_modules/ (2 files)" in line and "docs.exclude" in line
    # exclude: [] takes every file the glob matches
    assert len(discover_documents(tmp_path, "**/*.md", exclude=[]).documents) == 9


def test_the_recipe_key_changes_what_is_excluded(tmp_path):
    from ragft_dagster.config.recipe import DocsRecipe

    assert DocsRecipe().exclude[0] == ".*"
    assert DocsRecipe(exclude=["drafts"]).exclude == ["drafts"]


def test_a_file_of_a_type_ragft_does_not_read_is_one_warning_line_never_a_failure(tmp_path):
    """Issue 28: with the default glob (every file), an image or a .doc is named and skipped."""
    (tmp_path / "page.md").write_text(TEXT)
    (tmp_path / "diagram.svg").write_text("<svg/>")
    scan = discover_documents(tmp_path)
    changes = plan_document_changes(scan.documents, [], lambda key: None, scan.skipped)
    assert changes.to_run == ["page.md"]
    (line,) = changes.warnings(tmp_path)
    assert line.startswith(f"{tmp_path.as_posix()}/diagram.svg: a .svg file is not a document")
    with pytest.raises(DocumentError, match=r"^diagram\.svg: a \.svg file is not a document"):
        convert_document(tmp_path / "diagram.svg", "diagram.svg")
