"""The offline generator: questions a user would ask, answered by the sentence stating the fact."""

import re
from pathlib import Path

import pytest

from ragft_dagster.data.chunking import chunk_document
from ragft_dagster.data.offline_qa import generate_offline_qa
from ragft_dagster.data.qa_generation import doc_title_of
from ragft_dagster.data.qa_reply import parse_qa_reply
from ragft_dagster.prompts import render_prompt

from ..conftest import DOC, QUICKSTART_DATA

# Words a rewritten answer may add to the chunk's own ("**X**: the Y" -> "The X is the Y").
ADDED_WORDS = {"is", "the", "a", "an", "of", "value", "default", "for", "and"}


def _chunk(text: str, *headings: str) -> dict:
    return {"id": "c", "doc": "d.md", "heading_path": list(headings), "text": text}


def _pairs(text: str, *headings: str, limit: int = 10) -> dict[str, str]:
    return {
        p["question"]: p["answer"]
        for p in generate_offline_qa(_chunk(text, *headings), headings[0], limit)
    }


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_]+", text.lower()))


def test_definitions_defaults_and_limits_state_the_fact():
    text = """## Chunk size and overlap

**Chunk size**: the maximum length of a chunk, 300 tokens by default.

**Chunk**: a piece of one document of at most 300 tokens.

The pool `gpu` has a limit of 1.

SLERP takes exactly two models."""
    pairs = _pairs(text, "Chunking", "Chunk size and overlap")
    size = "The chunk size is the maximum length of a chunk, 300 tokens by default."
    assert pairs["What is the chunk size?"] == size
    assert pairs["What is the default chunk size?"] == size
    assert pairs["What is the maximum number of tokens in a chunk?"] == (
        "A chunk is a piece of one document of at most 300 tokens."
    )
    assert pairs["What is the limit of the pool `gpu`?"] == "The pool `gpu` has a limit of 1."
    assert pairs["How many models does SLERP take?"] == "SLERP takes exactly two models."


def test_settings_in_lists_and_tables():
    text = """## The retrieval section

- `top_k` is the number of passages retrieved per question; the default is 3.
- `target_modules` defaults to `all-linear`, which adapts every linear layer.
- `RAGFT_RECIPE` is the recipe path. Its default is `assets/quickstart/recipe.yaml`.

| target | what it does |
|---|---|
| `make ui` | start `dagster dev` on port 3000 |"""
    pairs = _pairs(text, "Retrieval", "The retrieval section", limit=20)
    top_k = "`top_k` is the number of passages retrieved per question; the default is 3."
    assert pairs["What does `top_k` do in the retrieval section?"] == top_k
    assert pairs["Which setting sets the number of passages retrieved per question?"] == top_k
    assert pairs["What is the default value of `top_k`?"] == top_k
    assert pairs["What does `target_modules` default to?"].startswith(
        "`target_modules` defaults to `all-linear`"
    )
    assert pairs["What is the default value of `RAGFT_RECIPE`?"] == (
        "The default value of `RAGFT_RECIPE` is `assets/quickstart/recipe.yaml`."
    )
    assert pairs["What does the `make ui` target do?"] == (
        "`make ui`: start `dagster dev` on port 3000."
    )


def test_commands_steps_and_examples_keep_their_lines():
    text = """## Installing the service

To start the server, run:

```bash
$ widgetctl start --port 8080
$ widgetctl status
```

1. download the archive;
2. unpack it into `/opt/widgets`;
3. run the installer.

```yaml
widgets:
  port: 8080
```"""
    pairs = _pairs(text, "Widgets", "Installing the service")
    assert pairs["How do I start the server?"] == "widgetctl start --port 8080\nwidgetctl status"
    assert pairs["What are the steps to install the service?"] == (
        "1. Download the archive.\n2. Unpack it into `/opt/widgets`.\n3. Run the installer."
    )
    assert pairs["Can you show an example of installing the service?"] == ("widgets:\n  port: 8080")
    # A shell block under a heading that names a task is asked about through the heading.
    heading_only = _pairs("## Running without make\n\n```shell\nragft run\n```", "Guide", "x")
    assert heading_only == {}  # the chunk's heading path, not its text, says where it is
    assert _pairs("```shell\nragft run\n```", "Guide", "Running without make") == {
        "How do I run without make?": "ragft run"
    }


def test_pairs_are_chosen_kind_by_kind_within_the_limit_and_deterministically():
    text = """**Recipe**: a YAML file that says what every asset computes.

- `a_key` is the first setting.
- `b_key` is the second setting.
- `c_key` is the third setting.
- `d_key` is the fourth setting."""
    chunk = _chunk(text, "Recipes")
    pairs = generate_offline_qa(chunk, "Recipes", 3)
    assert [p["kind"] for p in pairs] == ["definition", "parameter", "parameter"]
    assert pairs[0]["question"] == "What is a recipe?"
    assert generate_offline_qa(chunk, "Recipes", 3) == pairs
    assert len(generate_offline_qa(chunk, "Recipes", 1)) == 1
    assert generate_offline_qa(chunk, "Recipes", 0) == []


