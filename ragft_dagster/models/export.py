"""Exporting the fine-tuned model for serving (Dagster-free).

The ``sft`` model of the benchmark is the DPO model with the LoRA adapter applied. Serving it
that way needs peft and the adapter next to the base; an OpenAI-compatible server wants one
plain checkpoint instead. :func:`export_model` merges the adapter into the weights (peft
``merge_and_unload``) and saves what ``vllm serve <dir>`` loads: safetensors shards,
``config.json``, ``generation_config.json`` and the tokenizer with its chat template.
:func:`ollama_modelfile` writes the Ollama ``Modelfile`` that imports the same folder (the chat
template in Ollama's Go-template syntax, its stop tokens, temperature 0).
:func:`model_card` writes the README that says where the model came from and how to serve it.

The checkpoint is written by transformers 5, whose file formats older readers misread: servers
still on transformers 4 ignore ``rope_parameters`` (and silently fall back to the default RoPE
base) and cannot load the ``TokenizersBackend`` tokenizer class. :func:`make_portable` adds the
legacy spelling of those fields next to the new one; transformers 5 loads both identically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
from ragft_dagster.config.merge import merge_stages, source_models
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.models.refs import upstream_deprecations_silenced

ADAPTER_CONFIG = "adapter_config.json"
CARD_FILE = "README.md"
MODELFILE = "Modelfile"

# A hub repository id (org/name), as the model card's base_model field expects.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# trl's assistant-mask markers: needed for training, meaningless for inference, and unknown to
# the Jinja engines of servers other than transformers' own (minijinja, minja).
_GENERATION_TAG = re.compile(r"\{%(-?)\s*(?:end)?generation\s*(-?)%\}")
# A conversation rendered with both templates to prove that stripping the markers changed
# nothing (a template that branches on them keeps them).
_PROBE = [
    {"role": "system", "content": "You answer questions about the docs."},
    {"role": "user", "content": "What does the recipe configure?"},
    {"role": "assistant", "content": "Every asset of the pipeline."},
    {"role": "user", "content": "And the profile?"},
]


class ExportError(ValueError):
    """An export that cannot start: the message names the missing asset and what to do."""


def served_model_name(recipe: Recipe) -> str:
    """The name the exported model is served under (``export.served_model_name``)."""
    return recipe.export.served_model_name or f"ragft-{recipe.name}"


def check_export_inputs(dpo_dir: Path, adapter_dir: Path) -> None:
    """Fail before loading anything when an upstream artifact is missing.

    Raises:
        ExportError: Naming the asset to materialize first.
    """
    if not (Path(dpo_dir) / "config.json").is_file():
        raise ExportError(
            f"dpo_model is not materialized: {dpo_dir} has no config.json; materialize "
            "dpo_model (models_job) first"
        )
    if not (Path(adapter_dir) / ADAPTER_CONFIG).is_file():
        raise ExportError(
            f"lora_adapter is not materialized: {adapter_dir} has no {ADAPTER_CONFIG}; "
            "materialize lora_adapter (training_job) first"
        )


def portable_chat_template(template: str, tokenizer: Any) -> str:
    """The chat template with trl's ``{% generation %}`` markers turned into empty Jinja
    comments, when that leaves every rendering unchanged (checked on a probe conversation); else
    the template as it is.

    A comment, not nothing: under the ``trim_blocks``/``lstrip_blocks`` that chat templates are
    rendered with, a comment trims the whitespace around it as the block tag did (and keeps its
    ``-`` controls).
    """
    stripped = _GENERATION_TAG.sub(lambda m: f"{{#{m.group(1)} {m.group(2)}#}}", template)
    if stripped == template:
        return template
    for generation_prompt in (False, True):
        messages = _PROBE if generation_prompt else _PROBE[:3]
        old, new = (
            tokenizer.apply_chat_template(
                messages,
                chat_template=t,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
            for t in (template, stripped)
        )
        if old != new:
            return template
    return stripped


# ChatML (SmolLM2, Qwen2, ...): each turn is <|im_start|>role, a newline, the content, <|im_end|>
# and a newline, except that a template trained with trl's {% generation %} markers may end
# assistant turns without the newline (the block tag's trim_blocks eats it), as the
# quickstart's does: the model learnt that, so the Ollama template reproduces it.
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


def ollama_chatml_template(assistant_newline: bool = True) -> str:
    """ChatML in Ollama's Go template syntax. Ollama keeps system messages in ``.Messages``
    and puts the Modelfile's ``SYSTEM`` first when a request has none, as Jinja templates with a
    default system message do."""
    end = "\n" if assistant_newline else '{{ if ne .Role "assistant" }}\n{{ end }}'
    return (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>"
        f"{end}{{{{ end }}}}<|im_start|>assistant\n"
    )


def _chatml(
    messages: list[dict[str, str]], default_system: str | None, assistant_newline: bool
) -> str:
    """``messages`` as ChatML with the generation prompt (what :func:`ollama_chatml_template`
    renders, the default system message first when there is no system message)."""
    if default_system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system}, *messages]
    turns = "".join(
        f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}"
        + ("\n" if assistant_newline or m["role"] != "assistant" else "")
        for m in messages
    )
    return f"{turns}{CHATML_START}assistant\n"


def chatml_form(tokenizer: Any) -> tuple[bool, str | None, bool]:
    """Whether the tokenizer's chat template renders ChatML; the system message it puts in
    front of a conversation that has none (None when it adds none); whether a newline follows
    an assistant turn's end marker.

    Checked by rendering probe conversations (with and without a system message, several
    turns) and comparing them with ChatML character by character.
    """
    question = [_PROBE[1]]
    try:
        alone = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
        renders = [
            (m, tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True))
            for m in (question, _PROBE, _PROBE[1:])
        ]
    except Exception:  # a template that fails on plain turns is not ChatML
        return False, None, True
    default = None
    head = f"{CHATML_START}system\n"
    if isinstance(alone, str) and alone.startswith(head):
        default = alone[len(head) :].partition(CHATML_END)[0]
    for newline in (True, False):
        if all(text == _chatml(list(m), default, newline) for m, text in renders):
            return True, default, newline
    return False, None, True


def ollama_modelfile(tokenizer: Any, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """An Ollama ``Modelfile`` for the checkpoint saved beside it (``FROM .``).

    A ChatML chat template becomes Ollama's Go template (and its default system message
    ``SYSTEM``); another template is left to Ollama, which derives one from
    ``tokenizer_config.json`` where it can (the file says so). Stop tokens: the template's
    turn markers and the EOS token. Temperature 0, as the benchmark asks.

    Args:
        tokenizer: The exported tokenizer, with its chat template.
        name: The model's served name (for the ``ollama create`` line in the header).

    Returns:
        The file's text, and facts for metadata: ``template`` (``chatml`` or None), ``stop``.
    """
    chatml, default_system, assistant_newline = chatml_form(tokenizer)
    stops = [CHATML_START, CHATML_END] if chatml else []
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str) and eos and eos not in stops:
        stops.append(eos)
    lines = [
        "# Ollama Modelfile written by ragft_dagster's export: FROM . is this folder's "
        "safetensors checkpoint; in this folder run",
        f"#   ollama create {name or '<name>'} -f Modelfile",
        "FROM .",
    ]
    if chatml:
        lines.append(f'TEMPLATE """{ollama_chatml_template(assistant_newline)}"""')
        if default_system and '"""' not in default_system:
            lines.append(f'SYSTEM """{default_system}"""')
    else:
        lines.append(
            "# No TEMPLATE: the chat template is not ChatML; Ollama derives one from "
            "tokenizer_config.json's chat_template where it can (check `ollama show "
            "--template`)."
        )
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    lines.append("PARAMETER temperature 0")
    facts = {"template": "chatml" if chatml else None, "stop": stops}
    return "\n".join(lines) + "\n", facts


