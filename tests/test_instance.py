"""The instance files: the defaults (dagster.yaml, deploy/dagster.yaml) use only Dagster's own
parts; the opt-in fast ones (dagster-fast.yaml, deploy/dagster-fast.yaml) are the defaults plus
our plugins and nothing else; only those plugins reach into Dagster's private modules."""

import importlib.util
import re

import dagster as dg
import pytest
import yaml

from .conftest import ROOT

PACKAGE = ROOT / "ragft_dagster"
DEFAULTS = {"local": ROOT / "dagster.yaml", "deploy": ROOT / "deploy" / "dagster.yaml"}
FAST = {"local": ROOT / "dagster-fast.yaml", "deploy": ROOT / "deploy" / "dagster-fast.yaml"}
# What each fast file adds to its default, and the class it selects there.
PLUGINS = {
    "local": {
        "storage": ("ragft_dagster.orchestration.storage", "BatchingSqliteStorage"),
        "run_launcher": ("ragft_dagster.orchestration.launcher", "WarmRunLauncher"),
    },
    "deploy": {"run_launcher": ("ragft_dagster.orchestration.launcher", "WarmRunLauncher")},
}
# The opt-in instance plugins: the only modules of ours that may import dagster._* (Dagster's
# private modules, which any Dagster release may change).
PLUGIN_MODULES = {
    "orchestration/launcher.py",
    "orchestration/run_worker.py",
    "orchestration/storage.py",
}


def _modules(config: object) -> list[str]:
    """Every ``module:`` the instance file names, at any depth."""
    if isinstance(config, dict):
        found = [config["module"]] if isinstance(config.get("module"), str) else []
        return found + [m for value in config.values() for m in _modules(value)]
    if isinstance(config, list):
        return [m for value in config for m in _modules(value)]
    return []


@pytest.mark.parametrize("which", sorted(DEFAULTS))
def test_the_default_instance_files_name_no_class_of_ours(which):
    config = yaml.safe_load(DEFAULTS[which].read_text())
    assert "ragft_dagster" not in yaml.safe_dump(config)
    assert all(m.split(".")[0] == "dagster" for m in _modules(config)), _modules(config)
    assert "run_launcher" not in config  # Dagster's default launcher
    # what the default instance must keep: the queue started every second, the gpu pool, no
    # telemetry
    assert config["concurrency"]["pools"]["default_limit"] == 1
    queue = config.get("run_queue") or config["run_coordinator"]["config"]
    assert queue["dequeue_interval_seconds"] == 1
    assert config["telemetry"] == {"enabled": False}


@pytest.mark.parametrize("which", sorted(FAST))
def test_the_fast_instance_files_are_the_defaults_plus_our_plugins(which):
    default = yaml.safe_load(DEFAULTS[which].read_text())
    fast = yaml.safe_load(FAST[which].read_text())
    plugins = PLUGINS[which]
    assert {k: v for k, v in fast.items() if k not in plugins} == {
        k: v for k, v in default.items() if k not in plugins
    }
    for key, (module, cls) in plugins.items():
        section = fast[key].get("custom", fast[key])
        assert (section["module"], section["class"]) == (module, cls), key
    for module in fast["run_launcher"]["config"]["preload"]:
        assert importlib.util.find_spec(module) is not None, module  # in the lock


def test_the_local_instance_files_load_with_their_parts(tmp_path, monkeypatch):
    """dagster.yaml gives Dagster's SQLite storage and default launcher; dagster-fast.yaml our
    plugins (constructing the launcher starts nothing)."""
    # the batching storage turns Dagster's event batching on in this process: undone at the end
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE")
    kinds = {}
    for name, path in (("default", DEFAULTS["local"]), ("fast", FAST["local"])):
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(path.read_text())
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            kinds[name] = (
                type(instance.event_log_storage).__name__,
                type(instance.run_launcher).__name__,
            )
    assert kinds == {
        "default": ("SqliteEventLogStorage", "DefaultRunLauncher"),
        "fast": ("BatchingSqliteEventLogStorage", "WarmRunLauncher"),
    }


def test_only_the_opt_in_plugins_use_dagsters_private_modules():
    """`grep -r "dagster\\._" ragft_dagster` finds only the plugin modules."""
    private = re.compile(r"dagster\._")
    found = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if private.search(path.read_text(encoding="utf-8"))
    }
    assert found - PLUGIN_MODULES == set()
