"""What one recipe change does to the fine-tuned model: an ablation of the SFT stage.

Builds the SFT chain of a variant of the recipe (``--set key=value`` edits, dotted keys) into
its own artifact folder, reusing what the change cannot touch from a finished run (the merged
and DPO models, chunks, Q&A, the vector index: linked or copied, never rebuilt), then scores the
variant's ``sft`` closed-book, with RAG and on the general-capability set, and compares each
with the finished run's ``sft`` on the same questions (paired McNemar test, bootstrap interval
of the difference).

    python -m ragft_dagster.benchmarks.ablation --set sft_dataset.quality.enabled=false

The finished run is ``make run``'s (``.artifacts``); both must come from the same recipe apart
from the edits, and the edits must only change ``sft_dataset`` or later (the tool refuses an
edit that would change an upstream asset's code version).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ragft_dagster.artifacts import ArtifactLayout, atomic_write_text, read_jsonl
from ragft_dagster.evaluation.report import METRICS
from ragft_dagster.stats import comparisons_markdown, credit, paired_comparisons

SFT_CHAIN = ("sft_dataset", "lora_adapter")
"""What an ablation rebuilds (then the sft cells)."""

SHARED = ("models/specialist", "models/merged", "models/dpo", "packaged", "tiny", "chunks", "qa")
"""Linked from the finished run: read only by the SFT chain and the scorer."""


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def edited_recipe(recipe_path: Path, edits: list[str]) -> dict[str, Any]:
    """The recipe's YAML (data paths absolute) with ``key=value`` edits applied."""
    from ragft_dagster.config.recipe import relocatable_raw

    raw = relocatable_raw(recipe_path)
    for edit in edits:
        key, sep, value = edit.partition("=")
        if not sep:
            raise SystemExit(f"--set {edit!r}: write it as key=value (dotted key)")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SystemExit(f"--set {edit!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def _code_versions(recipe: Any) -> dict[str, str | None]:
    from ragft_dagster.assets import build_all_assets

    out: dict[str, str | None] = {}
    for a in build_all_assets(recipe):
        for k, v in getattr(a, "code_versions_by_key", {}).items():
            out[k.to_user_string()] = v
    return out


def upstream_changes(base: Any, variant: Any) -> list[str]:
    """Assets outside the SFT chain and the scorer whose code version the edits change."""
    before, after = _code_versions(base), _code_versions(variant)
    allowed = {*SFT_CHAIN, "mcq_scores", "general_scores", "mcq_report", "exported_model"}
    return sorted(k for k in before if k not in allowed and before[k] != after.get(k))


def prepare_root(finished: Path, root: Path) -> None:
    """Link the finished run's shared artifacts into ``root``; copy its vector index (Chroma
    opens it for writing)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in SHARED:
        src, dst = finished / rel, root / rel
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve(), target_is_directory=True)
    index = root / "vector_index"
    if not index.exists():
        shutil.copytree(finished / "vector_index", index)


def build_variant(recipe: Any, profile: Any, root: Path, documents: list[str]) -> float:
    """Materialize the SFT chain and score the variant's sft; returns seconds."""
    import dagster as dg

    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.assets.partitions import DOCUMENTS
    from ragft_dagster.config.recipe import with_hub_mirror
    from ragft_dagster.definitions import build_resources

    recipe = with_hub_mirror(recipe, profile.mirror())
    assets = build_all_assets(recipe)
    resources = build_resources(recipe, profile, root)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DOCUMENTS, documents)
    started = time.monotonic()

    def materialize(selection: str, partition: str | None = None) -> None:
        result = dg.materialize(
            assets,
            resources=resources,
            instance=instance,
            selection=selection,
            partition_key=partition,
            raise_on_error=False,
        )
        if not result.success:
            raise SystemExit(f"ablation: {selection} [{partition}] failed; see the log above")

    materialize("sft_dataset")
    materialize("lora_adapter")
    for context in recipe.evaluation.contexts:
        materialize("mcq_scores", f"{context}|sft")
    if recipe.general_questions_path is not None:
        materialize("general_scores", "sft")
    return time.monotonic() - started