def make_portable(out_dir: Path) -> None:
    """Add the transformers-4 spelling of the fields transformers 5 renamed, so that servers on
    either version read the same model (both versions load the result identically).

    ``config.json``: ``torch_dtype`` beside ``dtype``; ``rope_theta`` (and ``rope_scaling`` for
    a non-default RoPE) beside ``rope_parameters``. ``tokenizer_config.json``: the generic
    ``TokenizersBackend`` class as ``PreTrainedTokenizerFast``, a list of extra special tokens
    as ``additional_special_tokens``, and the chat template inline as well as in
    ``chat_template.jinja`` (older servers read only the former).
    """
    out_dir = Path(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # not the per-layer-type form
        config.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    _write_json(config_path, config)

    tok_path = out_dir / "tokenizer_config.json"
    if not tok_path.is_file():
        return
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    if tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = tok.get("extra_special_tokens")
    if isinstance(extra, list):
        known = list(tok.get("additional_special_tokens") or [])
        tok["additional_special_tokens"] = known + [t for t in extra if t not in known]
        del tok["extra_special_tokens"]
    template = out_dir / "chat_template.jinja"
    if template.is_file() and "chat_template" not in tok:
        tok["chat_template"] = template.read_text(encoding="utf-8")
    _write_json(tok_path, tok)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_model(
    dpo_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
    device: str = "cpu",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    served_name: str | None = None,
) -> dict[str, Any]:
    """Merge the LoRA adapter into the DPO model and save a checkpoint that loads without peft,
    with an Ollama ``Modelfile`` beside it.

    Args:
        dpo_dir: The DPO model (the adapter's base).
        adapter_dir: The PEFT adapter; its tokenizer (the one SFT trained with) is exported.
        out_dir: An empty directory that receives the checkpoint.
        dtype: ``bfloat16``, ``float16``, ``float32``, or ``auto`` (the DPO model's dtype); the
            adapter is merged in it.
        max_shard_size: Largest safetensors file (transformers notation, e.g. ``5GB``).
        device: Where the merge runs (``cpu``, ``cuda``).
        chat_template: The recipe's chat template (it replaces the tokenizer's, as in SFT).
        trust_remote_code: Only when the recipe opts in.
        served_name: The name it is served under (named in the Modelfile's header).

    Returns:
        Facts for metadata and the model card: parameters, dtype, architecture, shards, files,
        whether the chat template's training markers were removed, the Modelfile's template
        and stop tokens.

    Raises:
        ExportError: An upstream artifact is missing, or the merge left LoRA weights behind.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ragft_dagster.models.refs import load_tokenizer

    check_export_inputs(dpo_dir, adapter_dir)
    tokenizer = load_tokenizer(str(adapter_dir), chat_template, trust_remote_code)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(dpo_dir),
        dtype="auto" if dtype == "auto" else getattr(torch, dtype),
        trust_remote_code=trust_remote_code,
    )
    # merge_and_unload adds B @ A * scale into the base weights in place and returns the bare
    # transformers model: no peft classes, no adapter_config.json when it is saved.
    with upstream_deprecations_silenced():  # peft reads a deprecated transformers property
        merged = PeftModel.from_pretrained(model.to(device), str(adapter_dir)).merge_and_unload()
    leftovers = [name for name, _ in merged.named_parameters() if "lora_" in name]
    if leftovers:
        raise ExportError(f"the merge left LoRA weights in the model: {leftovers[:5]}")
    # Training turns the KV cache off (gradient checkpointing); generation wants it.
    merged.config.use_cache = True
    gen = merged.generation_config
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, field, None) is None:
            setattr(gen, field, getattr(tokenizer, field))
    merged.save_pretrained(str(out_dir), max_shard_size=max_shard_size)

    original = tokenizer.chat_template
    if isinstance(original, str):
        tokenizer.chat_template = portable_chat_template(original, tokenizer)
    tokenizer.save_pretrained(str(out_dir))
    make_portable(Path(out_dir))
    modelfile, ollama = ollama_modelfile(tokenizer, served_name)
    (Path(out_dir) / MODELFILE).write_text(modelfile, encoding="utf-8")
    shards = sorted(p.name for p in Path(out_dir).glob("*.safetensors"))
    return {
        "parameters": sum(p.numel() for p in merged.parameters()),
        "dtype": str(merged.dtype).removeprefix("torch."),
        "architecture": (merged.config.architectures or [type(merged).__name__])[0],
        "shards": len(shards),
        "files": sorted(p.name for p in Path(out_dir).iterdir()),
        "generation_markers_removed": original != tokenizer.chat_template,
        "ollama": ollama,
    }


# --- the model card ---------------------------------------------------------------------------


def hub_base_models(recipe: Recipe) -> list[str]:
    """The merge's source models that are hub ids (``tiny:``, ``pkg:`` and local paths are not:
    the hub rejects a card whose base_model names no repository)."""
    out = []
    for ref in source_models(recipe.merge):
        name = ref.split("+")[0].split("@")[0]
        local = Path(name) if Path(name).is_absolute() else recipe.root / name
        if _HUB_ID.match(name) and not local.exists() and name not in out:
            out.append(name)
    return out


def benchmark_rows(report_dir: Path) -> list[dict[str, Any]] | None:
    """The rows of ``mcq_report``'s summary.json, or None when there is no report."""
    path = Path(report_dir) / "summary.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text(encoding="utf-8"))
    return rows if isinstance(rows, list) else None


