"""`ragft serve` before the server starts: which folder is served under which name, the merge
made once and kept, and the one-line errors (not materialized, serving extra missing, port
taken, a name transformers serve cannot read back). The server itself runs in
tests/llm/test_real_server.py (slow)."""

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.cli import main
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.serve import (
    STAMP,
    NotMaterializedError,
    ServeError,
    check_port_free,
    check_servable_name,
    ready_lines,
    serve_command,
    served_model,
)

from .conftest import LOCAL_PROFILE, free_port, write_recipe


def _profile(tmp_path: Path, root: Path) -> Path:
    raw = yaml.safe_load(LOCAL_PROFILE.read_text())
    raw["artifacts"]["root"] = str(root)
    path = tmp_path / "resources" / "serve.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _serve(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["serve", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_unmaterialized_model_is_one_line_naming_the_assets_and_the_command(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    profile = _profile(tmp_path, tmp_path / "artifacts")
    port = str(free_port())
    code, out, err = _serve(
        capsys, "--recipe", str(recipe), "--profile", str(profile), "--port", port
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err
    assert "dpo_model and lora_adapter of recipe 'tiny' not materialized yet" in err
    assert f"run `ragft run --recipe {recipe} --profile {profile}` first" in err


def test_without_the_serving_extra_it_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # find_spec: not installed
    recipe = write_recipe(tmp_path)
    code, out, err = _serve(capsys, "--recipe", str(recipe))
    assert code == 2 and out == ""
    assert err == (
        "ragft serve: transformers serve needs fastapi (transformers' serving extra), not "
        "installed here: pip install 'transformers[serving]'\n"
    )


def test_a_taken_port_is_one_line_naming_the_option(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match="pick another port with --port"):
            check_port_free(port)
        code, _, err = _serve(capsys, "--recipe", str(recipe), "--port", str(port))
    assert code == 2 and err.count("\n") == 1 and f"127.0.0.1:{port}" in err


@pytest.mark.parametrize("name", ["ragft-quickstart", "team/docs-model", "m.v2_1"])
def test_names_transformers_serve_reads_back_as_a_folder(name):
    check_servable_name(name)


@pytest.mark.parametrize("name", ["a@main", "x:model.gguf", "/models/m", "../m", "a/b/c", ""])
def test_names_it_would_misread_are_refused(name):
    with pytest.raises(ServeError, match="--name or set export.served_model_name"):
        check_servable_name(name)


def test_the_export_is_served_when_on_and_materialized_under_its_short_name(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, lambda raw: raw.update(export={"enabled": True})))
    layout = ArtifactLayout(tmp_path / "artifacts")
    layout.exported_model.mkdir(parents=True)
    (layout.exported_model / "config.json").write_text("{}")
    model = served_model(recipe, layout, dtype="float32", device="cpu")
    assert model.name == "ragft-tiny" and model.dtype == "auto" and not model.notes
    assert model.folder.resolve() == layout.exported_model.resolve()
    assert model.folder.parent == model.cwd  # started there, the argument is the short name
    assert serve_command(model, 8123, "cpu")[-1] == "ragft-tiny"
    # a newer adapter than the export is said
    layout.lora_adapter.mkdir(parents=True)
    weights = layout.lora_adapter / "adapter_model.safetensors"
    weights.write_bytes(b"")
    os.utime(layout.exported_model / "config.json", (1, 1))
    again = served_model(recipe, layout, name="docs", dtype="float32", device="cpu")
    assert again.name == "docs" and again.folder.resolve() == layout.exported_model.resolve()
    assert any("older than lora_adapter" in note for note in again.notes)
    lines = ready_lines(again, 8123)
    assert "  base URL: http://127.0.0.1:8123/v1" in lines and "  model:    docs" in lines


def test_with_export_on_but_not_materialized_the_merge_inputs_are_asked_for(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, lambda raw: raw.update(export={"enabled": True})))
    with pytest.raises(NotMaterializedError, match="dpo_model and lora_adapter"):
        served_model(recipe, ArtifactLayout(tmp_path / "a"), dtype="float32", device="cpu")


