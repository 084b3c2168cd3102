"""Environment profiles: every shipped YAML validates and builds Definitions; the Kubernetes
profile's executor config and GPU op tags pass dagster_k8s's own parsers; bad profiles fail
naming the file and the key."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.config.profile import K8S_CONFIG_TAG, Profile, ProfileError, load_profile
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.definitions import build_resources, definitions_for
from ragft_dagster.retrieval.indexing import MODEL_KEY

from ..conftest import ROOT, TINY_RECIPE, free_port, stop_process_group

PROFILES = sorted((ROOT / "resources").glob("*.yaml"))
K8S_PROFILE = ROOT / "resources" / "k8s.yaml"


def _k8s_raw() -> dict:
    return yaml.safe_load(K8S_PROFILE.read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "resources" / "bad.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _mutated(base: dict, **sections) -> dict:
    raw = copy.deepcopy(base)
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    return raw


def test_shipped_profiles_are_local_gpu_and_k8s():
    assert {"local", "gpu", "k8s"} <= {p.stem for p in PROFILES}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_builds_definitions(path):
    # gpu/k8s ask for CUDA: nothing may need it until a step runs (this machine has none).
    profile, recipe = load_profile(path), load_recipe(TINY_RECIPE)
    repo = definitions_for(recipe, profile).get_repository_def()
    assert "retrieval_job" in repo.job_names
    compute = build_resources(recipe, profile)["compute"]
    assert (compute.device, compute.processes, compute.launcher) == (
        profile.compute.device,
        profile.compute.processes,
        profile.compute.launcher,
    )
    settings = compute.settings()
    assert (settings.processes, settings.launcher) == (
        profile.compute.processes,
        profile.compute.launcher,
    )


def test_executor_follows_the_profile():
    recipe = load_recipe(TINY_RECIPE)

    def executor_name(executor: str) -> str:
        profile = Profile.model_validate({"name": executor, "executor": executor})
        return definitions_for(recipe, profile).resolve_job_def("retrieval_job").executor_def.name

    assert executor_name("in_process") == dg.in_process_executor.name
    assert executor_name("multiprocess") == dg.multi_or_in_process_executor.name


def test_definitions_load_without_dagster_k8s_unless_asked():
    code = (
        "import sys\n"
        "from ragft_dagster.definitions import build_definitions\n"
        "build_definitions().get_repository_def()\n"
        "assert 'dagster_k8s' not in sys.modules, 'dagster_k8s imported for the local profile'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAGFT_PROFILE", "RAGFT_RECIPE")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_k8s_executor_config_passes_the_executor_schema():
    from dagster._core.system_config.objects import ResolvedRunConfig

    profile = load_profile(K8S_PROFILE)
    recipe = load_recipe(TINY_RECIPE)
    job = definitions_for(recipe, profile).resolve_job_def("training_job")
    # What Dagster does at launch: apply the configured executor's config to its schema.
    config = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
    assert config["job_namespace"] == "ragft"
    assert config["env_secrets"] == ["ragft-llm"]
    assert f"RAGFT_PROFILE={K8S_PROFILE}" in config["env_vars"]
    assert f"RAGFT_RECIPE={recipe.path}" in config["env_vars"]
    assert config["volume_mounts"][0]["mount_path"] == profile.artifacts.root


def test_k8s_executor_rejects_a_config_its_schema_does_not_know():
    from dagster._core.system_config.objects import ResolvedRunConfig
    from dagster_k8s import k8s_job_executor

    defs = definitions_for(load_recipe(TINY_RECIPE), load_profile(K8S_PROFILE))
    job = defs.resolve_job_def("retrieval_job").with_executor_def(
        k8s_job_executor.configured({"job_namespce": "ragft"})
    )
    with pytest.raises(dg.DagsterInvalidConfigError, match="job_namespce"):
        ResolvedRunConfig.build(job, {})


def _step_pod(profile: Profile, op_tags: dict):
    """The pod spec dagster_k8s would build for a step with ``op_tags`` under this profile:
    the executor's container context (as k8s_job_executor makes it) merged with the step's
    tags (as K8sStepHandler does), then construct_dagster_k8s_job."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    @dg.asset(op_tags=op_tags)
    def step() -> None: ...

    cfg = profile.k8s_executor_config()
    executor_context = K8sContainerContext(
        namespace=cfg["job_namespace"],
        image_pull_policy=cfg.get("image_pull_policy"),
        env_config_maps=cfg["env_config_maps"],
        env_secrets=cfg["env_secrets"],
        env_vars=cfg["env_vars"],
        volumes=cfg["volumes"],
        volume_mounts=cfg["volume_mounts"],
    )
    step_tags = get_user_defined_k8s_config(step.op.tags)
    context = executor_context.merge(K8sContainerContext(run_k8s_config=step_tags))
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image="ragft:test", dagster_home="/opt/dagster"),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec


