"""Training that survives a crash (checkpoints, resume after kill -9) and multi-process training
(2 gloo ranks under torchrun through Dagster Pipes), on CPU with a tiny model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, write_jsonl
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.training.checkpoints import resumable_checkpoint, run_fingerprint
from ragft_dagster.training.train_worker import launch_command
from tests.conftest import QUICKSTART_DATA, write_recipe

SCRIPT = """
import sys
import dagster as dg
from ragft_dagster.assets import training
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

lora_adapter = training.build(load_recipe(sys.argv[1]))[-1]
dg.materialize(
    [lora_adapter],
    resources={
        "artifacts": ArtifactStoreResource(root=sys.argv[2]),
        "compute": ComputeResource(device="cpu"),
    },
)
"""


def _chat(i: int) -> dict:
    return {
        "id": f"q{i}",
        "messages": [
            {"role": "user", "content": f"What does setting {i} control in the recipe?"},
            {"role": "assistant", "content": f"Setting {i} controls the number of tokens."},
        ],
    }


def _prepare(tmp_path: Path, tiny_base: Path, sft_args: dict) -> tuple[Path, Path]:
    """An artifact root holding a dpo_model (the tiny base) and a small sft_dataset, and a
    recipe whose sft.args are ``sft_args``."""
    layout = ArtifactLayout(tmp_path / "artifacts")
    shutil.copytree(tiny_base, layout.dpo_model)
    layout.sft_dataset.mkdir(parents=True)
    write_jsonl(layout.sft_dataset / "train.jsonl", [_chat(i) for i in range(16)])
    write_jsonl(layout.sft_dataset / "validation.jsonl", [_chat(i) for i in range(16, 18)])
    recipe = write_recipe(tmp_path, lambda raw: raw["sft"].update(args=sft_args))
    return recipe, layout.root


def _materialize_lora(
    recipe: Path, root: Path, instance: dg.DagsterInstance | None = None, **compute
) -> dg.ExecuteInProcessResult:
    from ragft_dagster.assets import training
    from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

    lora_adapter = training.build(load_recipe(recipe))[-1]
    return dg.materialize(
        [lora_adapter],
        resources={
            "artifacts": ArtifactStoreResource(root=str(root)),
            "compute": ComputeResource(device="cpu", **compute),
        },
        instance=instance,
    )


def _runs(ckpt_root: Path) -> list[Path]:
    """The per-run checkpoint folders (not the lock file)."""
    if not ckpt_root.is_dir():
        return []
    return [p for p in ckpt_root.iterdir() if not p.name.startswith(".")]


def test_a_second_run_of_the_same_checkpointed_training_is_refused(tmp_path, tiny_base):
    from ragft_dagster.assets._training import checkpointed_output

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    fingerprint = {
        "model_dir": tiny_base,
        "data_files": [data],
        "settings": {"args": {"save_strategy": "steps", "save_steps": 5}},
    }
    kwargs = {"artifact_root": tmp_path, "asset": "lora_adapter", "fingerprint_of": fingerprint}
    with checkpointed_output(tmp_path / "out", **kwargs) as (_, ckpt):
        assert ckpt is not None and ckpt.parent == tmp_path / "checkpoints" / "lora_adapter"
        second = checkpointed_output(tmp_path / "out", **kwargs)
        with pytest.raises(dg.Failure, match="another process is training lora_adapter"):
            second.__enter__()
    assert (tmp_path / "out").is_dir() and not ckpt.exists()
    # Turning checkpoints off drops what an interrupted run left (it can never resume).
    stale = tmp_path / "checkpoints" / "lora_adapter" / "0123"
    stale.mkdir(parents=True)
    off = {**fingerprint, "settings": {"args": {}}}
    with checkpointed_output(tmp_path / "out", **{**kwargs, "fingerprint_of": off}) as (_, c):
        assert c is None
    assert not stale.parent.exists()


def test_ranks_exit_when_the_step_process_that_launched_them_dies():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher_code = (
        "import sys, time\n"
        "from ragft_dagster.training.train_worker import _exit_with_parent\n"
        "_exit_with_parent(int(sys.argv[1]), interval=0.1)\n"
        "time.sleep(60)\n"
    )
    rank = subprocess.Popen([sys.executable, "-c", watcher_code, str(parent.pid)])
    try:
        time.sleep(1.0)
        assert rank.poll() is None, "the rank must keep running while its parent lives"
        parent.kill()
        parent.wait(timeout=10)
        assert rank.wait(timeout=20) == 1
    finally:
        for proc in (parent, rank):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_resumable_checkpoint_skips_one_cut_off_mid_save(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    # checkpoint-6 lost its state file (killed before the trainer wrote it, which it does last).
    assert resumable_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # torn write
    assert resumable_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert resumable_checkpoint(tmp_path / "missing") is None


def test_run_fingerprint_follows_inputs_but_not_save_cadence(tmp_path, tiny_base):
    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n')
    settings = {"args": {"learning_rate": 1e-3, "save_steps": 5}, "lora": {"r": 8}}

    def fp(**changes):
        merged = {"model_dir": tiny_base, "data_files": [data], "settings": settings, **changes}
        return run_fingerprint(**merged)

    base = fp()
    assert fp(settings={**settings, "args": {"learning_rate": 1e-3, "save_steps": 50}}) == base
    assert fp(settings={**settings, "args": {"learning_rate": 2e-3, "save_steps": 5}}) != base
    assert fp(settings={**settings, "lora": {"r": 16}}) != base
    data.write_text('{"a": 2}\n')
    assert fp() != base


def test_launch_lines_start_real_ranks():
    spec = Path("/tmp/spec.json")
    torchrun = launch_command(ComputeSettings(processes=2), spec, on_cpu=True)
    assert torchrun[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    assert torchrun[-3:] == ["-m", "ragft_dagster.training.train_worker", str(spec)]
    accel = launch_command(ComputeSettings(processes=4, launcher="accelerate"), spec, on_cpu=True)
    # `accelerate launch --cpu` would start ONE process; --multi_gpu without GPUs starts gloo ranks.
    assert "--multi_gpu" in accel and "--cpu" not in accel
    assert accel[accel.index("--num_processes") + 1] == "4"
    assert accel[accel.index("--mixed_precision") :][:2] == ["--mixed_precision", "no"]
    gpu = launch_command(ComputeSettings(processes=2, launcher="accelerate"), spec, on_cpu=False)
    assert "--mixed_precision" not in gpu


@pytest.mark.slow
def test_training_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path, tiny_base):
    args = {
        "max_steps": 120,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": 10,
        "save_total_limit": 2,
        "seed": 0,
    }
    recipe, root = _prepare(tmp_path, tiny_base, args)
    script = tmp_path / "materialize.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(recipe), str(root)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_root = root / "checkpoints" / "lora_adapter"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            runs = _runs(ckpt_root)
            if runs and resumable_checkpoint(runs[0]) is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before a checkpoint could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = _runs(ckpt_root)
    saved = resumable_checkpoint(run_dir)
    assert saved is not None
    interrupted_at = int(saved.name.split("-")[1])
    assert 10 <= interrupted_at < 120
    assert not ArtifactLayout(root).lora_adapter.exists(), (
        "a killed run must leave no half artifact"
    )

    result = _materialize_lora(recipe, root)
    meta = result.asset_materializations_for_node("lora_adapter")[0].metadata
    assert meta["resumed_from_step"].value >= interrupted_at
    assert meta["steps"].value == 120
    assert (ArtifactLayout(root).lora_adapter / "adapter_config.json").is_file()
    assert not ckpt_root.joinpath(run_dir.name).exists(), "checkpoints are removed once done"


@pytest.mark.slow
def test_two_gloo_ranks_train_through_pipes_and_rank_zero_reports(tmp_path, tiny_base):
    args = {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "seed": 0}
    recipe, root = _prepare(tmp_path, tiny_base, args)
    with dg.instance_for_test() as instance:
        result = _materialize_lora(recipe, root, instance, processes=2, launcher="torchrun")
        logs = instance.all_logs(result.run_id)
    (mat,) = result.asset_materializations_for_node("lora_adapter")
    assert mat.metadata["processes"].value == 2
    assert mat.metadata["steps"].value == 4
    assert (ArtifactLayout(root).lora_adapter / "adapter_config.json").is_file()
    messages = [e.user_message for e in logs]
    # Only rank 0 opened Pipes: one start line, and its per-step progress reached the run log.
    assert sum("training started" in m for m in messages) == 1
    assert any("rank 0 of 2" in m for m in messages)
    assert any(m.startswith("step 4/4") for m in messages)


def test_qlora_settings_are_validated_and_fail_clearly_without_a_gpu(tmp_path, tiny_base):
    from ragft_dagster.config.recipe import RecipeError
    from ragft_dagster.models.refs import load_trainable_model

    def with_quantization(q):
        return write_recipe(tmp_path, lambda raw: raw["sft"].update(quantization=q))

    qlora = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    recipe = load_recipe(with_quantization(qlora))
    assert recipe.sft.quantization == qlora
    plain = load_recipe(write_recipe(tmp_path))
    assert recipe.section_version("sft") != plain.section_version("sft")
    with pytest.raises(RecipeError, match=r"sft\.quantization.*bnb_4bit_quant_typo"):
        load_recipe(with_quantization({"load_in_4bit": True, "bnb_4bit_quant_typo": "nf4"}))
    # This CPU machine has neither a CUDA GPU nor (here) bitsandbytes: the message says what to do.
    with pytest.raises(RuntimeError, match=r"sft\.quantization.*(bitsandbytes|CUDA GPU)"):
        load_trainable_model(str(tiny_base), None, False, qlora, {})


def test_checkpoint_cadence_does_not_make_trained_assets_stale(tmp_path):
    plain = load_recipe(write_recipe(tmp_path))
    cadence = {"save_strategy": "steps", "save_steps": 7, "logging_steps": 3}
    saving = load_recipe(
        write_recipe(
            tmp_path,
            lambda raw: [raw[s]["args"].update(cadence) for s in ("sft", "dpo")],
        )
    )
    assert saving.section_version("sft", "dpo") == plain.section_version("sft", "dpo")
    faster = load_recipe(
        write_recipe(tmp_path, lambda raw: raw["sft"]["args"].update(learning_rate=1e-2))
    )
    assert faster.section_version("sft") != plain.section_version("sft")


@pytest.mark.slow
def test_dpo_continues_from_the_checkpoint_it_finds(tmp_path, tiny_base):
    from ragft_dagster.training.preference import load_preference_pairs, train_dpo

    rows = load_preference_pairs(QUICKSTART_DATA / "preference_pairs.jsonl", max_rows=8)
    ckpt = tmp_path / "checkpoints"

    def train(max_steps: int, out: str) -> dict:
        args = {"max_steps": max_steps, "per_device_train_batch_size": 2, "max_length": 64}
        args |= {"save_strategy": "steps", "save_steps": 2, "gradient_checkpointing": False}
        compute = {"use_cpu": True, "report_to": "none"}
        return train_dpo(
            str(tiny_base), rows, tmp_path / out, args=args, compute_args=compute, checkpoints=ckpt
        )

    first = train(2, "first")
    assert first["resumed_from_step"] == 0
    assert resumable_checkpoint(ckpt) == ckpt / "checkpoint-2"
    second = train(4, "second")
    assert (second["resumed_from_step"], second["steps"]) == (2, 4)
    # The restored trainer state carries the first steps' logs: one continuous loss curve.
    assert second["loss_curve"][:2] == first["loss_curve"]
    assert len(second["loss_curve"]) == 4


@pytest.mark.slow
def test_lora_dpo_saves_a_full_merged_model(tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM

    from ragft_dagster.training.preference import load_preference_pairs, train_dpo

    rows = load_preference_pairs(QUICKSTART_DATA / "preference_pairs.jsonl", max_rows=4)
    out = tmp_path / "dpo"
    m = train_dpo(
        str(tiny_base),
        rows,
        out,
        args={"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 64},
        compute_args={"use_cpu": True, "report_to": "none"},
        lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
    )
    assert 0 < m["trainable_parameters"] < m["parameters"] / 2
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