def test_a_chunk_without_known_facts_gets_one_specific_short_pair():
    text = (
        "## History\n\nOur team started the project in 2019. Deployments were slow then. "
        "Every release took a week. Nobody enjoyed the process."
    )
    pairs = generate_offline_qa(_chunk(text, "Widgets", "History"), "Widgets", 3)
    assert pairs == [
        {
            "question": "What does Widgets say about history?",
            "answer": "Our team started the project in 2019. Deployments were slow then.",
            "kind": "fallback",
        }
    ]


def test_fragments_cut_by_the_chunk_window_are_not_answers():
    text = "tokens of the base model. The index is updated incrementally. It is fast and"
    pairs = generate_offline_qa(_chunk(text, "Index", "Updates"), "Index", 3)
    assert [p["answer"] for p in pairs] == ["The index is updated incrementally."]
    assert pairs[0]["question"] == "How is the index updated?"


@pytest.fixture(scope="module")
def quickstart_pairs(tiny_tokenizer):
    out = []
    for path in sorted((QUICKSTART_DATA / "docs").glob("*.md")):
        chunks = [c.to_dict() for c in chunk_document(path.read_text(), path.name, tiny_tokenizer)]
        title = doc_title_of(chunks, Path(path).name)
        out += [(c, p) for c in chunks for p in generate_offline_qa(c, title, 3)]
    return out


def test_quickstart_answers_state_facts_taken_from_their_chunk(quickstart_pairs):
    kinds = {p["kind"] for _, p in quickstart_pairs}
    assert {"definition", "default", "limit", "parameter", "command", "steps", "example"} <= kinds
    for chunk, pair in quickstart_pairs:
        question, answer = pair["question"], pair["answer"]
        assert question.endswith("?"), question
        assert not re.search(r"(?:does|example does) the '.*' section of", question), question
        extra = _words(answer) - _words(chunk["text"]) - ADDED_WORDS
        assert not extra, (question, answer, extra)
        if pair["kind"] not in ("command", "steps", "example"):
            assert len(re.findall(r"[.!?](?:\s|$)", answer)) <= 3, answer  # not a whole section
            assert len(answer) < len(chunk["text"]), answer
    questions = {p["question"]: p["answer"] for _, p in quickstart_pairs}
    assert "300 tokens" in questions["What is the default chunk size?"]
    assert questions["How do I run everything?"] == "make run"


def test_offline_generator_is_grounded(tiny_tokenizer):
    chunks = chunk_document(DOC, "guide.md", tiny_tokenizer)
    pairs = [p for c in chunks for p in generate_offline_qa(c.to_dict(), "Guide", 3)]
    by_question = {p["question"]: p for p in pairs}
    assert by_question["In Guide, what is the installer?"]["answer"] == (
        "The installer is a script that sets things up."
    )
    assert by_question["How do I install?"]["answer"] == "make run"
    assert by_question["What does verbose do?"]["answer"].startswith(
        "verbose prints more output while running."
    )
    words = set(re.findall(r"\w+", DOC))
    for p in pairs:  # every answer is taken from the document
        assert set(re.findall(r"\w+", p["answer"])) <= words, p


@pytest.mark.parametrize(
    ("reply", "how", "n"),
    [
        ('[{"question": "Q1?", "answer": "A1"}]', "json", 1),
        ('```json\n[{"question": "Q1?", "answer": "A1"}, {"q": "Q2?", "a": "A2"}]\n```', "json", 2),
        (
            'Sure! Here they are:\n[{"question": "Q1?", "answer": "A1"}]\nHope it helps',
            "json_fragment",
            1,
        ),
        ('{"questions": [{"question": "Q1?", "answer": "A1"}]}', "json", 1),
        ("1. Q: What is X?\nA: X is Y.\n2. Q: What is Z?\nA: Z is W.", "text", 2),
        ('[{"question": "Q1?", "answer": "A1"', "failed", 0),
        ("", "failed", 0),
    ],
)
def test_parse_qa_reply_is_tolerant(reply, how, n):
    pairs, got = parse_qa_reply(reply)
    assert (got, len(pairs)) == (how, n)


def test_render_prompt_leaves_other_braces():
    out = render_prompt('Use {context}; reply like {"question": "..."} x{n}', context="C", n="3")
    assert out == 'Use C; reply like {"question": "..."} x3'