def test_gpu_op_tags_request_a_gpu_in_the_step_pod():
    from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY

    profile = load_profile(K8S_PROFILE)
    tags = profile.gpu_op_tags()
    assert list(tags) == [USER_DEFINED_K8S_CONFIG_KEY] == [K8S_CONFIG_TAG]

    gpu_pod = _step_pod(profile, tags)
    container = gpu_pod.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["memory"] == "48Gi"
    assert [t.key for t in gpu_pod.tolerations] == ["nvidia.com/gpu"]
    # The shared artifact volume and the LLM key's Secret reach the pod from the executor.
    claims = [v.persistent_volume_claim.claim_name for v in gpu_pod.volumes]
    assert claims == ["ragft-artifacts"]
    assert [m.mount_path for m in container.volume_mounts] == ["/data/ragft-artifacts"]
    assert [e.secret_ref.name for e in container.env_from if e.secret_ref] == ["ragft-llm"]
    assert {"name": "RAGFT_PROFILE", "value": str(K8S_PROFILE)} in [
        {"name": e.name, "value": e.value} for e in container.env
    ]

    cpu_pod = _step_pod(profile, {})
    assert not (cpu_pod.containers[0].resources and cpu_pod.containers[0].resources.limits)
    assert not cpu_pod.tolerations


def test_multi_gpu_steps_get_gpus_and_shared_memory():
    raw = _mutated(
        _k8s_raw(),
        compute={"processes": 4, "launcher": "accelerate"},
        k8s={
            **_k8s_raw()["k8s"],
            "gpu_resources": {"limits": {"nvidia.com/gpu": 4}},
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        },
    )
    profile = Profile.model_validate(raw)
    pod = _step_pod(profile, profile.gpu_op_tags())
    container = pod.containers[0]
    assert container.resources.limits == {"nvidia.com/gpu": "4"}  # YAML int → quantity string
    assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert any(v.empty_dir and v.empty_dir.medium == "Memory" for v in pod.volumes)
    assert "/dev/shm" in [m.mount_path for m in container.volume_mounts]


@pytest.mark.parametrize("path", [p for p in PROFILES if p != K8S_PROFILE], ids=lambda p: p.stem)
def test_gpu_op_tags_are_empty_off_kubernetes(path):
    assert load_profile(path).gpu_op_tags() == {}


def test_gpu_op_tags_survive_dagster_tag_normalisation():
    from dagster_k8s.job import get_user_defined_k8s_config

    profile = load_profile(K8S_PROFILE)

    @dg.asset(op_tags=profile.gpu_op_tags(), pool="gpu")
    def gpu_step() -> None: ...

    parsed = get_user_defined_k8s_config(gpu_step.op.tags)
    assert json.loads(gpu_step.op.tags[K8S_CONFIG_TAG])["container_config"]
    assert parsed.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_gpu_steps_of_the_k8s_definitions_carry_the_gpu_request():
    defs = definitions_for(load_recipe(TINY_RECIPE), load_profile(K8S_PROFILE))
    graph = defs.resolve_asset_graph()
    tagged = {}
    for key in graph.get_all_asset_keys():
        tags = graph.get(key).assets_def.op.tags
        tagged[key.to_user_string()] = K8S_CONFIG_TAG in tags
    gpu_steps = {"merged_model", "dpo_model", "lora_adapter", "mcq_scores", "general_scores"}
    assert {name for name, has in tagged.items() if has} == gpu_steps
    config = graph.get(dg.AssetKey("lora_adapter")).assets_def.op.tags[K8S_CONFIG_TAG]
    config = json.loads(config) if isinstance(config, str) else config
    assert "nvidia.com/gpu" in config["container_config"]["resources"]["limits"]


