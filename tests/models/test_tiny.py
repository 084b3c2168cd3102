"""The tiny random-init models of the fast tests."""


def test_tiny_models_are_deterministic(tiny_cache, tmp_path):
    from safetensors.torch import load_file

    from ragft_dagster.models.tiny import build_tiny_model

    a = build_tiny_model("base", tiny_cache / "tiny")
    b = build_tiny_model("base", tmp_path / "tiny")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    c = build_tiny_model("math", tmp_path / "tiny")
    wc = load_file(c / "model.safetensors")
    assert not all((wa[k] == wc[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
    assert "{% generation %}" in (a / "chat_template.jinja").read_text()
