"""The benchmark (issue 4): acc/acc_norm scoring, API models through a loopback endpoint,
answer parsing, supporting chunks, sampled-mode statistics, the per-question report, the
regression check and the nightly schedule."""

import math
from pathlib import Path

import dagster as dg
import pytest

from ragft_dagster.evaluation.mcq import (
    Question,
    Support,
    answer_support,
    load_questions,
    parse_letter,
)
from ragft_dagster.evaluation.report import build_report, regressions
from ragft_dagster.stats import sampled_cell, sampled_pair

from ..conftest import LOCAL_PROFILE, QUICKSTART_DATA, TINY_RECIPE, write_recipe
from ..openai_stub import OpenAIStub


def test_acc_norm_equals_a_direct_computation(tiny_base, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from ragft_dagster.evaluation.mcq import score_questions

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which? A. x B. y C. z D. w Answer:"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    options = ("short", "a considerably longer answer option", "mid length", "x")
    got = score_questions(model, tiny_tokenizer, [prompt], [options])[0]
    ctx = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    normed = {}
    for letter, text in zip("ABCD", options, strict=True):
        cont = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0]
        logp = torch.log_softmax(logits, -1)
        want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert abs(got["option_logprobs"][letter] - want) < 1e-3
        assert got["option_bytes"][letter] == len(text.encode())
        normed[letter] = want / len(text.encode())
    assert got["predicted_norm"] == max(normed, key=normed.get)
    assert abs(sum(got["probs"].values()) - 1) < 1e-6


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        (" C.", "C"),
        ("(D) because", "D"),
        ("Answer: A", "A"),
        ("The answer is B", "B"),
        ("**C**", "C"),
        ("I think it's D", "D"),
        ("", None),
        (None, None),
        ("I do not know", None),
        ("Based", None),
        ("E", None),
        ("A good guess is C", "C"),
        ("A. the first one", "A"),
        ("B) because", "B"),
        ("AB", None),
        ("A1", None),
        ("   ", None),
    ],
)
def test_parse_letter(reply, letter):
    """Shared by the API models and the published protocol's generations."""
    assert parse_letter(reply) == letter


def _q(question, options, correct="A", source=None):
    return Question("q", 1, question, options, correct, source)


def test_supporting_chunk_is_the_one_holding_the_answer_for_this_question():
    # Support is graded now (issue 13, item 8): the best chunk comes with its coverage, where
    # it used to be all-or-nothing (an empty list here, now coverage 0).
    chunks = [
        {"id": "c1", "doc": "a.md", "text": "The embedding dimension is 64 in the tiny model."},
        {"id": "c2", "doc": "b.md", "text": "Hidden size of the tiny models is 64 wide."},
        {"id": "c3", "doc": "b.md", "text": "Nothing relevant here."},
    ]
    q = _q("How wide is the hidden state of tiny models?", ("64", "32", "16", "8"))
    assert answer_support(q, chunks) == Support(["c2"], 1.0)
    assert answer_support(_q(q.question, q.options, source="a.md"), chunks) == Support(["c1"], 1.0)
    assert answer_support(_q("Where?", ("nowhere at all", "b", "c", "d")), chunks) == Support(
        [], 0.0
    )


def test_sampled_statistics_against_hand_computed_values():
    a = {"q1": [True] * 4, "q2": [False] * 4, "q3": [True, True, False, False]}
    cell = sampled_cell(a)
    assert cell["accuracy"] == 0.5 and cell["answers"] == 12
    assert abs(cell["se_naive"] - math.sqrt(0.25 / 12)) < 1e-9  # 0.1443
    assert abs(cell["se_question"] - 0.5 / math.sqrt(3)) < 1e-9  # sd of (1, 0, .5) = .5
    assert abs(cell["design_effect"] - 4.0) < 1e-9
    assert abs(cell["effective_n"] - 3.0) < 1e-9
    b = {"q1": [True, True, True, False], "q2": [False] * 4, "q3": [False] * 4}
    pair = sampled_pair(a, b)
    assert abs(pair["difference"] - 0.25) < 1e-9
    # per-question differences (.25, 0, .5): t = .25 / (.25 / sqrt 3) = sqrt 3 with 2 df,
    # two-sided p = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(3/5)
    assert abs(pair["question_p"] - (1 - math.sqrt(3 / 5))) < 1e-6