def test_http_vector_store_talks_to_a_chroma_server(tmp_path):
    port = free_port()
    raw = _mutated(
        {"name": "http"}, vector_store={"mode": "http", "host": "127.0.0.1", "port": port}
    )
    profile = Profile.model_validate(raw)
    store = build_resources(load_recipe(TINY_RECIPE), profile, tmp_path / "art")["vector_store"]
    assert (store.mode, store.host, store.port) == ("http", "127.0.0.1", port)

    log = (tmp_path / "chroma.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "chroma"), "run", "--host", "127.0.0.1"]
        + ["--port", str(port), "--path", str(tmp_path / "server")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError((tmp_path / "chroma.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        embedded = tmp_path / "embedded"
        with store.collection("profile_test", embedded, embedding_model="m") as col:
            col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["x", "y"])
        with store.collection("profile_test", embedded) as col:
            hit = col.query(query_embeddings=[[0.9, 0.1]], n_results=1)
            assert hit["ids"] == [["a"]] and col.metadata[MODEL_KEY] == "m"
        assert not embedded.exists()  # the server holds the data, not an embedded directory
    finally:
        stop_process_group(server, timeout=10)
        log.close()


LOCAL = {"name": "bad"}
K8S_SECTION = {"namespace": "ragft"}


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        (_mutated(LOCAL, k8s=K8S_SECTION), "'k8s'", "only valid with executor: k8s_job"),
        (_mutated(LOCAL, compute={"processes": 0}), "compute.processes", "greater than or equal"),
        (_mutated(LOCAL, compute={"launcher": "mpirun"}), "compute.launcher", "torchrun"),
        (
            _mutated(LOCAL, vector_store={"mode": "http", "port": 70000}),
            "vector_store.port",
            "less than 65536",
        ),
        (
            _mutated(LOCAL, vector_store={"mode": "http", "host": "http://chroma:8000"}),
            "vector_store.host",
            "not a host name",
        ),
        (_mutated(LOCAL, executor="k8s_job"), "'k8s'", "needs a k8s section"),
        (_mutated(_k8s_raw(), artifacts={"root": ".artifacts"}), "artifacts.root", "absolute"),
        (_mutated(_k8s_raw(), vector_store={"mode": "embedded"}), "vector_store.mode", "http"),
        (_mutated(_k8s_raw(), compute={"processes": 2}), "compute.processes", "1 GPU"),
        (
            _mutated(_k8s_raw(), k8s={**_k8s_raw()["k8s"], "env_secrets": ["OPENAI_API_KEY"]}),
            "k8s.env_secrets",
            "not the variable",
        ),
        (_mutated(_k8s_raw(), compute={"device": "cuda"}), "compute.device", "CPU pods"),
        (
            _mutated(_k8s_raw(), k8s={**_k8s_raw()["k8s"], "namespace": "RAG_FT"}),
            "k8s.namespace",
            "namespace name",
        ),
        (_mutated(_k8s_raw(), k8s={"gpu_resorces": {}}), "k8s.gpu_resorces", "unknown key"),
    ],
    ids=[
        "k8s-without-k8s-executor",
        "processes-0",
        "unknown-launcher",
        "bad-port",
        "url-as-host",
        "k8s-executor-without-section",
        "relative-artifacts-on-k8s",
        "embedded-chroma-on-k8s",
        "more-processes-than-gpus",
        "variable-as-secret-name",
        "cuda-on-k8s",
        "bad-namespace",
        "misspelt-k8s-key",
    ],
)
def test_bad_profile_names_file_and_key(tmp_path, raw, key, words):
    path = _write(tmp_path, raw)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert str(path) in message and key in message and words in message, message
