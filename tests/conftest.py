"""Offline, CPU-only test setup: nothing here may touch a hub or the internet."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "assets" / "quickstart" / "recipe.yaml"
LOCAL_PROFILE = ROOT / "resources" / "local.yaml"


def write_recipe(tmp_path: Path, mutate=None) -> Path:
    """A copy of the quickstart recipe in ``tmp_path`` (data paths absolute), edited by
    ``mutate(raw_dict)``."""
    import yaml

    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["docs"]["path"] = str(QUICKSTART.parent / "docs")
    raw["evaluation"]["questions"] = str(QUICKSTART.parent / "mcq.csv")
    raw["dpo"]["dataset"] = str(QUICKSTART.parent / "preference_pairs.jsonl")
    if mutate is not None:
        mutate(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One artifact root whose tiny/ models are shared by the unit tests of a session."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_base(tiny_cache) -> Path:
    from ragft_dagster.tiny import build_tiny_model

    return build_tiny_model("base", tiny_cache / "tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)