def test_reruns_look_significant_only_when_counted_as_independent():
    # 10 questions; A always right on 6, B always right on 4; 20 deterministic reruns each
    a = {f"q{i}": [i < 6] * 20 for i in range(10)}
    b = {f"q{i}": [i < 4] * 20 for i in range(10)}
    pair = sampled_pair(a, b)
    assert pair["naive_p"] < 1e-3  # the published test: 200 "independent" answers per cell
    assert pair["question_p"] > 0.05  # 2 discordant questions out of 10 prove nothing
    # every rerun repeats its question's answer: 200 answers are worth about the 10 questions
    assert sampled_cell(a)["effective_n"] == pytest.approx(10, rel=0.2)


def _record(qid, row, correct, predicted, retrieved=(), support=(), invalid=False):
    hit = bool(set(retrieved) & set(support)) if support else None
    return {
        "question_id": qid,
        "row": row,
        "question": f"question {row}?",
        "correct": correct,
        "predicted": predicted,
        "is_correct": predicted == correct,
        "invalid": invalid,
        "predicted_norm": None,
        "is_correct_norm": None,
        "retrieved": [{"id": i, "doc": "d.md", "heading": ""} for i in retrieved],
        "support": list(support),
        "retrieval_hit": hit,
    }


def test_report_separates_retrieval_from_generation_failures():
    rag = [
        _record("q1", 1, "A", "A", ["c1", "c2"], ["c1"]),  # right
        _record("q2", 2, "B", "C", ["c3"], ["c9"]),  # wrong, chunk not retrieved
        _record("q3", 3, "C", "D", ["c4"], ["c4"]),  # wrong although retrieved
        _record("q4", 4, "D", None, ["c5"], [], invalid=True),  # invalid; support unknown
    ]
    closed = [_record(r["question_id"], r["row"], r["correct"], "A") for r in rag]
    other = [dict(r) for r in rag]
    other[0] = {**other[0], "retrieved": [{"id": "zz", "doc": "d.md", "heading": ""}]}
    report = build_report(
        {("m", "rag"): rag, ("m", "closed_book"): closed, ("api", "rag"): other},
        ["m", "api"],
        ["closed_book", "rag"],
        n_boot=200,
    )
    row = next(r for r in report.rows if (r["model"], r["context"]) == ("m", "rag"))
    assert row["invalid"] == 1 and row["correct"] == 1
    assert row["wrong_retrieval_miss"] == 1 and row["wrong_retrieval_hit"] == 1
    assert row["retrieval_hit_rate"] == pytest.approx(2 / 3)
    assert report.mismatched_rows == [1]  # the two rag cells saw different chunks for row 1
    q2 = report.questions[1]
    assert q2["m rag"] == "C ✗" and q2["m closed_book"] == "A ✗" and q2["retrieval_hit"] == "no"
    assert report.questions[3]["m rag"] == "– ✗" and report.questions[3]["support"] == "not found"
    assert "Retrieval vs. generation failures" in report.markdown
    assert "1 invalid" in report.table_md


def test_regression_is_a_drop_below_the_previous_ci():
    rows = [{"model": "sft", "context": "rag", "accuracy": 0.40}]
    assert regressions({"accuracy_sft_rag": 0.6, "ci_low_sft_rag": 0.45}, rows)[0]["now"] == 0.4
    assert regressions({"accuracy_sft_rag": 0.6, "ci_low_sft_rag": 0.38}, rows) == []
    assert regressions({}, rows) == []


