"""The open-answer judge against a loopback OpenAI-compatible stub (127.0.0.1, started and
stopped here): verdicts read from JSON or a bare word, unreadable replies counted and never
guessed, structured output asked for and dropped when refused, every reply cached, the budget
kept; its trust measured on hand labels (Cohen's kappa worked by hand) and by asking twice."""

import json
import math
import re

import openai
import pytest

from ragft_dagster.config.recipe import OpenJudgeRecipe
from ragft_dagster.evaluation.judge import (
    JudgeTask,
    LabelsError,
    judge_agreement,
    kappa,
    load_labels,
    parse_verdict,
    run_judge,
)
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import BudgetExceeded, LlmCallError

from ..openai_stub import OpenAIStub


def _client(stub):
    return openai.OpenAI(base_url=stub.base_url, api_key="sk-test", max_retries=0, timeout=5)


def _judge(**extra):
    return OpenJudgeRecipe(model="judge-model", max_retries=0, initial_backoff=0, **extra)


def test_verdicts_are_read_from_json_or_a_leading_word_and_never_guessed():
    assert parse_verdict('{"verdict": "correct", "reason": "same fact"}', "correctness").value
    fenced = 'Sure:\n```json\n{"verdict": "Incorrect", "reason": "wrong port"}\n```'
    v = parse_verdict(fenced, "correctness")
    assert v.value is False and v.how == "json" and v.reason == "wrong port"
    assert parse_verdict("Correct. It names port 3000.", "correctness").how == "word"
    assert parse_verdict("unfaithful", "faithfulness").value is False
    # a verdict word inside prose, or the other rubric's word, is not a verdict
    for text in ("I think the answer is incorrect", "faithful", '{"verdict": "maybe"}', ""):
        assert parse_verdict(text, "correctness").value is None
        assert parse_verdict(text, "correctness").how == "unreadable"


def test_kappa_by_hand():
    # 10 items: 4 both yes, 4 both no, 2 split -> p_o 0.8, p_e 0.5 -> kappa 0.6
    pairs = [(True, True)] * 4 + [(False, False)] * 4 + [(True, False), (False, True)]
    k = kappa(pairs)
    assert k["kappa"] == pytest.approx(0.6) and k["agreement"] == pytest.approx(0.8)
    # statsmodels' asymptotic SE: sqrt(p_o (1 - p_o) / (n (1 - p_e)^2)) = 0.2530
    assert k["kappa_ci_low"] == pytest.approx(0.6 - 1.959964 * 0.25298, abs=1e-3)
    assert k["kappa_ci_high"] == 1.0  # 1.096 clipped: kappa cannot exceed 1
    assert k["table"] == [[4, 1], [1, 4]]
    assert math.isnan(kappa([(True, True)] * 3)["kappa"])  # one category: undefined
    assert math.isnan(kappa([])["agreement"])


def _reply(body):
    """A judge that marks an answer correct when it contains the reference's last word,
    faithful when the passages contain the answer's last word; prose for 'ramble'."""
    prompt = body["messages"][0]["content"]
    answer = prompt.split("Answer to grade: ")[-1].split("\n")[0] if "grade" in prompt else ""
    if "ramble" in prompt:
        return "Well, it depends on how you look at it."
    if "Reference answer:" in prompt:
        reference = prompt.split("Reference answer: ")[1].split("\n")[0]
        ok = reference.split()[-1] in answer
        return json.dumps({"verdict": "correct" if ok else "incorrect", "reason": "r"})
    passages = prompt.split("Passages:\n")[1].split("\n\nQuestion:")[0]
    said = prompt.split("\nAnswer: ")[1].split("\n")[0]
    return "faithful" if said.split()[-1] in passages else "unfaithful"


def test_the_judge_asks_once_per_verdict_with_a_schema_and_caches_every_reply(tmp_path):
    cache = ReplyCache(tmp_path / "cache")
    tasks = [
        JudgeTask("a", "correctness", "Which port?", "port 3000", reference="3000"),
        JudgeTask("b", "correctness", "Which port?", "port 80", reference="3000"),
        JudgeTask("c", "correctness", "Which port?", "ramble", reference="3000"),
        JudgeTask("d", "faithfulness", "Which port?", "it is 3000", context="make ui: 3000"),
    ]
    with OpenAIStub([_reply]) as stub:
        run = run_judge(tasks, _judge(), client=_client(stub), cache=cache)
        assert run.verdicts["a"].value is True and run.verdicts["b"].value is False
        assert run.verdicts["c"].value is None and run.unreadable == 1
        assert run.verdicts["d"].value is True and run.verdicts["d"].how == "word"
        sent = stub.requests[0]
        assert sent["temperature"] == 0.0 and sent["model"] == "judge-model"
        assert sent["response_format"]["json_schema"]["schema"]["properties"]["verdict"][
            "enum"
        ] in (["correct", "incorrect"], ["faithful", "unfaithful"])
        figures = run.figures()
        assert figures["judge_unreadable"] == 1 and figures["judge_requests"] == 4
        # replies the schema was sent with but that are not JSON: counted
        assert figures["judge_off_schema"] == 2
        again = run_judge(tasks, _judge(), client=_client(stub), cache=cache)
        assert len(stub.requests) == 4 and again.stats.cache_hits == 4
        assert {k: v.value for k, v in again.verdicts.items()} == {
            k: v.value for k, v in run.verdicts.items()
        }


