"""The quality filter of the SFT dataset: what it rejects, why, and the LLM judge against a
loopback OpenAI-compatible server."""

import json
import re

import openai
import pytest

from ragft_dagster.config.recipe import JudgeRecipe, QualityRecipe
from ragft_dagster.data.quality import filter_rows, llm_judge, parse_verdict
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import BudgetExceeded, LlmStats
from ragft_dagster.training.sft import QUALITY_FILE, build_sft_dataset

from ..openai_stub import OpenAIStub

CHUNK = (
    "The vector index stores one embedding per chunk in Chroma. Set retrieval.top_k to choose "
    "how many chunks the prompt shows; the default is 3."
)
CHUNKS = {"c1": CHUNK}


def _row(i, question, answer, chunk="c1", doc="index.md"):
    return {
        "id": f"r{i}",
        "doc": doc,
        "chunk_id": chunk,
        "question": question,
        "answer": answer,
        "generator": "offline",
    }


def bag_of_words(texts):
    """A test double of an embedding model: word counts hashed into 256 dimensions."""
    import zlib

    out = []
    for text in texts:
        vector = [0.0] * 256
        for word in re.findall(r"\w+", text.lower()):
            vector[zlib.crc32(word.encode()) % 256] += 1
        out.append(vector)
    return out


def _reasons(rejections):
    return {r.id: r.reason for r in rejections}


def test_malformed_out_of_bounds_and_parroting_pairs_are_rejected_with_their_reason():
    rows = [
        _row(0, "How many chunks does the prompt show by default?", "The default is 3 chunks."),
        _row(1, "What is retrieval.top_k?", ""),
        _row(2, "Top k?", "How many chunks the prompt shows."),
        _row(3, "Where does the vector index store embeddings?", "vector index embeddings"),
        _row(4, "What does retrieval.top_k choose?", " ".join(["chunks"] * 30)),
        # short, but not a repeat: "on" is the answer
        _row(5, "What is the default state of `docs_sensor`?", "`docs_sensor` is on by default."),
    ]
    rules = QualityRecipe(
        min_overlap=None,
        min_similarity=None,
        duplicate_threshold=None,
        min_answer_words=2,
        max_answer_words=20,
    )
    kept, rejected, figures = filter_rows(rows, CHUNKS, rules)
    assert [r["id"] for r in kept] == ["r0", "r5"]
    assert _reasons(rejected) == {
        "r1": "malformed",
        "r2": "length",
        "r3": "repeats_question",
        "r4": "length",
    }
    by_id = {r.id: r for r in rejected}
    assert by_id["r1"].detail == "empty answer"
    assert by_id["r2"].detail == "question of 2 words (allowed 3–80)"
    assert by_id["r4"].detail == "answer of 30 words (allowed 2–20)"
    assert figures["rejected"] == 4 and figures["rejected_length"] == 2 and figures["kept"] == 2


def test_an_answer_its_chunk_does_not_support_is_rejected_for_grounding():
    rows = [
        _row(0, "How many chunks does the prompt show?", "Three chunks, set by retrieval.top_k."),
        _row(1, "How is the index stored?", "In PostgreSQL tables replicated across regions."),
        _row(2, "What does this answer come from?", "Some text.", chunk="missing"),  # no chunk
    ]
    rules = QualityRecipe(min_similarity=None, duplicate_threshold=None)
    kept, rejected, figures = filter_rows(rows, CHUNKS, rules)
    assert [r["id"] for r in kept] == ["r0", "r2"]
    assert _reasons(rejected) == {"r1": "grounding"}
    assert (
        "0% of the answer's content words are in its chunk (min_overlap 0.5)" in rejected[0].detail
    )
    assert figures["overlap_median"] > 0.5

    # the embedding test: the same answer, judged by its similarity to the chunk
    rules = QualityRecipe(min_overlap=None, min_similarity=0.5, duplicate_threshold=None)
    _, rejected, figures = filter_rows(rows, CHUNKS, rules, embed=bag_of_words)
    assert _reasons(rejected) == {"r1": "grounding"}
    assert "pair-chunk embedding similarity" in rejected[0].detail
    assert "similarity_median" in figures


def test_near_duplicate_questions_keep_the_first():
    rows = [
        _row(0, "How many chunks does the prompt show?", "Three chunks by default."),
        _row(1, "How many chunks does the prompt show?", "It shows three chunks."),
        _row(2, "Where are embeddings stored?", "In Chroma, one per chunk."),
        _row(3, "how many chunks does the prompt show", "The default of 3 chunks."),
    ]
    rules = QualityRecipe(min_overlap=None, min_similarity=None, duplicate_threshold=0.95)
    # blocks of 2 rows: a duplicate is found in an earlier block and inside its own block
    from ragft_dagster.data import quality

    kept, rejected, _ = filter_rows(rows, CHUNKS, rules, embed=bag_of_words)
    assert [r["id"] for r in kept] == ["r0", "r2"]
    assert _reasons(rejected) == {"r1": "near_duplicate", "r3": "near_duplicate"}
    assert "to the kept question 'How many chunks does the prompt show?' (r0)" in rejected[0].detail
    found = []
    quality._near_duplicates(
        rows, bag_of_words, 0.95, lambda row, *_: found.append(row["id"]), block=2
    )
    assert found == ["r1", "r3"]