def _api_recipe(tmp_path: Path, n_questions: int, **evaluation):
    """A recipe scoring only API models, closed-book, on the first n quickstart questions."""
    lines = (QUICKSTART_DATA / "mcq.csv").read_text(encoding="utf-8")
    questions = load_questions(QUICKSTART_DATA / "mcq.csv")[:n_questions]
    # keep the header and the first n records (records may span lines: cut by row count)
    import csv
    import io

    rows = list(csv.reader(io.StringIO(lines)))
    out = io.StringIO()
    csv.writer(out).writerows(rows[: n_questions + 1])
    (tmp_path / "mcq.csv").write_text(out.getvalue(), encoding="utf-8")

    def mutate(raw):
        raw["evaluation"].update(
            questions=str(tmp_path / "mcq.csv"),
            models=[],
            contexts=["closed_book"],
            api={"models": ["gpt-4"], "initial_backoff": 0.01},
            **evaluation,
        )

    return write_recipe(tmp_path, mutate), questions


def _answer_by_question(questions, answers):
    """A reply function for the stub: the scripted answer for whichever question is asked."""

    def reply(body):
        user = body["messages"][-1]["content"]
        for q, answer in zip(questions, answers, strict=True):
            if q.question in user:
                return answer
        return "?"

    return reply


def _closed_book(ev, questions):
    """(no retrieved chunks, the messages every model is asked) for closed-book questions."""
    from ragft_dagster.evaluation.scoring import recipe_messages

    hits = [[] for _ in questions]
    return hits, recipe_messages(ev, questions, hits)


def _api_scorer(tmp_path, n_questions, **evaluation):
    """(evaluation section, questions, messages, score(client, refresh=False)) for gpt-4 at a
    loopback endpoint, closed-book, replies cached under tmp_path."""
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.evaluation.scoring import score_api_cell
    from ragft_dagster.llm.cache import ReplyCache

    recipe_path, questions = _api_recipe(tmp_path, n_questions, **evaluation)
    ev = load_recipe(recipe_path).evaluation
    hits, messages = _closed_book(ev, questions)
    cache = ReplyCache(tmp_path / "cache")

    def score(client, refresh=False):
        return score_api_cell(
            questions,
            hits,
            messages,
            model_name="gpt-4",
            api=ev.api,
            client=client,
            cache=cache,
            sampling=ev.sampling,
            refresh=refresh,
        )

    return ev, questions, messages, score


def test_api_model_scored_through_the_openai_client(tmp_path):
    import openai

    ev, questions, messages, score = _api_scorer(
        tmp_path, 5, sampling={"rounds": 3, "temperature": 0.7}
    )
    answers = [questions[0].correct, "The answer is B.", "I cannot tell", "(C)", "A"]
    with OpenAIStub([_answer_by_question(questions, answers)]) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="sk-test", max_retries=0)
        records, stats = score(client)
        assert len(stub.requests) == 5 * (1 + 3) == stats.requests
        greedy = [r for r in stub.requests if r["temperature"] == 0]
        assert len(greedy) == 5 and all(r["max_tokens"] == ev.api.max_tokens for r in greedy)
        assert {r["model"] for r in stub.requests} == {"gpt-4"}
        assert greedy[0]["messages"] in messages  # the same prompt a local model is scored on
        again, stats2 = score(client)
        assert len(stub.requests) == 20 and stats2.cache_hits == 20  # nothing paid twice
    assert [r["predicted"] for r in records] == [questions[0].correct, "B", None, "C", "A"]
    assert [r["invalid"] for r in records] == [False, False, True, False, False]
    assert records[2]["is_correct"] is False and records[2]["reply"] == "I cannot tell"
    assert all(len(r["samples"]) == 3 for r in records)
    assert again == records


