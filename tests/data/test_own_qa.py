"""Bring your own Q&A: files and datasets a team already has, with provenance, through the
same quality filter and contamination check as generated rows."""

import json

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl, write_jsonl
from ragft_dagster.data.own_qa import OwnQaError, ground_on_documents, load_own_qa

from ..conftest import write_recipe

FAQ = (
    "question,answer,doc\n"
    'How do I install it?,"Run make install.\nIt creates the venv.",installation.md\n'
    "What does the docs sensor watch?,The docs folder and its markdown files.,\n"
)


def test_csv_rows_keep_their_file_and_line_even_across_multiline_answers(tmp_path):
    (tmp_path / "faq.csv").write_text(FAQ)
    rows = load_own_qa("faq.csv", root=tmp_path, key="sft_dataset.own_qa.0.source")
    assert [r["source"] for r in rows] == ["faq.csv:2", "faq.csv:4"]
    assert rows[0]["answer"] == "Run make install.\nIt creates the venv."
    assert rows[0]["doc"] == "installation.md" and rows[1]["doc"] == ""
    assert {r["generator"] for r in rows} == {"own"} and len({r["id"] for r in rows}) == 2


def test_csv_follows_the_shared_table_rules(tmp_path):
    """A BOM, blank lines and header case are taken as the benchmark takes them; an unquoted
    comma is an error naming its line, not an answer cut at the comma."""
    (tmp_path / "faq.csv").write_text("\ufeffQuestion,Answer\n\nWhat?,It is.\n")
    rows = load_own_qa("faq.csv", root=tmp_path, key="k")
    assert [(r["source"], r["answer"]) for r in rows] == [("faq.csv:3", "It is.")]
    (tmp_path / "faq.csv").write_text("question,answer\nHow many?,About 1,000.\n")
    with pytest.raises(OwnQaError, match=r"faq.csv: row 1 \(line 2\): 3 values .*unquoted comma"):
        load_own_qa("faq.csv", root=tmp_path, key="k")


def test_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"question": "What is a recipe?", "answer": "A YAML file."})
        + "\n\n"
        + json.dumps({"question": "What is a profile?", "answer": "Where it runs."})
        + "\n"
    )
    rows = load_own_qa("qa.jsonl", root=tmp_path, key="k")
    assert [r["source"] for r in rows] == ["qa.jsonl:1", "qa.jsonl:3"]
    table = pa.table({"question": ["Q one?", "Q two?"], "answer": ["A one.", "A two."]})
    pq.write_table(table, tmp_path / "qa.parquet")
    rows = load_own_qa("qa.parquet", root=tmp_path, key="k", max_rows=1)
    assert [(r["question"], r["source"]) for r in rows] == [("Q one?", "qa.parquet:1")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("faq.csv", "question,answer\nWhat?,\n", r"faq.csv: line 2: field 'answer' is empty"),
        (
            "faq.csv",
            "question,reply\nWhat?,This.\n",
            r"line 2: field 'answer' is missing \(the "
            r"row has: question, reply\)",
        ),
        (
            "qa.jsonl",
            '{"question": "What?", "answer": 3}\n',
            r"qa.jsonl: line 1: field 'answer' "
            r"is int, not a string",
        ),
        ("qa.jsonl", '{"question": "What?"\n', r"qa.jsonl: line 1: not a JSON object"),
        ("faq.csv", "", r"faq.csv: empty; write a header"),
        ("faq.csv", "question,answer\n", r"faq.csv: no rows"),
    ],
)
def test_bad_files_name_the_file_line_and_field(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(OwnQaError, match=message):
        load_own_qa(name, root=tmp_path, key="sft_dataset.own_qa.0.source")


def test_an_unreachable_hub_dataset_says_how_to_mirror_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        OwnQaError,
        match=r"sft_dataset.own_qa.0.source: the dataset "
        r"'someone/faq' \(train\) could not be read .*hub_mirror",
    ):
        load_own_qa("someone/faq", root=tmp_path, key="sft_dataset.own_qa.0.source")