def compare(
    finished: ArtifactLayout, variant: ArtifactLayout, contexts: list[str], metric: str
) -> list[dict[str, Any]]:
    """Variant vs. finished run, sft, per context and on the general set."""
    field = METRICS[metric][0]

    def correct(path: Path) -> dict[str, float]:
        # credit, not bool: a tie among k options is worth 1/k (bool(0.25) would be a hit)
        return {str(r["question_id"]): credit(r[field]) for r in read_jsonl(path)}

    pairs: list[tuple[str, Path, Path]] = [
        (c, finished.scores("sft", c), variant.scores("sft", c)) for c in contexts
    ]
    if variant.general_scores("sft").is_file():
        pairs.append(("general", finished.general_scores("sft"), variant.general_scores("sft")))
    rows = []
    for label, before, after in pairs:
        if not before.is_file():
            raise SystemExit(f"{before} is missing: finish `make run` first")
        a, b = f"variant sft {label}", f"default sft {label}"
        rows += paired_comparisons(
            {a: correct(after), b: correct(before)}, family=[(a, b)], n_boot=10_000
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import RecipeError, load_recipe
    from ragft_dagster.orchestration.automation import scan_documents_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="assets/quickstart/recipe.yaml")
    parser.add_argument("--profile", default="resources/local.yaml")
    parser.add_argument("--set", dest="edits", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", help="folder name under <artifacts>/ablations (default: edits)")
    parser.add_argument("--finished", help="artifact root of the finished run (the profile's)")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile)
    finished = Path(args.finished or profile.artifact_root).resolve()
    name = args.name or ("-".join(e.replace("=", "_") for e in args.edits) or "default")
    out = finished / "ablations" / name
    out.mkdir(parents=True, exist_ok=True)
    recipes = {}
    try:
        # both written the same way (data paths made absolute), so that only the edits differ
        for label, edits in (("base", []), ("recipe", args.edits)):
            path = out / f"{label}.yaml"
            raw = edited_recipe(Path(args.recipe), edits)
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            recipes[label] = load_recipe(path)
    except RecipeError as exc:
        print(f"--set: {exc}", file=sys.stderr)
        return 2
    base, variant = recipes["base"], recipes["recipe"]
    changed = upstream_changes(base, variant)
    if changed:
        print(f"the edits change {changed}, not only the SFT stage: run them with `ragft run`")
        return 2
    root = out / "artifacts"
    prepare_root(finished, root)
    scan = scan_documents_folder(variant)
    seconds = build_variant(variant, profile, root, sorted(scan.documents))
    metric = variant.evaluation.headline_metric
    rows = compare(
        ArtifactLayout(finished), ArtifactLayout(root), list(variant.evaluation.contexts), metric
    )
    quality = root / "sft_dataset" / "quality.json"
    dataset = {
        "train_rows": len(read_jsonl(root / "sft_dataset" / "train.jsonl")),
        "default_train_rows": len(read_jsonl(finished / "sft_dataset" / "train.jsonl")),
    }
    if quality.is_file():
        q = json.loads(quality.read_text("utf-8"))
        dataset["quality_rejected"] = q["rejected"]
    text = (
        f"# Ablation: {', '.join(args.edits) or 'none'}\n\n"
        f"Variant built in {seconds:.0f} s; SFT training rows {dataset['train_rows']} "
        f"(default run: {dataset['default_train_rows']}).\n\n" + comparisons_markdown(rows, metric)
    )
    atomic_write_text(out / "comparison.md", text)
    atomic_write_text(
        out / "comparison.json",
        json.dumps({"edits": args.edits, "dataset": dataset, "pairs": rows}, indent=1),
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
