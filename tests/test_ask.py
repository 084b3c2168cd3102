"""`ragft ask`: the finished model (dpo_model + lora_adapter) answers over the vector index.

The artifacts are built here without the pipeline: the tiny base model as ``dpo_model``, a fresh
peft LoRA adapter as ``lora_adapter`` and an index of three quickstart pages made with the
project's own chunking and indexing functions and the packaged MiniLM embedder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ragft_dagster import cli
from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.ask import heading_trail
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.prompts import ask_messages

from .conftest import LOCAL_PROFILE, TINY_RECIPE, write_recipe

PAGES = ["installation.md", "vector-index.md", "glossary.md"]
# Worded like the "Incremental updates" section of vector-index.md.
QUESTION = (
    "Is the index updated incrementally? Which chunk ids are embedded and added, and which ids "
    "that no longer exist are deleted?"
)
EXPECTED_FIRST = "vector-index.md › The vector index › Incremental updates"


def write_profile(tmp_path: Path, root: Path, **vector_store) -> Path:
    raw = yaml.safe_load(LOCAL_PROFILE.read_text())
    raw["artifacts"]["root"] = str(root)
    raw["vector_store"].update(vector_store)
    path = tmp_path / "resources" / "test.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_base) -> tuple[Path, Path]:
    """(recipe, artifact root) holding dpo_model, lora_adapter and vector_index."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragft_dagster.data.chunking import chunk_document
    from ragft_dagster.models.refs import resolve_model_ref
    from ragft_dagster.retrieval.indexing import load_embedder, open_collection, sync_index

    tmp = tmp_path_factory.mktemp("ask")
    recipe = load_recipe(write_recipe(tmp))
    layout = ArtifactLayout(tmp / "artifacts")
    shutil.copytree(tiny_base, layout.dpo_model)
    tokenizer = AutoTokenizer.from_pretrained(layout.dpo_model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(layout.dpo_model), lora)
    adapter.save_pretrained(layout.lora_adapter)
    tokenizer.save_pretrained(layout.lora_adapter)

    chunks = [
        c.to_dict()
        for page in PAGES
        for c in chunk_document(
            (recipe.docs_dir / page).read_text(), page, tokenizer, chunk_size=120, chunk_overlap=10
        )
    ]
    r = recipe.retrieval
    embedder = load_embedder(resolve_model_ref(r.embedding_model, layout.root, recipe.root))
    with open_collection(r.collection, path=layout.vector_index) as collection:
        sync_index(collection, chunks, embedder, r.embedding_model)
    return recipe.path, layout.root


def ask(tmp_path: Path, recipe: Path, root: Path, *args: str, **vector_store) -> int:
    profile = write_profile(tmp_path, root, **vector_store)
    return cli.main(["ask", *args, "--recipe", str(recipe), "--profile", str(profile)])


@pytest.fixture
def streamed(monkeypatch) -> list[str]:
    """The pieces of text the TextIteratorStreamer hands out, in order."""
    import transformers

    pieces: list[str] = []

    class SpyStreamer(transformers.TextIteratorStreamer):
        def __next__(self) -> str:
            piece = super().__next__()
            pieces.append(piece)
            return piece

    monkeypatch.setattr(transformers, "TextIteratorStreamer", SpyStreamer)
    return pieces


def test_ask_streams_an_answer_and_lists_its_sources(finished, tmp_path, capsys, streamed):
    recipe, root = finished
    assert ask(tmp_path, recipe, root, QUESTION, "--max-new-tokens", "24") == 0
    out = capsys.readouterr().out
    answer, _, sources = out.partition("\n\nSources:\n")
    # Tiny random models write gibberish: what matters is that it arrived piece by piece.
    pieces = [p for p in streamed if p]
    assert len(pieces) > 1
    assert answer.strip() and answer.rstrip() == "".join(pieces).rstrip()
    lines = sources.splitlines()
    assert len(lines) == 3  # retrieval.top_k of the quickstart
    assert lines[0].startswith(f"  1. {EXPECTED_FIRST}  (score ")
    assert all(" › " in line and line.split()[1] in PAGES for line in lines)


