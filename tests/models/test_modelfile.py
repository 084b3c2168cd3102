"""The export's Ollama Modelfile: FROM the folder, the ChatML chat template in Ollama's Go
template syntax, its default system message, stop tokens, temperature 0."""

import re
import shutil

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.models.export import MODELFILE, export_model, ollama_modelfile

from ..conftest import QUICKSTART_RECIPE

CONVERSATIONS = [
    [{"role": "user", "content": "How do I install it?"}],
    [
        {"role": "system", "content": "Answer from the docs."},
        {"role": "user", "content": "How do I install it?"},
        {"role": "assistant", "content": "Run make install."},
        {"role": "user", "content": "And then?"},
    ],
]


def _chatml_tokenizer(tiny_base):
    """The tiny tokenizer with the quickstart's (SmolLM2's ChatML) chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = load_recipe(QUICKSTART_RECIPE).chat_template
    return tok


def _fields(text: str) -> dict[str, list[str]]:
    """Modelfile instructions (``NAME value``, triple-quoted values may span lines)."""
    fields: dict[str, list[str]] = {}
    body = re.sub(r"(?m)^#.*\n", "", text)
    for name, quoted, plain in re.findall(r'(?m)^([A-Z]+) (?:"""(.*?)"""|([^\n]*))$', body, re.S):
        fields.setdefault(name, []).append(quoted or plain)
    return fields


def _render_ollama(template: str, system: str | None, messages: list[dict[str, str]]) -> str:
    """What Ollama renders for a chat with this TEMPLATE (the shape the export writes: a range
    over .Messages whose body may hold `if ne .Role "assistant"`, then a suffix), with the
    Modelfile's SYSTEM put in front of a chat that has no system message, as Ollama's chat
    handler does."""
    head = "{{- range .Messages }}"
    assert template.startswith(head), template
    body, _, suffix = template[len(head) :].rpartition("{{ end }}")
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    not_assistant = re.compile(r'\{\{ if ne \.Role "assistant" \}\}(.*?)\{\{ end \}\}', re.S)
    turns = []
    for m in messages:
        turn = not_assistant.sub(
            lambda g, m=m: g.group(1) if m["role"] != "assistant" else "", body
        )
        assert "{{" not in turn.replace("{{ .Role }}", "").replace("{{ .Content }}", ""), turn
        turns.append(turn.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]))
    return "".join(turns) + suffix


def test_a_chatml_template_becomes_ollamas_template_with_its_system_message(tiny_base):
    tok = _chatml_tokenizer(tiny_base)
    text, facts = ollama_modelfile(tok, "ragft-quickstart")
    fields = _fields(text)
    assert fields["FROM"] == ["."]
    assert fields["SYSTEM"] == [
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    ]
    assert fields["PARAMETER"] == [
        'stop "<|im_start|>"',
        'stop "<|im_end|>"',
        f'stop "{tok.eos_token}"',
        "temperature 0",
    ]
    assert facts == {"template": "chatml", "stop": ["<|im_start|>", "<|im_end|>", tok.eos_token]}
    assert "ollama create ragft-quickstart -f Modelfile" in text
    (template,) = fields["TEMPLATE"]
    for messages in CONVERSATIONS:
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert _render_ollama(template, fields["SYSTEM"][0], messages) == expected


def test_chatml_with_a_newline_after_assistant_turns_keeps_it(tiny_base):
    """SmolLM2's own template ends every turn with a newline; the quickstart's training
    template (trl's generation markers) drops it after assistant turns: both are rendered as
    their Jinja template renders them."""
    tok = _chatml_tokenizer(tiny_base)
    tok.chat_template = tok.chat_template.replace(
        "{% endgeneration %}\n", "{% endgeneration %}\n\n"
    )  # trim_blocks eats the first newline after the tag: the second one stays
    text, facts = ollama_modelfile(tok)
    fields = _fields(text)
    (template,) = fields["TEMPLATE"]
    assert 'if ne .Role "assistant"' not in template and facts["template"] == "chatml"
    for messages in CONVERSATIONS:
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert _render_ollama(template, fields["SYSTEM"][0], messages) == expected


def test_a_template_that_is_not_chatml_is_left_to_ollama(tiny_tokenizer):
    text, facts = ollama_modelfile(tiny_tokenizer)
    fields = _fields(text)
    assert "TEMPLATE" not in fields and "SYSTEM" not in fields
    assert "No TEMPLATE: the chat template is not ChatML" in text
    assert fields["FROM"] == ["."]
    assert fields["PARAMETER"] == [f'stop "{tiny_tokenizer.eos_token}"', "temperature 0"]
    assert facts == {"template": None, "stop": [tiny_tokenizer.eos_token]}


def test_the_export_writes_the_modelfile_beside_the_checkpoint(tmp_path, tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = ArtifactLayout(tmp_path / "artifacts")
    shutil.copytree(tiny_base, layout.dpo_model)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(layout.dpo_model),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.save_pretrained(layout.lora_adapter)
    AutoTokenizer.from_pretrained(layout.dpo_model).save_pretrained(layout.lora_adapter)
    out = tmp_path / "exported"
    out.mkdir()
    chat_template = load_recipe(QUICKSTART_RECIPE).chat_template
    info = export_model(
        layout.dpo_model,
        layout.lora_adapter,
        out,
        dtype="float32",
        chat_template=chat_template,
        served_name="docs-model",
    )
    assert MODELFILE in info["files"]
    assert info["ollama"]["template"] == "chatml"
    text = (out / MODELFILE).read_text()
    fields = _fields(text)
    assert fields["FROM"] == ["."]
    assert "ollama create docs-model -f Modelfile" in text
    assert "temperature 0" in fields["PARAMETER"]
    # The Modelfile's template renders what the exported tokenizer's chat template renders.
    exported = AutoTokenizer.from_pretrained(out)
    for messages in CONVERSATIONS:
        expected = exported.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert _render_ollama(fields["TEMPLATE"][0], fields["SYSTEM"][0], messages) == expected