def test_verdicts_are_read_from_json_inside_prose_or_fences():
    assert parse_verdict('```json\n{"faithfulness": 5, "relevance": 4, "reason": "ok"}\n```') == (
        5,
        4,
        "ok",
    )
    assert parse_verdict('Sure. {"faithfulness": 2, "relevance": 5}') == (2, 5, "")
    assert parse_verdict('{"faithfulness": 9, "relevance": 5}') is None
    assert parse_verdict("I cannot judge this.") is None


def _client(stub):
    return openai.OpenAI(base_url=stub.base_url, api_key="sk-test", max_retries=0, timeout=5)


def _judge_reply(body):
    """Faithful unless the answer mentions PostgreSQL; one reply is unreadable."""
    prompt = body["messages"][0]["content"]
    if "Answer: Unreadable" in prompt:
        return "no idea"
    faithful = 1 if "PostgreSQL" in prompt.split("Answer:")[1] else 5
    return json.dumps({"faithfulness": faithful, "relevance": 4, "reason": "checked"})


def test_the_llm_judge_rejects_unfaithful_pairs_caches_and_stays_in_budget(tmp_path):
    rows = [
        _row(0, "How many chunks does the prompt show?", "Three chunks, set by retrieval.top_k."),
        _row(1, "How is each chunk embedded in the index?", "In PostgreSQL, one per chunk."),
        _row(2, "Which store holds the chunk embeddings?", "Unreadable reply, chunk embedding."),
    ]
    judge = JudgeRecipe(model="judge-model", max_retries=0)
    rules = QualityRecipe(min_similarity=None, duplicate_threshold=None, judge=judge)
    cache = ReplyCache(tmp_path / "cache")
    with OpenAIStub([_judge_reply]) as stub:
        stats = LlmStats()
        fn = llm_judge(judge, cache=cache, client=_client(stub), stats=stats)
        kept, rejected, figures = filter_rows(rows, CHUNKS, rules, judge=fn)
        assert [r["id"] for r in kept] == ["r0", "r2"]  # an unscored pair is kept and counted
        assert _reasons(rejected) == {"r1": "judge"}
        assert rejected[0].detail == "faithfulness 1/5 (min 4), relevance 4/5 (min 3): checked"
        assert figures["judge_unscored"] == 1 and stats.requests == 3
        sent = stub.requests[0]
        assert sent["model"] == "judge-model" and sent["temperature"] == 0.0
        assert CHUNK in sent["messages"][0]["content"]

        # judged once: a rerun asks nothing
        again = LlmStats()
        filter_rows(
            rows,
            CHUNKS,
            rules,
            judge=llm_judge(judge, cache=cache, client=_client(stub), stats=again),
        )
        assert len(stub.requests) == 3 and again.cache_hits == 3

        # the budget stops the run before it is crossed
        tight = JudgeRecipe(model="other-model", budget={"max_requests": 2})
        with pytest.raises(BudgetExceeded, match=r"sft_dataset.quality.judge.budget.max_requests"):
            filter_rows(
                rows,
                CHUNKS,
                QualityRecipe(min_similarity=None, duplicate_threshold=None, judge=tight),
                judge=llm_judge(tight, cache=cache, client=_client(stub), stats=LlmStats()),
            )


def test_the_dataset_lists_every_rejected_row_in_quality_json(tmp_path):
    rows = [
        _row(0, "How many chunks does the prompt show?", "Three chunks, set by retrieval.top_k."),
        _row(1, "How is the index stored?", "In PostgreSQL tables replicated across regions."),
    ]
    rules = QualityRecipe(min_similarity=None, duplicate_threshold=None)
    counts = build_sft_dataset(
        rows,
        tmp_path,
        validation_fraction=0.0,
        seed=0,
        system_prompt=None,
        quality_filter=lambda rs: filter_rows(rs, CHUNKS, rules),
    )
    assert counts["quality_rejected"] == 1 and counts["train_rows"] == 1
    report = json.loads((tmp_path / QUALITY_FILE).read_text())
    assert report["rejected_grounding"] == 1
    assert report["rejected_rows"][0]["id"] == "r1"
    assert report["rejected_rows"][0]["reason"] == "grounding"


