"""``ragft serve``: the finished model behind an OpenAI-compatible endpoint (Dagster-free).

The finished model is the benchmark's ``sft`` model: ``dpo_model`` with ``lora_adapter`` merged
in. With ``export.enabled`` and ``exported_model`` materialized, that checkpoint is served as it
is; otherwise the adapter is merged here once, with the export's own code, into
``<artifact root>/serving/merged/<name>`` (kept, and rebuilt only when the DPO model, the adapter,
the dtype or the chat template change), in the profile's inference dtype, so the served model
is the one the benchmark's ``sft`` rows score.

``transformers serve`` names a model by the path it is given, so it is started from the folder's
parent with the folder's name as the argument: the name a client sends is then short
(``export.served_model_name``, default ``ragft-<recipe>``), and the server refuses any other.
It runs as a child process whose output is passed through; Ctrl-C or SIGTERM stops it and
``ragft serve`` ends with one line.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ragft_dagster.artifacts import ArtifactLayout, atomic_dir, atomic_write_text
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.models.export import ADAPTER_CONFIG, served_model_name

HOST = "127.0.0.1"
STAMP = "ragft_serving.json"
"""Inside a merged folder: what it was merged from (rebuilt when that changes)."""
# transformers serve's own requirements (is_serve_available): its `serving` extra.
SERVING_MODULES = ("fastapi", "uvicorn", "pydantic", "openai")
# A name transformers serve reads back as the folder it was given: no revision (@), no GGUF
# file (:x.gguf), not absolute, one optional org/ part, as hub ids are spelt.
_SERVABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
DTYPES = ("auto", "bfloat16", "float16", "float32")


class ServeError(RuntimeError):
    """``ragft serve`` cannot start; the message says what and what to do (one line)."""


class NotMaterializedError(ServeError):
    """An asset the served model is made from is not materialized."""


@dataclass(frozen=True)
class ServedModel:
    """A folder ready for ``transformers serve``: started in ``cwd`` with ``name`` as its
    argument, so ``name`` is the model name clients send."""

    cwd: Path
    name: str
    source: str
    """What is served, for people: ``exported_model (<path>)`` or the merge's inputs."""
    dtype: str
    """``--dtype`` for transformers serve (``auto``: as saved)."""
    notes: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return self.cwd / self.name


def missing_serving_modules(
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
) -> list[str]:
    """The modules of transformers' ``serving`` extra that are not installed."""
    return [name for name in SERVING_MODULES if find_spec(name) is None]


def check_servable_name(name: str) -> None:
    """Fail when transformers serve would not read ``name`` back as a folder.

    Raises:
        ServeError: Naming the rule and the option that overrides the name.
    """
    if not _SERVABLE_NAME.match(name) or ".." in name.split("/"):
        raise ServeError(
            f"ragft serve: {name!r} cannot be a transformers serve model name (it is the folder "
            "path the server loads: letters, digits, . _ - and at most one /, no @ or :); "
            "pass --name or set export.served_model_name"
        )


def check_port_free(port: int, host: str = HOST) -> None:
    """Fail in one line when something already listens on ``host:port``.

    Raises:
        ServeError: The port is taken.
    """
    with socket.socket() as s:
        # as uvicorn binds: a port a closed server left in TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServeError(
                f"ragft serve: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "pick another port with --port"
            ) from None


def missing_inputs(layout: ArtifactLayout) -> list[tuple[str, Path]]:
    """``(asset, folder)`` of ``dpo_model`` / ``lora_adapter`` when not materialized (their
    folders are renamed into place whole, so one holding its config file is complete)."""
    wanted = [("dpo_model", layout.dpo_model, "config.json")]
    wanted.append(("lora_adapter", layout.lora_adapter, ADAPTER_CONFIG))
    return [(asset, folder) for asset, folder, marker in wanted if not (folder / marker).is_file()]