def _count_rows(path: Path) -> tuple[int, set[str]] | None:
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    return len(rows), {str(r["doc"]) for r in rows if r.get("doc")}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _facts(pairs: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in pairs if v is not None and v != "")


def _lineage_rows(
    recipe: Recipe, layout: ArtifactLayout, info: Mapping[str, Any], training: Mapping[str, Any]
) -> list[tuple[str, str]]:
    dpo_meta, sft_meta = training.get("dpo_model", {}), training.get("lora_adapter", {})
    stages = merge_stages(recipe.merge)
    merge = "; ".join(
        (f"{s.name}: " if len(stages) > 1 else "")
        + f"{s.config.get('merge_method', '?')} of {', '.join(source_models(s.config)) or '?'}"
        + (" and the previous stage" if "stage:" in json.dumps(s.config) else "")
        for s in stages
    )
    dpo = recipe.dpo
    dpo_data = f"`{dpo.dataset}` (split {dpo.split}" + (
        f", first {dpo.max_rows} rows)" if dpo.max_rows else ")"
    )
    dpo_line = f"DPO (trl) on {dpo_data}: " + _facts(
        [
            ("pairs", dpo_meta.get("pairs")),
            ("steps", dpo_meta.get("steps")),
            ("beta", dpo.args.get("beta")),
            ("learning rate", dpo.args.get("learning_rate")),
            ("final loss", dpo_meta.get("final_loss")),
            ("reward accuracy", dpo_meta.get("reward_accuracy")),
        ]
    )
    train = _count_rows(layout.sft_dataset / "train.jsonl")
    val = _count_rows(layout.sft_dataset / "validation.jsonl")
    generator = recipe.qa.generator + (f" ({recipe.qa.model})" if recipe.qa.model else "")
    if train is not None:
        docs = train[1] | (val[1] if val else set())
        sft_data = (
            f"{train[0]} train / {val[0] if val else 0} validation Q&A rows generated from "
            f"{len(docs)} documents (generator: {generator}), deduplicated and cleared of "
            "rows resembling the benchmark questions"
        )
    else:
        sft_data = f"synthetic Q&A (generator: {generator}); sft_dataset was not on disk"
    saved = layout.lora_adapter / "adapter_config.json"
    lora = json.loads(saved.read_text()) if saved.is_file() else recipe.lora.model_dump()
    targets = lora.get("target_modules") or "peft's default for the architecture"
    lora_line = (
        f"r={lora.get('r', 'peft default')}, alpha={lora.get('lora_alpha', 'peft default')}, "
        f"dropout {lora.get('lora_dropout', 'peft default')}, target "
        + (targets if isinstance(targets, str) else ", ".join(sorted(targets)))
    )
    lora_line += "; SFT (trl, assistant-only loss): " + _facts(
        [
            ("train rows", sft_meta.get("train_rows")),
            ("steps", sft_meta.get("steps")),
            ("epochs", recipe.sft.args.get("num_train_epochs")),
            ("learning rate", recipe.sft.args.get("learning_rate")),
            ("eval loss", sft_meta.get("eval_loss")),
        ]
    )
    if recipe.sft.quantization:
        lora_line += (
            "; trained against a 4-bit (QLoRA) copy of the base and merged into its "
            "unquantized weights"
        )
    export = (
        f"adapter merged into the weights (peft merge_and_unload), {info['dtype']}, "
        f"{info['parameters']:,} parameters, {info['shards']} safetensors file(s)"
    )
    return [
        ("merge (mergekit)", merge),
        ("preference tuning", dpo_line),
        ("SFT data", sft_data),
        ("LoRA", lora_line),
        ("export", export),
    ]