def test_the_merge_is_made_once_and_again_when_the_adapter_changes(tmp_path, tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = load_recipe(write_recipe(tmp_path))
    layout = ArtifactLayout(tmp_path / "artifacts")
    shutil.copytree(tiny_base, layout.dpo_model)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(layout.dpo_model),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    adapter.save_pretrained(layout.lora_adapter)
    AutoTokenizer.from_pretrained(layout.dpo_model).save_pretrained(layout.lora_adapter)
    said: list[str] = []
    model = served_model(recipe, layout, dtype="float32", device="cpu", say=said.append)
    assert model.folder == layout.root / "serving" / "merged" / "ragft-tiny"
    assert (model.folder / "config.json").is_file() and (model.folder / "Modelfile").is_file()
    assert not (model.folder / "adapter_config.json").exists()
    assert json.loads((model.folder / STAMP).read_text())["dtype"] == "float32"
    assert len(said) == 1 and "merging lora_adapter into dpo_model" in said[0]
    served_model(recipe, layout, dtype="float32", device="cpu", say=said.append)
    assert len(said) == 1  # kept: nothing changed
    weights = layout.lora_adapter / "adapter_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    served_model(recipe, layout, dtype="float32", device="cpu", say=said.append)
    assert len(said) == 2  # a re-materialized adapter is merged again
    served_model(recipe, layout, dtype="bfloat16", device="cpu", say=said.append)
    assert len(said) == 3  # and so is another precision


def _tiny_finished_model(layout: ArtifactLayout, tiny_base: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(tiny_base, layout.dpo_model)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(layout.dpo_model),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    adapter.save_pretrained(layout.lora_adapter)
    AutoTokenizer.from_pretrained(layout.dpo_model).save_pretrained(layout.lora_adapter)


@pytest.mark.slow
def test_ragft_serve_answers_under_its_name_and_sigterm_stops_it_in_one_line(tmp_path, tiny_base):
    """The real command on the tiny model: ready lines, a chat completion under the printed
    name, SIGTERM to ragft serve alone stops the server too (the quickstart's server is
    stopped by Ctrl-C to its process group in tests/llm/test_real_server.py)."""
    import signal
    import subprocess

    from openai import OpenAI

    from .conftest import log_tail, stop_process_group, wait_until

    layout = ArtifactLayout(tmp_path / "artifacts")
    _tiny_finished_model(layout, tiny_base)
    recipe = write_recipe(tmp_path)
    profile = _profile(tmp_path, layout.root)
    port = free_port()
    log = tmp_path / "serve.log"
    command = [str(Path(sys.executable).parent / "ragft"), "serve", "--recipe", str(recipe)]
    command += ["--profile", str(profile), "--port", str(port), "--dtype", "float32"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def ready():
            assert proc.poll() is None, log_tail(log)
            return "  Ctrl-C stops it" in log.read_text(errors="replace")

        wait_until(ready, 300, "ragft serve to print its base URL", log)
        text = log.read_text()
        assert f"  base URL: http://127.0.0.1:{port}/v1\n  model:    ragft-tiny\n" in text
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        reply = client.chat.completions.create(
            model="ragft-tiny",
            messages=[{"role": "user", "content": "How do I install it?"}],
            max_tokens=4,
            temperature=0,
        )
        assert reply.choices[0].message.content is not None
        proc.send_signal(signal.SIGTERM)  # ragft serve only, not its group
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log_tail(log)
        text = log.read_text(errors="replace")
        assert text.rstrip().splitlines()[-1] == "ragft serve: stopped by SIGTERM", text[-2000:]
        assert "Traceback" not in text, text[-3000:]

        def group_gone():
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(group_gone, 60, "the server to end with ragft serve", log)
    finally:
        stop_process_group(proc)
