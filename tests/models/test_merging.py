"""models/merging.py: the checked plan run by mergekit, multi-stage chains with cached
intermediates, and the recipe's merge options. Tiny models only; nothing here touches a hub."""

from pathlib import Path

from ragft_dagster.config.merge import STAGES_DIR

from ..conftest import chain_config, merge_into, slerp_config


def _stage_dirs(root: Path) -> list[Path]:
    return sorted((root / STAGES_DIR).iterdir())


def test_two_stage_chain_merges_caches_and_reuses(tmp_path, root, merges):
    from transformers import AutoModelForCausalLM

    first = merge_into(chain_config(), tmp_path / "run1", root)
    assert [(s["name"], s["status"]) for s in first["stages"]] == [
        ("first", "merged"),
        ("second", "merged"),
    ]
    assert first["sources"] == ["tiny:base", "tiny:math", "tiny:code"]
    assert first["merge_method"] == "linear" and first["architecture"] == "MistralForCausalLM"
    (cached,) = _stage_dirs(root)
    assert cached.name == f"first-{first['stages'][0]['key']}"
    assert (cached / "config.json").is_file() and (cached / "ragft_stage.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run1")
    assert model.config.num_hidden_layers == 2
    assert (tmp_path / "run1" / "ragft_merge_recipe.yml").is_file()
    assert len(merges) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in cached.rglob("*")}

    # Same chain: the intermediate is reused as it is, only the last stage runs.
    again = merge_into(chain_config(), tmp_path / "run2", root)
    assert [s["status"] for s in again["stages"]] == ["reused", "merged"]
    assert again["preflight"]["stages"][0]["cached"] is True
    assert len(merges) == 3 and merges[-1] == str(tmp_path / "run2")
    assert {p: p.stat().st_mtime_ns for p in cached.rglob("*")} == mtimes

    # A new stage-2 config still reuses stage 1, and gives other weights.
    changed = merge_into(chain_config(second_weight=0.9), tmp_path / "run3", root)
    assert [s["status"] for s in changed["stages"]] == ["reused", "merged"]
    assert changed["stages"][0]["key"] == first["stages"][0]["key"]
    assert changed["stages"][1]["key"] != first["stages"][1]["key"]
    assert _stage_dirs(root) == [cached]
    import torch

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "run2").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "run3").state_dict()
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])

    # A new stage-1 config re-merges both and replaces the stale intermediate.
    moved = merge_into(chain_config(first_t=0.3), tmp_path / "run4", root)
    assert [s["status"] for s in moved["stages"]] == ["merged", "merged"]
    assert moved["pruned"] == [cached.name]
    assert [p.name for p in _stage_dirs(root)] == [f"first-{moved['stages'][0]['key']}"]


def test_single_config_merge_is_unchanged(tmp_path, root, merges):
    info = merge_into(slerp_config("tiny:base", "tiny:math"), tmp_path / "out", root)
    assert info["sources"] == ["tiny:base", "tiny:math"] and info["merge_method"] == "slerp"
    assert [(s["name"], s["status"]) for s in info["stages"]] == [("merge", "merged")]
    assert merges == [str(tmp_path / "out")]
    assert not (root / STAGES_DIR).exists()
    assert (tmp_path / "out" / "mergekit_config.yml").is_file()


def test_gpu_only_options_are_dropped_on_cpu(tmp_path, root):
    info = merge_into(
        slerp_config("tiny:base", "tiny:math"),
        tmp_path / "out",
        root,
        options={"read_to_gpu": True, "lazy_unpickle": False, "out_shard_size": "100K"},
    )
    assert info["ignored_options"] == ["read_to_gpu"]
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 1  # ~0.6M parameters, 100K per shard


def test_a_merge_logs_no_upstream_deprecation(tmp_path, root):
    """mergekit sets the output dtype through transformers' deprecated ``torch_dtype`` alias;
    the merge's log stays free of it (issue 27: no upstream deprecations in make run)."""
    import logging

    import transformers.utils.logging as hf_logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("transformers.configuration_utils")
    keep = Keep()
    logger.addHandler(keep)
    hf_logging.warning_once.cache_clear()  # said once a process: an earlier test may have
    try:
        merge_into(slerp_config("tiny:base", "tiny:math"), tmp_path / "out", root)
        hf_logging.warning_once.cache_clear()
        logger.warning_once("`torch_dtype` is deprecated! Use `dtype` instead!")  # outside it
    finally:
        logger.removeHandler(keep)
    assert records == ["`torch_dtype` is deprecated! Use `dtype` instead!"]