def materialize_command(recipe_arg: str | None, profile_arg: str | None) -> str:
    """The command that materializes the finished model for the recipe and profile given."""
    flags = "".join(
        f" --{flag} {shlex.quote(value)}"
        for flag, value in (("recipe", recipe_arg), ("profile", profile_arg))
        if value
    )
    return f"ragft run{flags}" if flags else "make run"


def merge_fingerprint(layout: ArtifactLayout, dtype: str, chat_template: str | None) -> str:
    """What a merged folder depends on: every file of ``dpo_model`` and ``lora_adapter`` (name,
    size, modification time: both are replaced whole when re-materialized), the dtype and the
    recipe's chat template."""
    parts: list[Any] = [dtype, chat_template]
    for folder in (layout.dpo_model, layout.lora_adapter):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = path.stat()
            parts.append([str(path.relative_to(folder)), info.st_size, info.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime > than.stat().st_mtime


def served_model(
    recipe: Recipe,
    layout: ArtifactLayout,
    *,
    name: str | None = None,
    dtype: str,
    device: str,
    recipe_arg: str | None = None,
    profile_arg: str | None = None,
    say: Callable[[str], Any] = print,
) -> ServedModel:
    """The folder to serve: the export when it is on and materialized, else the DPO model with
    the adapter merged in (merged here when the merged folder is missing or stale).

    Args:
        recipe: The recipe whose finished model is served.
        layout: Where its artifacts are.
        name: The served model name (default :func:`served_model_name`).
        dtype: Precision of a merge made here (``bfloat16``...; ``auto`` keeps the DPO model's).
        device: Where a merge made here runs.
        recipe_arg: ``--recipe`` as given, for the command in an error.
        profile_arg: ``--profile`` as given, for the command in an error.
        say: Receives progress lines.

    Returns:
        The folder, its name and what it holds.

    Raises:
        ServeError: The name cannot be served.
        NotMaterializedError: The DPO model or the adapter is not materialized.
    """
    name = name or served_model_name(recipe)
    check_servable_name(name)
    adapter_weights = layout.lora_adapter / "adapter_model.safetensors"
    exported = layout.exported_model
    if recipe.export.enabled and (exported / "config.json").is_file():
        notes = []
        if _newer(adapter_weights, exported / "config.json"):
            notes.append(
                "exported_model is older than lora_adapter: it serves an earlier adapter; "
                "materialize exported_model again to serve the newest one"
            )
        # A link named as the model, so the served name is short whatever the layout says.
        cwd = layout.root / "serving" / "export"
        link = cwd / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() != exported.resolve():
            link.unlink()  # an artifact root that moved
        if not link.is_symlink():
            link.symlink_to(exported.resolve(), target_is_directory=True)
        return ServedModel(cwd, name, f"exported_model ({exported})", "auto", tuple(notes))

    missing = missing_inputs(layout)
    if missing:
        assets = " and ".join(asset for asset, _ in missing)
        where = "; ".join(f"{asset}: nothing at {folder}" for asset, folder in missing)
        raise NotMaterializedError(
            f"ragft serve: {assets} of recipe {recipe.name!r} not materialized yet ({where}); "
            f"run `{materialize_command(recipe_arg, profile_arg)}` first"
        )
    notes = []
    if recipe.export.enabled:
        notes.append(
            "exported_model is not materialized: serving dpo_model + lora_adapter merged here "
            "(the same weights in the profile's precision)"
        )
    cwd = layout.root / "serving" / "merged"
    folder = cwd / name
    fingerprint = merge_fingerprint(layout, dtype, recipe.chat_template)
    stamp = folder / STAMP
    try:
        fresh = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        fresh = False
    if not fresh:
        say(f"ragft serve: merging lora_adapter into dpo_model ({dtype}) into {folder} (once)")
        from ragft_dagster.models.export import export_model

        with atomic_dir(folder) as tmp:
            info = export_model(
                layout.dpo_model,
                layout.lora_adapter,
                tmp,
                dtype=dtype,
                device=device,
                chat_template=recipe.chat_template,
                trust_remote_code=recipe.trust_remote_code,
            )
            record = {"fingerprint": fingerprint, "recipe": recipe.name, **info}
            atomic_write_text(tmp / STAMP, json.dumps(record, indent=2) + "\n")
    source = f"dpo_model + lora_adapter merged ({folder})"
    return ServedModel(cwd, name, source, "auto", tuple(notes))


# The server process runs transformers' own CLI after making sure it cannot outlive ragft
# serve (Linux: SIGTERM when its parent dies; checked once set, in case the parent is gone).
_BOOTSTRAP = """
import ctypes, os, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass
if os.getppid() != parent:
    sys.exit(1)
from transformers.cli.transformers import main
sys.argv[0] = "transformers"
sys.exit(main())
"""


def serve_command(model: ServedModel, port: int, device: str) -> list[str]:
    """The ``transformers serve`` command line (run in ``model.cwd``)."""
    return [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        str(os.getpid()),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        device,
        "--dtype",
        model.dtype,
        model.name,
    ]


class _Stopped(BaseException):
    """Ctrl-C or SIGTERM: a BaseException, as KeyboardInterrupt, so no ``except Exception`` in
    the libraries a merge runs through can swallow it."""

    def __init__(self, signo: int):
        super().__init__(signo)
        self.signo = signo


def _raise_stopped(signo: int, _frame: Any) -> None:
    raise _Stopped(signo)


def _forward(stream: IO[str], out: IO[str], quiet: threading.Event) -> None:
    """Pass the server's output through, line by line, until ``ragft serve`` is stopping (its
    shutdown log is not news)."""
    for line in stream:
        if not quiet.is_set():
            out.write(line)
            out.flush()


def healthy(base: str) -> bool:
    """Whether the server answers ``GET /health``."""
    # no proxy: a proxy from the environment must not stand between us and 127.0.0.1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/health", timeout=5) as reply:
            return reply.status == 200
    except (OSError, http.client.HTTPException):  # not listening yet, or half started
        return False


def ready_lines(model: ServedModel, port: int) -> list[str]:
    """What a client needs, printed once the server answers."""
    base_url = f"http://{HOST}:{port}/v1"
    return [
        f"ragft serve: {model.source} is served",
        f"  base URL: {base_url}",
        f"  model:    {model.name}",
        f"  benchmark it: profile llm.base_url: {base_url}; recipe evaluation.api.models: "
        f"[{model.name}]",
        "  Ctrl-C stops it",
    ]


def run_server(
    model: ServedModel,
    port: int,
    device: str,
    *,
    startup_timeout: float,
    out: IO[str] | None = None,
) -> int:
    """Run ``transformers serve`` on ``model`` until it ends or a signal stops it.

    Returns:
        The exit status: 0 when the server ended by itself with 0, 128 + the signal's number
        when Ctrl-C (130) or SIGTERM (143) stopped it, 1 when it failed.
    """
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # a local folder: nothing to download
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    out = out or sys.stdout
    quiet = threading.Event()
    # Ctrl-C at a terminal reaches the whole process group. The server starts with SIGINT
    # ignored (an ignored signal stays ignored across exec, and Python then installs no
    # KeyboardInterrupt handler): uvicorn still shuts down gracefully on it, and re-raises it
    # afterwards into that ignored disposition instead of a traceback.
    ours = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            serve_command(model, port, device),
            cwd=model.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
    finally:
        signal.signal(signal.SIGINT, ours)
    assert proc.stdout is not None
    reader = threading.Thread(target=_forward, args=(proc.stdout, out, quiet), daemon=True)
    reader.start()
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while not healthy(base):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                quiet.set()
                _stop(proc)
                print(
                    f"ragft serve: transformers serve did not answer on {base} within "
                    f"{startup_timeout:.0f} s; raise --startup-timeout",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
        else:
            out.write("\n".join(ready_lines(model, port)) + "\n")
            out.flush()
            while proc.poll() is None:
                time.sleep(0.5)
        reader.join(timeout=5)
        code = proc.returncode
        if code != 0:
            print(
                f"ragft serve: transformers serve exited with status {code} (its output is above)",
                file=sys.stderr,
            )
            return 1
        return 0
    except _Stopped as stop:
        quiet.set()
        # A second Ctrl-C while it shuts down ends it at once.
        signal.signal(signal.SIGINT, lambda *_: proc.kill())
        signal.signal(signal.SIGTERM, lambda *_: proc.kill())
        _stop(proc)
        reader.join(timeout=5)  # a line it was writing lands before ours
        name = signal.Signals(stop.signo).name
        print(f"ragft serve: stopped by {name}", file=sys.stderr)
        return 128 + stop.signo


def _stop(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _positive_port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), not {text}")
    return value


def add_serve_parser(sub: Any) -> None:
    """Register ``ragft serve`` on the CLI's subparsers."""
    serve = sub.add_parser(
        "serve",
        help="serve the finished model (dpo_model + lora_adapter) with transformers serve",
        description="Serve the finished model (the export when export.enabled and materialized, "
        "else dpo_model with lora_adapter merged in) through transformers serve on "
        f"{HOST}, as an OpenAI-compatible endpoint. Nothing is downloaded.",
    )
    serve.add_argument("--recipe", help="recipe YAML (default: RAGFT_RECIPE or the quickstart)")
    serve.add_argument(
        "--profile", help="profile YAML (default: RAGFT_PROFILE or resources/local.yaml)"
    )
    serve.add_argument("--port", type=_positive_port, default=8000, help="port (default 8000)")
    serve.add_argument("--name", help="model name clients send (default: export.served_model_name)")
    serve.add_argument(
        "--dtype",
        choices=DTYPES,
        help="precision of the merge made here (default: the profile's inference precision, "
        "as the benchmark scores the sft model)",
    )
    serve.add_argument(
        "--startup-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the server to answer (default 900)",
    )


def serve(args: argparse.Namespace) -> int:
    """``ragft serve``: errors are one line on stderr; the server's log goes to stdout."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # every file is a local artifact
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Upstream noise while merging: peft 0.21 reads transformers 5's deprecated
    # `is_gradient_checkpointing` (as in `ragft ask`).
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    from ragft_dagster.config.profile import ProfileError
    from ragft_dagster.config.recipe import RecipeError
    from ragft_dagster.definitions import build_resources, load_inputs
    from ragft_dagster.models.export import ExportError
    from ragft_dagster.models.refs import ModelReferenceError

    try:
        recipe, profile = load_inputs(args.recipe, args.profile)
    except (RecipeError, ProfileError) as exc:
        print(exc, file=sys.stderr)
        return 2
    absent = missing_serving_modules()
    if absent:
        print(
            f"ragft serve: transformers serve needs {', '.join(absent)} (transformers' serving "
            "extra), not installed here: pip install 'transformers[serving]'",
            file=sys.stderr,
        )
        return 2
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, _raise_stopped)
    try:
        check_port_free(args.port)
        compute = build_resources(recipe, profile)["compute"].settings()
        device = compute.torch_device()
        dtype = args.dtype or str(compute.inference_dtype()).removeprefix("torch.")
        model = served_model(
            recipe,
            ArtifactLayout(profile.artifact_root),
            name=args.name,
            dtype=dtype,
            device=device,
            recipe_arg=args.recipe,
            profile_arg=args.profile,
        )
        for note in model.notes:
            print(f"ragft serve: {note}", file=sys.stderr)
        print(f"ragft serve: starting transformers serve on {HOST}:{args.port} ...", flush=True)
        return run_server(model, args.port, device, startup_timeout=args.startup_timeout)
    except ServeError as exc:
        print(exc, file=sys.stderr)
        return 1 if isinstance(exc, NotMaterializedError) else 2
    except (ExportError, ModelReferenceError) as exc:  # a merge input that cannot be loaded
        print(f"ragft serve: {exc}", file=sys.stderr)
        return 1
    except _Stopped as stop:  # while merging: nothing is left half-written (atomic_dir)
        print(f"ragft serve: stopped by {signal.Signals(stop.signo).name}", file=sys.stderr)
        return 128 + stop.signo
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