def test_ask_closed_book_and_top_k(finished, tmp_path, capsys):
    recipe, root = finished
    assert ask(tmp_path, recipe, root, QUESTION, "--no-rag", "--max-new-tokens", "8") == 0
    out = capsys.readouterr().out
    assert out.strip() and "Sources:" not in out
    # Closed book needs no index at all.
    bare = tmp_path / "bare"
    shutil.copytree(root / "models", bare / "models")
    assert ask(tmp_path, recipe, bare, QUESTION, "--no-rag", "--max-new-tokens", "4") == 0
    assert ask(tmp_path, recipe, root, QUESTION, "--top-k", "1", "--max-new-tokens", "4") == 0
    sources = capsys.readouterr().out.partition("Sources:\n")[2].splitlines()
    assert len(sources) == 1 and EXPECTED_FIRST in sources[0]


def _without_lora(root: Path) -> None:
    shutil.rmtree(ArtifactLayout(root).lora_adapter)


def _without_index(root: Path) -> None:
    shutil.rmtree(ArtifactLayout(root).vector_index)


def _with_empty_index(root: Path) -> None:
    from ragft_dagster.retrieval.indexing import open_collection

    index = ArtifactLayout(root).vector_index
    shutil.rmtree(index)
    with open_collection("tiny", path=index):
        pass


@pytest.mark.parametrize(
    "damage, missing, reason",
    [
        (_without_lora, ["lora_adapter"], "no adapter at"),
        (_without_index, ["vector_index"], "no index at"),
        (_with_empty_index, ["vector_index"], "holds no chunks"),
        (shutil.rmtree, ["dpo_model", "lora_adapter", "vector_index"], "no model at"),
    ],
    ids=["lora_adapter", "vector_index", "empty_index", "nothing"],
)
def test_missing_artifacts_name_the_asset_and_the_command(
    finished, tmp_path, capsys, monkeypatch, damage, missing, reason
):
    def heavy(*args, **kwargs):
        raise AssertionError("loaded a model before checking the artifacts")

    monkeypatch.setattr("ragft_dagster.ask.load_local_model", heavy)
    monkeypatch.setattr("ragft_dagster.ask.retrieval_embedder", heavy)
    recipe, root = finished
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    damage(copy)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert ask(tmp_path, recipe, copy, QUESTION) == 1
    captured = capsys.readouterr()
    assert not captured.out and "Traceback" not in captured.err
    for asset in missing:
        assert f"  - {asset}: " in captured.err
    assert reason in captured.err
    selected = ",".join(missing)
    assert f"dagster asset materialize -m ragft_dagster.definitions --select {selected}" in (
        captured.err
    )
    assert f"ragft run --recipe {recipe} --profile " in captured.err
    assert "DAGSTER_HOME=" in captured.err


def test_ask_uses_the_profiles_chroma_server(finished, tmp_path, capsys):
    recipe, root = finished
    # An http profile never looks at the embedded directory: it asks the server (none here).
    code = ask(tmp_path, recipe, root, QUESTION, mode="http", host="127.0.0.1", port=9)
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot open the Chroma server at 127.0.0.1:9" in err and "Traceback" not in err


def test_prompt_reuses_the_benchmark_context_and_the_training_system_prompt():
    recipe = load_recipe(TINY_RECIPE)
    hits = [{"text": "first chunk"}, {"text": "second chunk"}]
    messages = ask_messages(
        "Why?",
        hits,
        system_prompt="Answer from the docs.",
        context_template=recipe.evaluation.context_template,
    )
    assert messages == [
        {"role": "system", "content": "Answer from the docs."},
        {"role": "user", "content": "Context:\nfirst chunk\n\nsecond chunk\n\nWhy?"},
    ]
    closed = ask_messages("Why?", [], system_prompt=None, context_template="Context:\n{context}")
    assert closed == [{"role": "user", "content": "Why?"}]
    assert (
        heading_trail("a/b.md", "Guide > Install > Python") == "a/b.md › Guide › Install › Python"
    )
    assert heading_trail("b.md", "") == "b.md"