def test_api_cell_report_and_regression_check_in_dagster(tmp_path):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.definitions import build_resources
    from ragft_dagster.resources import LlmEndpointResource

    recipe_path, questions = _api_recipe(tmp_path, 6)
    recipe = load_recipe(recipe_path)
    instance = dg.DagsterInstance.ephemeral()
    assets = build_all_assets(recipe)
    right = [q.correct for q in questions]
    wrong = ["I am not sure"] * 6
    check_results = []
    for round_index, answers in enumerate((right, wrong)):
        with OpenAIStub([_answer_by_question(questions, answers)]) as stub:
            # one instance (the report history), a fresh artifact root (no cached replies)
            root = tmp_path / f"art{round_index}"
            resources = build_resources(recipe, load_profile(LOCAL_PROFILE), root)
            resources["llm"] = LlmEndpointResource(base_url=stub.base_url, api_key="sk-test")
            scores = dg.materialize(
                assets,
                resources=resources,
                instance=instance,
                selection="mcq_scores",
                partition_key="closed_book|gpt-4",
            )
            meta = scores.asset_materializations_for_node("mcq_scores")[0].metadata
            report = dg.materialize(
                assets, resources=resources, instance=instance, selection="mcq_report"
            )
        check_results.append(report.get_asset_check_evaluations()[0])
        report_meta = report.asset_materializations_for_node("mcq_report")[0].metadata
        assert "per_question" in report_meta and "accuracy_gpt-4_closed_book" in report_meta
    assert meta["invalid_answers"].value == 6 and meta["accuracy"].value == 0
    assert check_results[0].passed  # first report: nothing to compare with
    last = check_results[1]
    assert not last.passed and last.severity == dg.AssetCheckSeverity.WARN
    assert last.metadata["regressions"].value == 1

    # Issue 26: another benchmark file (3 questions, all answered wrong) is a new
    # baseline, never a regression against the old questions' intervals.
    recipe_path, questions = _api_recipe(tmp_path, 3)
    recipe = load_recipe(recipe_path)
    assets = build_all_assets(recipe)
    with OpenAIStub([_answer_by_question(questions, ["?"] * 3)]) as stub:
        resources = build_resources(recipe, load_profile(LOCAL_PROFILE), tmp_path / "art2")
        resources["llm"] = LlmEndpointResource(base_url=stub.base_url, api_key="sk-test")
        for selection in ("mcq_scores", "mcq_report"):
            report = dg.materialize(
                assets,
                resources=resources,
                instance=instance,
                selection=selection,
                partition_key="closed_book|gpt-4" if selection == "mcq_scores" else None,
            )
    rebased = report.get_asset_check_evaluations()[0]
    assert rebased.passed and rebased.metadata["regressions"].value == 0
    assert rebased.metadata["new_baseline"].value == ["gpt-4 closed_book"]
    assert "new baseline" in rebased.description


def test_nightly_schedule_requests_every_cell(tmp_path):
    from ragft_dagster.definitions import build_definitions

    recipe_path = write_recipe(
        tmp_path, lambda raw: raw["evaluation"].update(api={"models": ["gpt-4"]})
    )
    defs = build_definitions(recipe_path, LOCAL_PROFILE, tmp_path / "art")
    schedule = defs.resolve_schedule_def("nightly_evaluation")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    import datetime

    when = datetime.datetime(2026, 11, 24, 2, 0, tzinfo=datetime.UTC)
    requests = list(
        schedule.evaluate_tick(
            dg.build_schedule_context(
                scheduled_execution_time=when, repository_def=defs.get_repository_def()
            )
        ).run_requests
        or []
    )
    keys = {str(r.partition_key) for r in requests}
    models = ["base", "merged", "dpo", "sft", "gpt-4"]
    cells = [f"{ctx}|{m}" for m in models for ctx in ("closed_book", "rag")]
    assert keys == set(cells)
    assert len({r.run_key for r in requests}) == 10
    assert all(r.tags["ragft/trigger"] == "nightly" for r in requests)  # re-asks API models
    assert all(r.job_name in (None, "evaluation_job") for r in requests)
    assert schedule.job_name == "evaluation_job"