def test_a_server_refusing_the_schema_is_asked_without_it_or_named_in_an_error(tmp_path):
    def reply(body):
        if "response_format" in body:  # the error names the field, as such servers do
            return {"status": 400, "code": "response_format is not supported"}
        return '{"verdict": "correct", "reason": "ok"}'

    task = [JudgeTask("a", "correctness", "Q?", "A", reference="A")]
    with OpenAIStub([reply]) as stub:
        strict = _judge(structured_output="json_schema")
        with pytest.raises(LlmCallError, match="structured_output"):
            run_judge(task, strict, client=_client(stub), cache=ReplyCache(tmp_path / "1"))
        run = run_judge(task, _judge(), client=_client(stub), cache=ReplyCache(tmp_path / "2"))
        assert run.verdicts["a"].value is True and run.structured_refused
        off = run_judge(
            [JudgeTask("b", "correctness", "Q2?", "A", reference="A")],
            _judge(structured_output="off"),
            client=_client(stub),
            cache=ReplyCache(tmp_path / "3"),
        )
        assert "response_format" not in stub.requests[-1] and off.verdicts["b"].value


def test_the_budget_stops_the_judge_before_it_is_crossed(tmp_path):
    tasks = [JudgeTask(i, "correctness", f"Q{i}?", "A", reference="A") for i in range(3)]
    with OpenAIStub(['{"verdict": "correct", "reason": ""}']) as stub:
        tight = _judge(budget={"max_requests": 2}, max_concurrency=1)
        with pytest.raises(BudgetExceeded, match="evaluation.open_answers.judge.budget"):
            run_judge(tasks, tight, client=_client(stub), cache=ReplyCache(tmp_path / "c"))
        assert len(stub.requests) == 2


def _labels(tmp_path, rows):
    path = tmp_path / "labels.csv"
    lines = ["question,reference,answer,label"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_agreement_with_people_and_with_itself(tmp_path):
    rows = [
        ("Which port?", "port 3000", "it is 3000", "correct"),
        ("Which port?", "port 3000", "it is 80", "incorrect"),
        ("Which tool?", "use ruff", "ruff", "correct"),
        ("Which tool?", "use ruff", "black", "incorrect"),
        # the person says correct, the judge (last word) disagrees
        ("Which folder?", "the .artifacts folder", ".artifacts/", "correct"),
        ("Which folder?", "the .artifacts folder", "ramble", "incorrect"),
    ]
    labels = load_labels(_labels(tmp_path, rows))
    with OpenAIStub([_reply]) as stub:
        figures = judge_agreement(
            labels, _judge(repeat=4), client=_client(stub), cache=ReplyCache(tmp_path / "c")
        )
        assert len(stub.requests) == 6 + 4  # the repeats are new requests, not cache hits
    # readable: 5 verdicts (the ramble is unreadable); judge T F T F F vs labels T F T F T
    # -> p_o 4/5; p_e = (2/5)(3/5) + (3/5)(2/5) = 12/25 -> kappa (0.8 - 0.48) / 0.52 = 0.615
    human = figures["human"]
    assert figures["unreadable"] == 1 and human["n"] == 5
    assert human["agreement"] == pytest.approx(0.8)
    assert human["kappa"] == pytest.approx(0.32 / 0.52)
    again = figures["self_consistency"]
    assert again["asked_twice"] == 4 and again["agreement"] == 1.0 and again["unreadable"] == 0
    assert [r["verdict"] for r in figures["rows"]] == [
        "correct",
        "incorrect",
        "correct",
        "incorrect",
        "incorrect",
        "unreadable",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("question,reference,answer\nQ,R,A\n", "missing column(s) ['label']"),
        ("question,reference,answer,label\nQ,R,A,maybe\n", "row 1 (line 2): column 'label'"),
        ("question,reference,answer,label\nQ,R,,correct\n", "row 1 (line 2): column 'answer'"),
        ("question,reference,answer,label\n", "no labelled answers"),
    ],
)
def test_a_bad_label_row_is_named(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelsError, match=re.escape(message)):
        load_labels(path)


def test_the_quickstart_ships_hand_labelled_answers_of_both_kinds():
    from ..conftest import QUICKSTART_DATA

    labels = load_labels(QUICKSTART_DATA / "judge_labels.csv")
    assert len(labels) == 20
    assert sum(a.correct for a in labels) == 8  # and 12 incorrect: kappa is defined


def test_a_rag_answer_is_judged_for_correctness_and_faithfulness_to_its_chunks(tmp_path):
    from ragft_dagster.config.recipe import EvaluationRecipe
    from ragft_dagster.evaluation.open_answers import judge_records

    ev = EvaluationRecipe(open_answers={"judge": {"model": "judge-model", "max_retries": 0}})
    records = [
        {"question": "Which port?", "answer": "it is 3000", "reference": "port 3000"},
        {"question": "Which port?", "answer": "it is 80", "reference": "port 3000"},
    ]
    hits = [[{"text": "make ui listens on port 3000"}], []]  # the second: closed-book
    with OpenAIStub([_reply]) as stub:
        figures = judge_records(
            records, hits, ev, ev.context_template, client=_client(stub), cache=ReplyCache(tmp_path)
        )
        faithful = [r for r in stub.requests if "Passages:" in r["messages"][0]["content"]]
    assert figures["judge_verdicts"] == 3  # two correctness verdicts, one faithfulness
    assert records[0]["judge_correct"] == 1.0 and records[0]["judge_faithful"] == 1.0
    assert records[1]["judge_correct"] == 0.0 and "judge_faithful" not in records[1]
    # the chunks reach the judge as the answering model saw them
    assert "Context:\nmake ui listens on port 3000" in faithful[0]["messages"][0]["content"]
