"""A real OpenAI-compatible server, not a stub (issue 28): `ragft serve` of a finished model of
the quickstart recipe (its SmolLM2 as dpo_model, with a LoRA adapter merged in) runs
`transformers serve` on 127.0.0.1, started and stopped here, once for the module. `ragft run`
generates its Q&A there (qa.generator: openai), the quality judge asks it, and one API score
cell is scored by the letters it answers; the served model is scored through the API path and
its letters compared with the local scorer's on the same questions; Ctrl-C stops it in one
line. Slow: a 135M model on a busy 2-core CPU answers in seconds, so the corpus is one short
page, replies are short and the benchmarks are a few questions."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


N_COMPARED = 12  # questions the served and the local scorer answer (about 1 min each side)


@dataclass
class Served:
    base_url: str
    name: str
    log: Path
    proc: subprocess.Popen
    recipe: Any
    profile: Path
    layout: Any


def _finished_model(layout, recipe) -> None:
    """A finished model of the recipe in ``layout``: its base model as dpo_model (a link) and
    a LoRA adapter on q/v with small random B matrices, so the merge changes the weights. A
    trained adapter would take the whole pipeline; the comparison needs only that the served
    weights are the ones the local scorer scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragft_dagster.models.refs import LocalModels

    base = Path(LocalModels.of(recipe, layout).paths("base")[0])
    layout.dpo_model.parent.mkdir(parents=True, exist_ok=True)
    layout.dpo_model.symlink_to(base, target_is_directory=True)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    model.save_pretrained(layout.lora_adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(layout.lora_adapter)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`ragft serve` of a finished quickstart model: its URL, model name, log and process."""
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.config.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("served")
    recipe = load_recipe(QUICKSTART_RECIPE)
    layout = ArtifactLayout(tmp / "artifacts")
    _finished_model(layout, recipe)
    profile = tmp / "resources" / "serve.yaml"
    profile.parent.mkdir()
    local = yaml.safe_load(LOCAL_PROFILE.read_text())
    local["artifacts"]["root"] = str(layout.root)
    profile.write_text(yaml.safe_dump(local))
    log = tmp / "serve.log"
    port = free_port()
    command = [str(BIN / "ragft"), "serve", "--recipe", str(QUICKSTART_RECIPE)]
    # float32: the local scorer's letters come from float32 letter logits; a bfloat16 server
    # rounds its logits and splits near ties the other way (docs/serving.md has both figures)
    command += ["--profile", str(profile), "--port", str(port), "--dtype", "float32"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )

    def ready():
        assert proc.poll() is None, log_tail(log)
        found = re.search(r"base URL: (\S+)\n  model: +(\S+)", log.read_text(errors="replace"))
        return found and found.groups()

    try:
        base_url, name = wait_until(ready, 900, "ragft serve to print its base URL", log)
        assert base_url == f"http://127.0.0.1:{port}/v1"
        assert name == "ragft-quickstart"  # short: started from the merged folder's parent
        yield Served(base_url, name, log, proc, recipe, profile, layout)
    finally:
        stop_process_group(proc)


def test_ragft_run_generates_judges_and_scores_through_transformers_serve(tmp_path, served):
    base_url, name, server_log = served.base_url, served.name, served.log
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


def test_the_served_model_answers_the_letters_the_local_scorer_picks(served, tmp_path):
    """The served finished model scored as an API model (its reply's letter) against the
    local scorer (the letter with the highest probability) on the same prompts and weights."""
    from openai import OpenAI

    from ragft_dagster.compute import ComputeSettings
    from ragft_dagster.config.recipe import ApiScoringRecipe
    from ragft_dagster.evaluation.mcq import load_questions
    from ragft_dagster.evaluation.scoring import (
        load_local_model,
        recipe_messages,
        score_api_cell,
        score_local,
    )
    from ragft_dagster.llm.cache import ReplyCache
    from ragft_dagster.models.refs import LocalModels

    recipe = served.recipe
    questions = load_questions(QUICKSTART_DATA / "mcq.csv")[:N_COMPARED]
    hits = [[] for _ in questions]
    messages = recipe_messages(recipe.evaluation, questions, hits)
    api = ApiScoringRecipe(
        models=[served.name], max_tokens=4, request_timeout=600, max_retries=1, max_concurrency=1
    )
    client = OpenAI(base_url=served.base_url, api_key="not-needed-locally", timeout=600)
    remote, stats = score_api_cell(
        questions,
        hits,
        messages,
        model_name=served.name,
        api=api,
        client=client,
        cache=ReplyCache(tmp_path / "llm_cache"),
    )
    profile = yaml.safe_load(served.profile.read_text())["compute"]
    compute = ComputeSettings(device=profile["device"], dtype="float32")  # as served
    local = score_local(
        questions,
        hits,
        messages,
        *load_local_model(LocalModels.of(recipe, served.layout), "sft", compute),
        batch_size=recipe.evaluation.batch_size,
        device=compute.torch_device(),
    )
    rows = [
        (r["predicted"], lo["predicted"], r["reply"], lo["probs"])
        for r, lo in zip(remote, local, strict=True)
    ]
    lettered = [row for row in rows if row[0] is not None]
    # greedy decoding's first token is the letter: the model's own top choice among A-D
    first = [row for row in lettered if row[2].lstrip()[:1] == row[0]]
    agree = sum(served_letter == local_letter for served_letter, local_letter, *_ in lettered)
    agree_first = sum(a == b for a, b, *_ in first)
    print(
        f"\nserved vs local scorer ({compute.inference_dtype()}): {len(rows)} questions, "
        f"{len(lettered)} replies with a letter, same letter on {agree} of them; "
        f"{len(first)} replies begin with the letter, same letter on {agree_first}; "
        f"replies: {[row[2] for row in rows]}; differing: "
        f"{[(a, b, {k: round(v, 3) for k, v in p.items()}) for a, b, _, p in rows if a != b]}"
    )
    assert stats.requests == len(questions)
    assert lettered, f"no reply named a letter: {[row[2] for row in rows]}"
    for served_letter, local_letter, reply, probs in first:
        # only a near tie may come out the other way (padding and batching change the last
        # digits of float32 logits)
        assert (
            served_letter == local_letter or abs(probs[served_letter] - probs[local_letter]) < 0.01
        ), (reply, probs)


def test_the_open_answer_judge_asks_the_served_model(served, tmp_path):
    """The open-answer judge (issue 29) against a real server: both rubrics asked with a JSON
    schema, which transformers serve accepts and ignores (prose: off-schema, counted), every
    reply read as a verdict or counted unreadable, and a rerun answered from the cache."""
    from openai import OpenAI

    from ragft_dagster.config.recipe import OpenJudgeRecipe
    from ragft_dagster.evaluation.judge import JudgeTask, run_judge
    from ragft_dagster.llm.cache import ReplyCache

    judge = OpenJudgeRecipe(model=served.name, max_tokens=40, request_timeout=300, max_retries=1)
    client = OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=300)
    tasks = [
        JudgeTask("c", "correctness", "Which command starts the web UI?", "make ui", "make ui"),
        JudgeTask(
            "f",
            "faithfulness",
            "Which port?",
            "port 3000",
            context="make ui listens on 127.0.0.1 port 3000",
        ),
    ]
    run = run_judge(tasks, judge, client=client, cache=ReplyCache(tmp_path))
    figures = run.figures()
    print(f"\njudge through transformers serve: {figures}")
    assert figures["judge_requests"] == 2 and run.structured_refused is None
    assert figures["judge_json"] + figures["judge_word"] + figures["judge_unreadable"] == 2
    assert figures["judge_off_schema"] == 2 - figures["judge_json"]
    again = run_judge(tasks, judge, client=client, cache=ReplyCache(tmp_path))
    assert again.stats.cache_hits == 2


def test_ragft_serve_stops_on_ctrl_c_in_one_line(served):
    """Ctrl-C reaches the whole foreground process group: ragft serve and its server."""
    os.killpg(served.proc.pid, signal.SIGINT)
    code = served.proc.wait(timeout=120)
    text = served.log.read_text(errors="replace")
    assert code == 128 + signal.SIGINT, text[-3000:]
    assert text.rstrip().splitlines()[-1] == "ragft serve: stopped by SIGINT"
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]

    def group_gone():
        try:
            os.killpg(served.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(group_gone, 60, "the server process to end with ragft serve")
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(OSError):
        no_proxy.open(f"{served.base_url.removesuffix('/v1')}/health", timeout=5)
