"""A real OpenAI-compatible server, not a stub (issue 28): `transformers serve` of the
quickstart's SmolLM2 folder on 127.0.0.1, started and stopped here. `ragft run` generates its
Q&A there (qa.generator: openai), the quality judge asks it, and one API score cell is scored
by the letters it answers. Slow: a 135M model on a busy 2-core CPU answers in seconds, so the
corpus is one short page, replies are short and the benchmark is four questions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from ..conftest import (
    LOCAL_PROFILE,
    QUICKSTART_DATA,
    QUICKSTART_RECIPE,
    ROOT,
    free_port,
    log_tail,
    stop_process_group,
    wait_until,
    write_recipe,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PAGE = """# Release gate

The release gate compares the fine-tuned model with the base model on the benchmark.
It passes when the fine-tuned model with retrieval beats the base model with retrieval
in an exact paired McNemar test at the recipe's alpha.

## Exporting

With export enabled, the adapter is merged into the DPO model and saved as safetensors
that an OpenAI-compatible server loads.
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, served model name) of `transformers serve` on the quickstart's model."""
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.models.refs import LocalModels

    tmp = tmp_path_factory.mktemp("served")
    recipe = load_recipe(QUICKSTART_RECIPE)
    folder = Path(LocalModels.of(recipe, ArtifactLayout(tmp / "artifacts")).paths("base")[0])
    port = free_port()
    log = tmp / "serve.log"
    with log.open("w") as out:
        # started from the folder's parent: the served name is the argument as given
        proc = subprocess.Popen(
            [
                str(BIN / "transformers"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                folder.name,
            ],
            cwd=folder.parent,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            assert proc.poll() is None, log_tail(log)
            return False

    try:
        wait_until(healthy, 240, "transformers serve to answer /health", log)
        yield f"{url}/v1", folder.name, log
    finally:
        stop_process_group(proc)


def test_ragft_run_generates_judges_and_scores_through_transformers_serve(tmp_path, served):
    base_url, name, server_log = served
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "release-gate.md").write_text(PAGE)
    questions = tmp_path / "mcq.csv"
    lines = (QUICKSTART_DATA / "mcq.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    questions.write_text("".join(lines[:5]))  # header + 4 questions (one line each there)
    calls = {"request_timeout": 600, "max_retries": 1, "max_concurrency": 1}

    def mutate(raw):
        raw["docs"].update(path=str(docs))
        raw["qa"] = {
            "generator": "openai",
            "model": name,
            "questions_per_chunk": 2,
            "max_tokens": 160,
            "temperature": 0.0,
            **calls,
        }
        # a 135M model's pairs are rarely well grounded: keep them (the judge is still asked
        # about every pair and its verdicts recorded), so the run goes on to train and score
        raw["sft_dataset"]["quality"] = {
            "min_overlap": None,
            "min_similarity": None,
            "judge": {
                "model": name,
                "max_tokens": 48,
                "min_faithfulness": 1,
                "min_relevance": 1,
                **calls,
            },
        }
        raw["evaluation"].update(
            questions=str(questions),
            models=["base"],
            contexts=["closed_book"],
            api={"models": [name], "max_tokens": 4, **calls},
            general_questions=None,
        )
        raw["release_gate"] = {"enabled": False}

    recipe = write_recipe(tmp_path, mutate)
    profile = tmp_path / "resources" / "served.yaml"
    profile.parent.mkdir()
    local = yaml.safe_load(LOCAL_PROFILE.read_text())
    local["artifacts"]["root"] = str(tmp_path / "artifacts")
    local["llm"] = {"base_url": base_url, "api_key_env": "RAGFT_TEST_KEY"}
    profile.write_text(yaml.safe_dump(local))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    done = subprocess.run(
        [str(BIN / "ragft"), "run", "--recipe", str(recipe), "--profile", str(profile)],
        env={**os.environ, "DAGSTER_HOME": str(home), "RAGFT_TEST_KEY": "not-needed-locally"},
        capture_output=True,
        text=True,
        timeout=2400,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:] + log_tail(server_log)
    assert "Traceback" not in out
    from ragft_dagster.artifacts import ArtifactLayout, read_jsonl

    layout = ArtifactLayout(tmp_path / "artifacts")
    qa = read_jsonl(layout.qa("release-gate.md"))
    assert qa, "the served model's replies gave no Q&A pair"
    served_requests = server_log.read_text(errors="replace").count("POST /v1/chat/completions")
    assert served_requests >= 1 + 4  # Q&A generation (+ the judge) + four API questions
    scores = read_jsonl(layout.scores(name, "closed_book"))
    assert len(scores) == 4 and all("reply" in r for r in scores)
    assert f"| {name} |" in out  # the report's table has the served model's row
    assert name in (layout.report / "summary.json").read_text()
