"""Benchmarks that back the README's figures (``make bench-incremental``).

``incremental``: a corpus of >= 25 documents (the bundled user guide in several editions), a full
run of the data and index stages, then one document edited and the pipeline run again. Reports
Q&A generations (LLM requests with an LLM generator), embeddings computed and the wall time of
the data + index stages for both, and checks the targets: work only for the edited document's
changed chunks, wall time <= 0.2x the full run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ragft_dagster.definitions import DEFAULT_PROFILE, DEFAULT_RECIPE

EDITIONS = ["Atlas", "Borealis"]


def build_corpus(source: Path, target: Path, editions: list[str]) -> list[str]:
    """Write one copy of every bundled document per edition, each titled with its edition (so
    no two documents share a chunk or a cache key). Returns the document keys."""
    keys = []
    for edition in editions:
        for doc in sorted(source.glob("*.md")):
            text = doc.read_text(encoding="utf-8")
            text = re.sub(r"^# (.+)$", rf"# \1 ({edition} edition)", text, count=1, flags=re.M)
            key = f"{edition.lower()}/{doc.name}"
            (target / key).parent.mkdir(parents=True, exist_ok=True)
            (target / key).write_text(text, encoding="utf-8")
            keys.append(key)
    return keys


def edit_one_sentence(path: Path) -> None:
    """Change one sentence in the middle of a document, as a docs fix would."""
    text = path.read_text(encoding="utf-8")
    paragraphs = [m.start() for m in re.finditer(r"\n\n(?=[A-Z])", text)]
    at = paragraphs[len(paragraphs) // 2] + 2
    path.write_text(
        text[:at] + "As of this release, this behaviour is on by default. " + text[at:],
        encoding="utf-8",
    )


def _stage_figures(result: Any) -> dict[str, Any]:
    return {
        "document_runs": sum(1 for s in result.steps if s.job == "document_job"),
        "qa_generations": int(result.total("synthetic_qa", "generated")),
        "llm_requests": int(result.total("synthetic_qa", "llm_requests")),
        "qa_cache_hits": int(result.total("synthetic_qa", "cache_hits")),
        "embeddings": int(result.total("vector_index", "embedded_now")),
        "seconds": round(result.seconds_of("document_job", "index_job"), 2),
    }


def incremental(args: argparse.Namespace) -> int:
    import dagster as dg

    from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
    from ragft_dagster.cli import run_pipeline
    from ragft_dagster.model_refs import resolve_model_ref
    from ragft_dagster.recipe import load_recipe, relocatable_raw

    with tempfile.TemporaryDirectory(prefix="ragft-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        keys = build_corpus(DEFAULT_RECIPE.parent / "docs", tmp / "docs", EDITIONS)
        raw = relocatable_raw(DEFAULT_RECIPE)
        raw["docs"] = {"path": str(tmp / "docs"), "glob": "**/*.md"}
        if args.qa_model:
            raw["qa"].update(generator="openai", model=args.qa_model)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        profile = yaml.safe_load(Path(args.profile or DEFAULT_PROFILE).read_text())
        profile["artifacts"] = {"root": str(tmp / "artifacts")}
        profile_path = tmp / "resources" / "bench.yaml"
        profile_path.parent.mkdir()
        profile_path.write_text(yaml.safe_dump(profile))
        layout = ArtifactLayout(tmp / "artifacts")
        # The chunking tokenizer is built once, before anything is timed.
        resolve_model_ref(load_recipe(recipe).base_model, layout.root, recipe.parent)

        stages = {"document_job", "index_job"}
        lines: list[str] = []
        (tmp / "home").mkdir()
        with dg.DagsterInstance.local_temp(str(tmp / "home")) as instance:

            def run() -> Any:
                result = run_pipeline(
                    str(recipe),
                    str(profile_path),
                    instance=instance,
                    echo=lines.append,
                    jobs=stages,
                )
                if not result:
                    print("\n".join(lines), file=sys.stderr)
                    raise SystemExit(1)
                return result

            full = run()
            edited = keys[len(keys) // 2]
            before = {c["id"] for c in read_jsonl(layout.chunks(edited))}
            edit_one_sentence(tmp / "docs" / edited)
            inc = run()
            after = {c["id"] for c in read_jsonl(layout.chunks(edited))}
            chunks_total = sum(len(read_jsonl(layout.chunks(k))) for k in keys)

    f, i = _stage_figures(full), _stage_figures(inc)
    new = len(after - before)
    ratio = i["seconds"] / f["seconds"]
    figures: dict[str, Any] = {
        "documents": len(keys),
        "chunks": chunks_total,
        "edited_document": edited,
        "edited_document_chunks": len(after),
        "edited_document_new_chunks": new,
        "generator": "openai:" + args.qa_model if args.qa_model else "offline",
        "full": f,
        "incremental": i,
        "time_ratio": round(ratio, 3),
    }
    checks = {
        "only the edited document re-ran": i["document_runs"] == 1,
        "Q&A generated only for its new chunks": i["qa_generations"] == new,
        "embeddings only for its new chunks": i["embeddings"] == new,
        "wall time <= 0.2x the full run": ratio <= 0.2,
    }
    figures["checks"] = checks
    print(
        f"{figures['documents']} documents, {figures['chunks']} chunks, Q&A generator "
        f"{figures['generator']}; edited {edited}: {new} of its {len(after)} chunks changed\n"
    )
    print(
        "| data + index stages | document runs | Q&A generations | LLM requests | embeddings "
        "| wall time |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in (("full run", f), ("after editing one document", i)):
        print(
            f"| {name} | {row['document_runs']} | {row['qa_generations']} | "
            f"{row['llm_requests']} | {row['embeddings']} | {row['seconds']:.1f} s |"
        )
    print(f"\nincremental / full wall time: {ratio:.3f}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragft_dagster.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    inc = sub.add_parser("incremental", help="full vs. incremental run after one document edit")
    inc.add_argument("--profile", help="profile YAML (its llm endpoint is used with --qa-model)")
    inc.add_argument(
        "--qa-model",
        help="generate Q&A with this model at the profile's OpenAI-compatible endpoint "
        "(default: the offline generator, no LLM)",
    )
    inc.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    return incremental(args)


if __name__ == "__main__":
    sys.exit(main())