def test_rows_naming_a_document_are_grounded_on_its_best_chunk():
    rows = [
        {"answer": "Run make install to create the venv.", "doc": "install.md", "chunk_id": None},
        {"answer": "Anything.", "doc": "gone.md", "chunk_id": None},
        {"answer": "Anything.", "doc": "", "chunk_id": None},
    ]
    chunks = {
        "install.md": [
            {"id": "i0", "text": "Requirements: Python 3.11."},
            {"id": "i1", "text": "Run make install; it creates a venv."},
        ]
    }
    assert ground_on_documents(rows, chunks) == 1
    assert [r["chunk_id"] for r in rows] == ["i1", None, None]


def test_recipe_errors_name_the_key(tmp_path):
    from ragft_dagster.config.recipe import RecipeError, load_recipe

    def own(**section):
        return lambda raw: raw["sft_dataset"].update(**section)

    with pytest.raises(RecipeError, match=r"sft_dataset.own_qa.0.source.*file not found"):
        load_recipe(write_recipe(tmp_path, own(own_qa=[{"source": "missing.csv"}])))
    with pytest.raises(RecipeError, match="nothing to train on"):
        load_recipe(write_recipe(tmp_path, own(generated=False)))


def test_sft_dataset_trains_on_own_qa_alone_with_provenance_and_filters(tmp_path):
    from ragft_dagster.assets import training
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.resources import (
        ArtifactStoreResource,
        ComputeResource,
        LlmEndpointResource,
        VectorStoreResource,
    )

    faq = tmp_path / "faq.csv"
    faq.write_text(
        "question,answer,doc\n"
        "How do I install the project?,Run make install; it creates a venv.,install.md\n"
        "How do I install the project?,Run make install; it creates a venv.,install.md\n"
        "How is the index stored?,In PostgreSQL tables across regions.,install.md\n"
        "Which Python does it need?,Python 3.11 or newer.,\n"
    )
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            lambda raw: raw["sft_dataset"].update(
                generated=False,
                own_qa=[{"source": str(faq)}],
                validation_fraction=0.0,
                quality={"min_similarity": None, "duplicate_threshold": None},
            ),
        )
    )
    layout = ArtifactLayout(tmp_path / "artifacts")
    write_jsonl(
        layout.chunks("install.md"),
        [
            {
                "id": "i1",
                "text": "Run make install; it creates a venv.",
                "doc": "install.md",
                "heading_path": [],
            }
        ],
    )
    write_jsonl(
        layout.qa("install.md"),
        [
            {
                "id": "g1",
                "chunk_id": "i1",
                "doc": "install.md",
                "generator": "offline",
                "question": "What does make install create?",
                "answer": "It creates a venv.",
            }
        ],
    )
    sft_dataset = training.build(recipe)[0]
    resources = {
        "artifacts": ArtifactStoreResource(root=str(layout.root)),
        "compute": ComputeResource(device="cpu"),
        "llm": LlmEndpointResource(),
        "vector_store": VectorStoreResource(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", ["install.md"])
        result = dg.materialize(
            [sft_dataset], instance=instance, resources=resources, selection="sft_dataset"
        )
    meta = result.asset_materializations_for_node("sft_dataset")[0].metadata
    assert meta["own_qa_rows"].value == 4 and meta["duplicates_removed"].value == 1
    assert meta["quality_rejected_grounding"].value == 1  # PostgreSQL: not in its document
    train = read_jsonl(layout.sft_dataset / "train.jsonl")
    # generated rows are left out; own rows carry their file and line
    lines = sorted(r["source"].rsplit(":", 1)[1] for r in train)
    assert lines[1] == "5" and lines[0] in {"2", "3"}  # one of the exact duplicates is kept
    assert {r["generator"] for r in train} == {"own"}
    assert meta["contaminated_rows_removed"].value == 0