def test_sampled_mode_draws_seeded_rounds_and_reports_question_level_variance(
    tiny_base, tiny_tokenizer
):
    from transformers import AutoModelForCausalLM

    from ragft_dagster.config.recipe import SamplingRecipe, load_recipe
    from ragft_dagster.evaluation.scoring import score_cell

    ev = load_recipe(TINY_RECIPE).evaluation
    questions = load_questions(QUICKSTART_DATA / "mcq.csv")[:8]
    import torch

    from ragft_dagster.evaluation.mcq import letter_token_ids

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Answer:"}], tokenize=False, add_generation_prompt=True
    )
    letters = letter_token_ids(tiny_tokenizer, prompt)

    class LetterLeaning(torch.nn.Module):
        """The tiny model with a bias towards A-D, so that sampled answers are mostly valid
        (a random tiny model puts ~0.1% mass on them)."""

        def forward(self, **kwargs):
            out = base(**kwargs)
            out.logits[..., letters] += 9.0
            return out

    model = LetterLeaning()
    kwargs = dict(
        retriever=None,
        system_prompt=ev.system_prompt,
        user_template=ev.user_template,
        context_template=ev.context_template,
        batch_size=4,
        device="cpu",
        sampling=SamplingRecipe(rounds=6, temperature=1.0, seed=3),
    )
    first = score_cell(questions, model, tiny_tokenizer, sample_key="base|closed_book", **kwargs)
    again = score_cell(questions, model, tiny_tokenizer, sample_key="base|closed_book", **kwargs)
    other = score_cell(questions, model, tiny_tokenizer, sample_key="sft|closed_book", **kwargs)
    assert [r["samples"] for r in first] == [r["samples"] for r in again]  # seeded
    assert [r["samples"] for r in first] != [r["samples"] for r in other]  # per cell
    drawn = [s for r in first for s in r["samples"]]
    assert len(drawn) == 48 and set(drawn) <= {"A", "B", "C", "D", None}
    assert len(set(drawn)) >= 3  # several letters drawn, and the odd invalid answer allowed
    report = build_report(
        {("base", "closed_book"): first, ("sft", "closed_book"): other},
        ["base", "sft"],
        ["closed_book"],
        n_boot=200,
    )
    assert [c["rounds"] for c in report.sampled_cells] == [6, 6]
    assert "question-level 95% CI" in report.markdown
    assert report.sampled_pairs[0]["questions"] == 8


def test_nightly_run_asks_api_models_again(tmp_path):
    import openai

    _, _, _, score_cell = _api_scorer(tmp_path, 3)

    def score(client, refresh):
        return score_cell(client, refresh)[0]

    with OpenAIStub(["A"]) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="sk-test", max_retries=0)
        score(client, False)
        stub.replies = ["D"]  # the hosted model changed
        assert [r["predicted"] for r in score(client, False)] == ["A"] * 3  # cached
        assert [r["predicted"] for r in score(client, True)] == ["D"] * 3  # asked again
        assert len(stub.requests) == 6
        assert [r["predicted"] for r in score(client, False)] == ["D"] * 3  # cache updated