def test_quality_thresholds_are_validated_at_load():
    with pytest.raises(ValueError, match="min_answer_words 10 is above max_answer_words 5"):
        QualityRecipe(min_answer_words=10, max_answer_words=5)
    with pytest.raises(ValueError, match=r"placeholders \['\{answer\}'\]"):
        JudgeRecipe(model="m", prompt="{context} {question}")


def test_a_filter_that_leaves_nothing_fails_saying_what_removed_the_rows(tmp_path):
    from ragft_dagster.training.sft import EmptyDataset

    rows = [_row(1, "How is the index stored?", "In PostgreSQL tables replicated across regions.")]
    rules = QualityRecipe(min_similarity=None, duplicate_threshold=None)
    with pytest.raises(EmptyDataset, match=r"quality filter dropped 1 \(grounding 1\)"):
        build_sft_dataset(
            rows,
            tmp_path,
            validation_fraction=0.0,
            seed=0,
            system_prompt=None,
            quality_filter=lambda rs: filter_rows(rs, CHUNKS, rules),
        )
    assert not (tmp_path / "train.jsonl").exists()


def test_sft_dataset_asks_the_judge_at_the_profiles_endpoint(tmp_path, monkeypatch):
    """The judge through the real wiring: recipe section, profile endpoint, key from the
    environment, cached replies, metadata."""
    import dagster as dg
    import yaml

    from ragft_dagster.artifacts import ArtifactLayout, write_jsonl
    from ragft_dagster.assets import training
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.definitions import build_resources

    from ..conftest import write_recipe

    monkeypatch.setenv("RAGFT_TEST_KEY", "sk-test")
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            lambda raw: raw["sft_dataset"].update(
                validation_fraction=0.0,
                contamination={"enabled": False},
                quality={
                    "min_similarity": None,
                    "duplicate_threshold": None,
                    "judge": {"model": "judge-model", "max_retries": 0},
                },
            ),
        )
    )
    layout = ArtifactLayout(tmp_path / "artifacts")
    write_jsonl(
        layout.chunks("index.md"),
        [{"id": "c1", "text": CHUNK, "doc": "index.md", "heading_path": []}],
    )
    write_jsonl(
        layout.qa("index.md"),
        [
            _row(
                0, "How many chunks does the prompt show?", "Three chunks, set by retrieval.top_k."
            ),
            _row(
                1,
                "Where are the chunk embeddings kept?",
                "In Chroma, one embedding per chunk, PostgreSQL.",
            ),
        ],
    )
    with OpenAIStub([_judge_reply]) as stub:
        profile = tmp_path / "profile.yaml"
        profile.write_text(
            yaml.safe_dump(
                {
                    "name": "judge",
                    "artifacts": {"root": str(layout.root)},
                    "llm": {"base_url": stub.base_url, "api_key_env": "RAGFT_TEST_KEY"},
                }
            )
        )
        resources = build_resources(recipe, load_profile(profile), layout.root)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("documents", ["index.md"])
            result = dg.materialize(
                [training.build(recipe)[0]],
                instance=instance,
                resources=resources,
                selection="sft_dataset",
            )
        assert len(stub.requests) == 2
        assert stub.auth_headers[0] == "Bearer sk-test"
    meta = result.asset_materializations_for_node("sft_dataset")[0].metadata
    assert meta["judge_requests"].value == 2 and meta["quality_rejected_judge"].value == 1
    assert meta["train_rows"].value == 1
    rejected = meta["quality_rejected_rows"].value.records
    assert rejected[0].data["reason"] == "judge"


def test_a_chunk_shared_by_several_rows_is_embedded_once_and_scores_each_row_alike():
    rows = [_row(i, q, a) for i, (q, a) in enumerate(_SHARED_CHUNK_ROWS)]
    seen: list[str] = []

    def counting(texts):
        seen.extend(texts)
        return bag_of_words(texts)

    rules = QualityRecipe(min_overlap=None, min_similarity=0.0, duplicate_threshold=None)
    _, _, figures = filter_rows(rows, CHUNKS, rules, embed=counting)
    chunk = CHUNKS[rows[0]["chunk_id"]]
    assert seen.count(chunk) == 1
    assert len(seen) == len(rows) + 1
    # the same similarities as embedding the chunk once per row
    pairs = [f"{r['question']} {r['answer']}" for r in rows]
    import numpy as np

    v = np.asarray(bag_of_words(pairs + [chunk]), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    expected = sorted((v[:-1] @ v[-1]).tolist())
    assert figures["similarity_median"] == pytest.approx(expected[len(expected) // 2])


_SHARED_CHUNK_ROWS = [
    ("How many chunks does the prompt show by default?", "The default is 3 chunks."),
    ("Where are embeddings stored?", "In Chroma, one per chunk."),
    ("What does retrieval.top_k choose?", "How many chunks the prompt shows."),
]
