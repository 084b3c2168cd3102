"""The GPU benchmark script: its FLOPs arithmetic, its settings against the 7B recipe, and the
whole script run on CPU with the tiny shape (CI has no GPU; nothing here needs one)."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from ragft_dagster.benchmarks import gpu_bench as gb

from ..conftest import ROOT

SEVEN_B = gb.recipe_shape()


def test_7b_counts_match_mistral_7b():
    body, head = gb.matmul_params(SEVEN_B)
    assert (body, head) == (6_979_321_856, 131_072_000)
    embedding, norms = 4096 * 32000, (2 * 32 + 1) * 4096
    # Mistral-7B-v0.1's published parameter count.
    assert body + head + embedding + norms == 7_241_732_096
    # r=256 on q,k,v,o,gate,up,down: 256 x (fan-in + fan-out), 32 layers.
    assert gb.lora_params(SEVEN_B, 256) == 32 * 256 * (8192 + 2 * 5120 + 8192 + 3 * 18432)
    assert gb.lora_params(SEVEN_B, 256) == 671_088_640


def test_flops_formulas_by_hand():
    # 4N + 6 N_lora + 6 L d s
    assert gb.train_flops_per_token(1000, 10, 2, 64, 128) == 4000 + 60 + 98_304
    # + reference forward 2N + 2 L d s
    assert gb.dpo_flops_per_token(1000, 10, 2, 64, 128) == 102_364 + 2000 + 32_768
    # decoder forward again: 2 N_body + 2 N_lora + 2 L d s
    assert gb.recompute_flops_per_token(900, 10, 2, 64, 128) == 1800 + 20 + 32_768
    n = sum(gb.matmul_params(SEVEN_B))
    per_token = gb.train_flops_per_token(n, 671_088_640, 32, 4096, 1024)
    assert per_token == 28_441_575_424 + 4_026_531_840 + 805_306_368
    # 12,000 tokens/s on an H100 SXM
    assert gb.utilisation(12_000, per_token, 989e12) == pytest.approx(0.40372, abs=1e-5)
    assert gb.utilisation(12_000, per_token, None) is None


def test_mcq_flops_by_hand():
    # prompt p=4: 2*10*4 + 2*1*2*4^2 + 2*5 = 154
    # option o=1: 2*15*1 + 4*1*2*(4*1 + 1/2) = 66; o=2: 2*15*2 + 4*1*2*(4*2 + 4/2) = 140
    flops = gb.mcq_flops([4], [[1, 2, 1, 1]], n_body=10, n_head=5, layers=1, hidden=2)
    assert flops == 154 + 3 * 66 + 140


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("NVIDIA L40S", 362.0),
        ("Tesla T4", None),
    ],
)
def test_peak_by_device_name(name, tflops):
    assert gb.peak_tflops_for(name) == tflops


def test_projection_of_published_workload():
    per_token = 33e9
    p = gb.project_sft(16_625.0, per_token, 989e12, tokens_per_pair=350)
    assert p["tokens"] == 3800 * 3 * 350
    assert p["minutes"] == pytest.approx(4.0)
    assert p["required_tokens_per_s"] == pytest.approx(16_625.0)
    assert p["required_mfu"] == pytest.approx(16_625 * per_token / 989e12)
    assert p["published_tokens_per_s"] == pytest.approx(3_990_000 / 1080)
    assert p["packing_assumed"] is True


def test_7b_settings_are_the_recipe_settings():
    recipe = yaml.safe_load((ROOT / "assets" / "mistral-7b" / "recipe.yaml").read_text())
    lora, sft, dpo = recipe["lora"], recipe["sft"]["args"], recipe["dpo"]["args"]
    assert (SEVEN_B.lora_r, SEVEN_B.lora_alpha, SEVEN_B.lora_dropout) == (
        lora["r"],
        lora["lora_alpha"],
        lora["lora_dropout"],
    )
    assert lora["target_modules"] == "all-linear"
    assert (SEVEN_B.sft_batch, SEVEN_B.sft_accum, SEVEN_B.seq_len) == (
        sft["per_device_train_batch_size"],
        sft["gradient_accumulation_steps"],
        sft["max_length"],
    )
    assert (SEVEN_B.dpo_batch, SEVEN_B.dpo_accum, SEVEN_B.seq_len, SEVEN_B.dpo_beta) == (
        dpo["per_device_train_batch_size"],
        dpo["gradient_accumulation_steps"],
        dpo["max_length"],
        dpo["beta"],
    )
    assert sft["gradient_checkpointing"] and dpo["gradient_checkpointing"]
    assert SEVEN_B.mcq_batch == recipe["evaluation"]["batch_size"]
    context = recipe["retrieval"]["top_k"] * recipe["chunking"]["chunk_size"]
    assert SEVEN_B.mcq_context_tokens == context


def test_tiny_shape_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = gb.main(["--shape", "tiny", "--device", "cpu", "--steps", "2", "--json", str(out)])
    assert rc == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["peak_tflops"] is None
    tiny = gb.SHAPES["tiny"]
    # The analytic counts behind the FLOPs are the real peft model's.
    assert figures["model"]["matmul_params"] == sum(gb.matmul_params(tiny))
    assert figures["model"]["lora_params"] == gb.lora_params(tiny, tiny.lora_r)
    rows = figures["rows"]
    assert set(rows) == {"sft_lora", "dpo", "mcq_scoring"}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["items_per_s"] > 0 and row["step_seconds"] > 0
        assert row["steps"] == 2
        assert row["mfu"] is None and row["peak_gib"] is None
    assert math.isfinite(rows["sft_lora"]["loss"]) and math.isfinite(rows["dpo"]["loss"])
    assert rows["sft_lora"]["tokens_per_step"] == 2 * 2 * tiny.seq_len
    assert rows["dpo"]["items_per_s"] == pytest.approx(rows["dpo"]["tokens_per_s"] / 256)
    p = figures["projection"]
    assert p["tokens"] == 3800 * 3 * gb.DEFAULT_TOKENS_PER_PAIR
    assert p["minutes"] == pytest.approx(p["tokens"] / rows["sft_lora"]["tokens_per_s"] / 60)
    assert p["required_mfu"] is None and p["packing_assumed"] is True
    # The targets are for the 7B shape: not judged on the tiny one.
    assert set(figures["checks"].values()) == {None}
    printed = capsys.readouterr().out
    assert "| workload | tokens/s | items/s | step time | peak GiB | MFU |" in printed
    for label in ("SFT LoRA", "DPO (LoRA)", "MCQ scoring"):
        assert f"| {label} (" in printed
    assert "4N + 6 N_lora + 6 L d s" in printed and "packed rows assumed" in printed


@pytest.mark.parametrize(
    ("argv", "cuda"),
    [(["--shape", "7b"], False), (["--shape", "7b", "--device", "cpu"], True)],
)
def test_7b_without_cuda_says_so(monkeypatch, argv, cuda):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(SystemExit) as exc:
        gb.main(argv)
    assert "needs a CUDA GPU; use --shape tiny to check the script on CPU" in str(exc.value)


def test_help_does_not_import_torch():
    code = "import sys, ragft_dagster.benchmarks.gpu_bench; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"


def test_the_7b_shape_reads_the_7b_recipe_and_times_dpo_with_its_own_adapter():
    from ragft_dagster.config.recipe import load_recipe

    r = load_recipe(gb.SEVEN_B_RECIPE)
    assert (SEVEN_B.lora_r, SEVEN_B.dpo_lora_r) == (r.lora.r, r.dpo.lora.r) == (256, 64)
    assert SEVEN_B.dpo_accum == r.dpo.args["gradient_accumulation_steps"]
    assert SEVEN_B.mcq_context_tokens == r.retrieval.top_k * r.chunking.chunk_size