def test_unreachable_api_endpoint_fails_the_cell_clearly(tmp_path):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.definitions import build_resources
    from ragft_dagster.resources import LlmEndpointResource

    recipe_path, _ = _api_recipe(tmp_path, 2)
    raw_path = recipe_path
    import yaml

    raw = yaml.safe_load(raw_path.read_text())
    raw["evaluation"]["api"].update(max_retries=1, initial_backoff=0, request_timeout=2)
    raw_path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(raw_path)
    resources = build_resources(recipe, load_profile(LOCAL_PROFILE), tmp_path / "art")
    resources["llm"] = LlmEndpointResource(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    result = dg.materialize(
        build_all_assets(recipe),
        resources=resources,
        selection="mcq_scores",
        partition_key="closed_book|gpt-4",
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert "mcq_scores[gpt-4|closed_book]" in message
    assert "evaluation.api.max_retries" in message and "llm.base_url" in message


def test_retrieval_quality_against_hand_computed_ranks():
    from ragft_dagster.retrieval.indexing import retrieval_quality

    class Ranked:
        """A retriever double returning fixed rankings."""

        def __init__(self, rankings):
            self.rankings = rankings

        def retrieve_many(self, queries):
            return [[{"id": i} for i in self.rankings[q]] for q in queries]

    retriever = Ranked(
        {
            "q1": ["c1", "x", "y"],
            "q2": ["x", "c2", "y"],
            "q3": ["x", "y", "z"],
            "q4": ["x", "y", "z", "w", "c4"],
        }
    )
    got = retrieval_quality(retriever, [("q1", "c1"), ("q2", "c2"), ("q3", "c3"), ("q4", "c4")], 3)
    assert got["questions"] == 4
    assert got["hit_at_1"] == 0.25 and got["hit_at_k"] == 0.5
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 0 + 1 / 5) / 4)


def test_long_option_set_is_deterministic_long_and_has_code(tiny_tokenizer):
    """``make bench-scoring``'s generated shape: 50 questions, options about 106 tokens on
    average with some over 400, half of them code; the same set on every run."""
    import statistics

    from ragft_dagster.benchmarks.bench import long_option_questions

    questions = long_option_questions(tiny_tokenizer)
    assert long_option_questions(tiny_tokenizer) == questions
    assert long_option_questions(tiny_tokenizer, seed=1) != questions
    assert len(questions) == 50 and len({q.id for q in questions}) == 50
    lengths = [
        len(tiny_tokenizer(o, add_special_tokens=False)["input_ids"])
        for q in questions
        for o in q.options
    ]
    assert 95 <= statistics.fmean(lengths) <= 120
    assert sum(n > 400 for n in lengths) >= 5
    code = [o for q in questions for o in q.options if o.startswith("def ")]
    assert 60 <= len(code) <= 140 and all("\n    return " in o for o in code)
    assert {q.correct for q in questions} == {"A", "B", "C", "D"}


@pytest.mark.slow
def test_bench_scoring_against_lm_eval_measures_each_scorer_in_its_own_process(tmp_path):
    """``bench scoring`` end to end on the tiny model and two long-option questions: three
    child processes (ours float32, ours in the default dtype, lm-eval), their figures, the
    ratios and the targets in the JSON; exit status 0 whatever the targets say."""
    import json

    from ragft_dagster.benchmarks.bench import main

    out = tmp_path / "bench.json"
    args = ["scoring", "--recipe", str(TINY_RECIPE), "--shapes", "long", "--long-questions", "2"]
    assert main([*args, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    rows = figures["summary"]["long"]
    default = figures["default_dtype"]
    assert set(rows) == {"ours float32", f"ours {default}", "lm-eval float32"}
    shape = figures["shapes"]["long"]
    assert shape["questions"] == 2
    for label, row in rows.items():
        assert row["seconds"] > 0 and row["gflops"] > 0, label
        # a process of its own: at least the model and torch, and not the parent's figure
        assert 0.1 < row["peak_rss_gb"] < 8, label
        assert row["positions"] >= shape["useful_positions"], label
    lmeval = rows["lm-eval float32"]
    assert lmeval["speed_up_vs_lmeval"] == 1.0 and lmeval["memory_vs_lmeval"] == 1.0
    # lm-eval runs the prompt again for every option; ours once per question
    assert lmeval["positions"] > rows["ours float32"]["positions"]
    # letter and unnormalised option: lm-eval's delimiter token adds the same to every choice
    ours = rows["ours float32"]
    assert ours["same_as_lmeval"]["predicted"] == ours["same_as_lmeval"]["predicted_option"] == 2
    assert ours["max_option_loglik_diff"] < 20
    assert any("lm-eval's speed" in name for name in figures["checks"])
    assert any("<= 60 s" in name for name in figures["checks"])