def _benchmark_section(layout: ArtifactLayout, rows: list[dict[str, Any]] | None) -> list[str]:
    if not rows:
        return [
            "No benchmark report existed when this model was exported (materialize "
            "`mcq_report` and export again to include it).",
        ]
    lines = [
        "Multiple-choice benchmark from the pipeline's `mcq_report` (95% Wilson intervals). "
        "The `sft` rows are this model (the DPO model with the adapter applied, scored in the "
        "profile's precision); `acc_norm` is the length-normalised accuracy.",
        "",
        "| model | context | n | accuracy | 95% CI | acc_norm |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:

        def pct(key: str, row: dict[str, Any] = r) -> str:
            v = row.get(key)
            return f"{100 * v:.1f}%" if isinstance(v, int | float) and v == v else "–"

        model = f"**{r.get('model')}**" if r.get("model") == "sft" else str(r.get("model"))
        ci = f"{pct('ci_low')} – {pct('ci_high')}"
        lines.append(
            f"| {model} | {r.get('context')} | {r.get('n')} | {pct('accuracy')} | {ci} "
            f"| {pct('acc_norm')} |"
        )
    summary = layout.report / "summary.json"
    weights = layout.lora_adapter / "adapter_model.safetensors"
    if weights.is_file() and summary.stat().st_mtime < weights.stat().st_mtime:
        lines += [
            "",
            "Note: the report is older than the adapter, so its `sft` figures describe an "
            "earlier adapter; re-run the evaluation and export again.",
        ]
    return lines


def model_card(
    recipe: Recipe,
    layout: ArtifactLayout,
    out_dir: Path,
    info: Mapping[str, Any],
    training: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The exported model's README: Hugging Face front matter, lineage, benchmark, serving.

    Args:
        recipe: The recipe the model was built with.
        layout: The artifact layout (SFT data and benchmark report are read from it if there).
        out_dir: Where the model will be served from (named in the commands).
        info: What :func:`export_model` returned.
        training: Metadata of the latest ``dpo_model`` and ``lora_adapter`` materializations
            (pairs, steps, losses), keyed by asset name; absent entries are left out.

    Returns:
        The card's markdown.
    """
    name = served_model_name(recipe)
    front: dict[str, Any] = {}
    base = hub_base_models(recipe)
    if base:
        front["base_model"] = base
    front["library_name"] = "transformers"
    front["license"] = recipe.export.license
    front["pipeline_tag"] = "text-generation"
    tags = ["ragft", "merge", "mergekit", "dpo", "lora", "sft", "trl", "peft"]
    front["tags"] = tags + [t for t in recipe.export.tags if t not in tags]
    lineage = _lineage_rows(recipe, layout, info, training or {})
    system = recipe.sft_dataset.system_prompt
    intro = (recipe.description.rstrip(". ") + ". ") if recipe.description else ""
    intro += (
        f"Exported by ragft_dagster from the recipe `{recipe.name}`: the DPO-aligned merge with "
        "the LoRA adapter merged into its weights, so no adapter or peft is needed to serve it."
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        intro,
        "",
        "## Lineage",
        "",
        "| step | what |",
        "|---|---|",
        *(f"| {step} | {what} |" for step, what in lineage),
        "",
        "## Benchmark",
        "",
        *_benchmark_section(layout, benchmark_rows(layout.report)),
        "",
        "## Serving",
        "",
        "Any OpenAI-compatible server that loads a transformers checkpoint serves this folder "
        "as it is; with [vLLM](https://docs.vllm.ai):",
        "",
        "```bash",
        f"vllm serve {out_dir} --served-model-name {name} --dtype {info['dtype']}",
        "```",
        "",
        "```bash",
        "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\",
        f'  -d \'{{"model": "{name}", "messages": [{{"role": "user", "content": "How do I '
        "install it?\"}]}'",
        "```",
        "",
        "```python",
        "from openai import OpenAI",
        "",
        'client = OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")',
        "reply = client.chat.completions.create(",
        f'    model="{name}", messages=[{{"role": "user", "content": "How do I install it?"}}]',
        ")",
        "```",
        "",
        "With [Ollama](https://ollama.com), which imports safetensors checkpoints of this "
        "architecture, from the `Modelfile` in this folder (the chat template, stop tokens, "
        "temperature 0); its OpenAI-compatible endpoint is `http://localhost:11434/v1`:",
        "",
        "```bash",
        f"cd {out_dir} && ollama create {name} -f {MODELFILE}",
        f"ollama run {name} 'How do I install it?'",
        "```",
        "",
        "The chat template ships in `chat_template.jinja` and `tokenizer_config.json`; the server "
        "applies it to chat requests."
        + (
            f" The training conversations began with this system message: {system!r}."
            if system
            else ""
        ),
        "To benchmark the served model with the pipeline, set the profile's `llm.base_url` to "
        f"`http://localhost:8000/v1` and add `{name}` to the recipe's `evaluation.api.models`.",
        "",
    ]
    return "\n".join(lines)
