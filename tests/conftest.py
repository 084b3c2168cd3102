"""Offline, CPU-only test setup: nothing here may touch a hub or the internet."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The tests run the tiny recipe (random-init models, the quickstart's data); the real-model
# quickstart is exercised by the tests marked `real_model`.
TINY_RECIPE = ROOT / "assets" / "tiny" / "recipe.yaml"
QUICKSTART_RECIPE = ROOT / "assets" / "quickstart" / "recipe.yaml"
QUICKSTART_DATA = QUICKSTART_RECIPE.parent

# A markdown page with nested headings, a code fence and a long section, for chunking and
# the offline Q&A generator.
DOC = """# Guide

Intro text about the tool.

## Install

The installer is a script that sets things up.

```bash
make run
```

## Usage

### Flags

**verbose**: prints more output while running.
""" + ("More words about usage. " * 400)
LOCAL_PROFILE = ROOT / "resources" / "local.yaml"


def write_recipe(tmp_path: Path, mutate=None) -> Path:
    """A copy of the tiny recipe in ``tmp_path`` (data paths absolute), edited by
    ``mutate(raw_dict)``."""
    import yaml

    from ragft_dagster.config.recipe import relocatable_raw

    raw = relocatable_raw(TINY_RECIPE)
    if mutate is not None:
        mutate(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def recipe_with_docs(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A tiny recipe copy whose docs folder is a copy of some of the quickstart's pages,
    so a test may edit or delete them. Returns (recipe path, docs folder)."""
    import shutil

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in names:
        shutil.copy(QUICKSTART_DATA / "docs" / name, docs / name)
    return write_recipe(tmp_path, lambda raw: raw["docs"].update(path=str(docs))), docs


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One artifact root whose tiny/ models are shared by the unit tests of a session."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_base(tiny_cache) -> Path:
    from ragft_dagster.models.tiny import build_tiny_model

    return build_tiny_model("base", tiny_cache / "tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (servers in tests bind there only)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path | None, chars: int = 4000) -> str:
    """The end of a subprocess's log file, for an assertion message."""
    return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""


def wait_until(condition, timeout: float, what: str, log: Path | None = None, every: float = 1.0):
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes,
    then fail naming ``what`` with the tail of ``log``: every wait in the tests is bounded."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log_tail(log)}")


def postgres_bin(name: str) -> Path:
    """A PostgreSQL server program from the Debian package (`make test` installs it)."""
    import glob
    import shutil

    for found in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return Path(found)
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    pytest.fail(
        f"PostgreSQL's {name} is not installed: `make test` installs Debian's postgresql; "
        "or run `apt-get install -y postgresql` as root"
    )


@pytest.fixture
def postgres():
    """A real PostgreSQL on 127.0.0.1 (a free port), in a throwaway data folder, started and
    stopped by the test (its own process group). Yields the connection settings."""
    import os
    import pwd
    import shutil
    import signal
    import subprocess
    import tempfile

    # PostgreSQL refuses to run as root: as root (CI), its programs run as the package's user.
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="ragft-pg-"))
    root.chmod(0o755)
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"
    subprocess.run(
        [*as_user, str(postgres_bin("initdb")), "-D", str(data), "-U", "ragft"]
        + ["--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    server = subprocess.Popen(
        [*as_user, str(postgres_bin("postgres")), "-D", str(data), "-h", "127.0.0.1"]
        + ["-p", str(port), "-k", str(root), "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 (closed with the process)
        start_new_session=True,
    )
    try:
        ready = [str(postgres_bin("pg_isready")), "-h", "127.0.0.1", "-p", str(port)]
        wait_until(
            lambda: subprocess.run(ready, capture_output=True, timeout=10).returncode == 0,
            60,
            "PostgreSQL to accept connections",
            log,
        )
        subprocess.run(
            [str(postgres_bin("createdb")), "-h", "127.0.0.1", "-p", str(port), "-U", "ragft"]
            + ["dagster"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield {"hostname": "127.0.0.1", "port": port, "username": "ragft", "db_name": "dagster"}
    finally:
        stop_process_group(server, signal.SIGINT)  # "fast" shutdown: ends open connections
        shutil.rmtree(root, ignore_errors=True)


def stop_process_group(proc, sig: int | None = None, timeout: float = 30) -> None:
    """Stop a server the test started with ``start_new_session=True``: ``sig`` (SIGTERM by
    default) to its whole process group, then SIGKILL if it outlives ``timeout``."""
    import contextlib
    import os
    import signal
    import subprocess

    with contextlib.suppress(ProcessLookupError):  # all of it already gone
        os.killpg(proc.pid, signal.SIGTERM if sig is None else sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# --- merges: tiny configs, an artifact root sharing the session's tiny models, a weightless
# Llama config, a counter of mergekit runs (tests/models, tests/config, tests/assets) ---


def slerp_config(a: str, b: str, layers: tuple[int, int] = (0, 2), t: float = 0.5) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": a,
        "slices": [
            {
                "sources": [
                    {"model": a, "layer_range": list(layers)},
                    {"model": b, "layer_range": list(layers)},
                ]
            }
        ],
        "parameters": {"t": t},
        "dtype": "float32",
    }


def linear_config(*weighted: tuple[str, float]) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": w}} for m, w in weighted],
        "dtype": "float32",
    }


def chain_config(second_weight: float = 0.5, first_t: float = 0.5) -> dict:
    return {
        "stages": [
            {"name": "first", "config": slerp_config("tiny:base", "tiny:math", t=first_t)},
            {
                "name": "second",
                "config": linear_config(("stage:first", second_weight), ("tiny:code", 0.5)),
            },
        ]
    }


@pytest.fixture
def root(tmp_path, tiny_cache, tiny_base) -> Path:
    """A fresh artifact root sharing the session's tiny models (no rebuild per test)."""
    r = tmp_path / "artifacts"
    r.mkdir()
    (r / "tiny").symlink_to(tiny_cache / "tiny", target_is_directory=True)
    return r


@pytest.fixture
def tiny_llama(tmp_path, tiny_base) -> Path:
    """A tiny Llama config (same widths as tiny:base, other vocabulary and rope_theta), no
    weights: a merge that reached mergekit would fail on the missing files, not in preflight."""
    from transformers import LlamaConfig

    base = json.loads((tiny_base / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=base["vocab_size"] + 1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=1e6,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    path = tmp_path / "tiny-llama"
    cfg.save_pretrained(path)
    assert [p.name for p in path.iterdir()] == ["config.json"]
    return path


@pytest.fixture
def merges(monkeypatch) -> list[str]:
    """Counts mergekit runs (the output folder of each); any run after a failed preflight fails."""
    import mergekit.merge

    calls: list[str] = []
    real = mergekit.merge.run_merge

    def counting(config, out_path, options, **kw):
        calls.append(out_path)
        return real(config, out_path=out_path, options=options, **kw)

    monkeypatch.setattr(mergekit.merge, "run_merge", counting)
    return calls


def merge_into(config, out: Path, root: Path, **kw) -> dict:
    """``merge_models`` into a fresh ``out`` beside its recipe folder."""
    from ragft_dagster.models.merging import merge_models

    out.mkdir(parents=True)
    return merge_models(config, out, artifact_root=root, base_dir=out.parent, **kw)
