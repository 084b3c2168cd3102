"""ragft_dagster/backfill.py: an asset backfill submitted through Dagster's GraphQL schema (the
UI's request), in process and from `ragft backfill` (the dagster-graphql command)."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.backfill import (
    LAUNCH_BACKFILL,
    BackfillError,
    backfill_variables,
    graphql_command,
    launch_backfill,
)

from .conftest import LOCAL_PROFILE, ROOT, recipe_with_docs

NAMES = ["chunking.md", "glossary.md", "overview.md"]
BIN = Path(sys.executable).parent


def _profile(tmp_path: Path) -> Path:
    path = tmp_path / "profile.yaml"
    raw = yaml.safe_load(LOCAL_PROFILE.read_text())
    raw["artifacts"] = {"root": str(tmp_path / "artifacts")}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_variables_name_the_assets_and_the_partitions():
    assert backfill_variables(partitions=None) == {
        "params": {
            "assetSelection": [{"path": ["doc_chunks"]}, {"path": ["synthetic_qa"]}],
            "allPartitions": True,
        }
    }
    chosen = backfill_variables(["doc_chunks"], ["a.md"], title="one")["params"]
    assert chosen == {
        "assetSelection": [{"path": ["doc_chunks"]}],
        "partitionNames": ["a.md"],
        "title": "one",
    }


def test_refusals_become_errors_that_say_why():
    def answering(response):
        return lambda document, variables: response

    with pytest.raises(BackfillError, match=r"no document partitions \['x.md'\]"):
        launch_backfill(
            answering(
                {
                    "data": {
                        "launchPartitionBackfill": {
                            "__typename": "PartitionKeysNotFoundError",
                            "partitionKeys": ["x.md"],
                        }
                    }
                }
            )
        )
    with pytest.raises(BackfillError, match="Cannot query field"):
        launch_backfill(answering({"errors": [{"message": "Cannot query field 'x'"}]}))
    with pytest.raises(BackfillError, match=r"PythonError.*boom"):
        launch_backfill(
            answering(
                {
                    "data": {
                        "launchPartitionBackfill": {"__typename": "PythonError", "message": "boom"}
                    }
                }
            )
        )


def test_the_schema_records_the_asset_backfill(tmp_path, monkeypatch):
    """The mutation through Dagster's own GraphQL schema, on the project's code location: the
    backfill the daemon reads names every document of both assets, or the chosen ones."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    recipe, _ = recipe_with_docs(tmp_path, NAMES)
    monkeypatch.setenv("RAGFT_RECIPE", str(recipe))
    monkeypatch.setenv("RAGFT_PROFILE", str(_profile(tmp_path)))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("documents", NAMES)
        with define_out_of_process_context(str(ROOT / "workspace.yaml"), None, instance) as ctx:

            def execute(document, variables):
                done = execute_dagster_graphql(ctx, document, variables)
                return {"data": done.data, "errors": done.errors}

            every = launch_backfill(execute, title="all")
            some = launch_backfill(execute, partitions=["glossary.md"])
            with pytest.raises(BackfillError, match=r"\['zz.md'\]"):
                launch_backfill(execute, partitions=["glossary.md", "zz.md"])
        subsets = {}
        for backfill_id in (every, some):
            target = instance.get_backfill(backfill_id).asset_backfill_data.target_subset
            subsets[backfill_id] = {
                (key.asset_key.to_user_string(), key.partition_key)
                for key in target.iterate_asset_partitions()
            }
        assert instance.get_backfill(every).title == "all"
        assert subsets[every] == {(a, n) for a in ("doc_chunks", "synthetic_qa") for n in NAMES}
        assert subsets[some] == {("doc_chunks", "glossary.md"), ("synthetic_qa", "glossary.md")}
        assert len(instance.get_backfills()) == 2  # the refused one recorded nothing


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return home


def test_ragft_backfill_submits_through_the_dagster_graphql_command(tmp_path, monkeypatch):
    recipe, _ = recipe_with_docs(tmp_path, NAMES)
    env = {**os.environ, "DAGSTER_HOME": str(_home(tmp_path))}
    cmd = [str(BIN / "ragft"), "backfill", "--recipe", str(recipe)]
    cmd += ["--profile", str(_profile(tmp_path))]
    done = subprocess.run(
        cmd + ["--documents", "chunking.md,overview.md"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    backfill_id = done.stdout.split()[1].rstrip(":")
    assert "for 2 documents" in done.stdout
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        target = instance.get_backfill(backfill_id).asset_backfill_data.target_subset
        assert target.num_partitions_and_non_partitioned_assets == 4  # two assets, two documents

    unknown = subprocess.run(
        cmd + ["--documents", "nope.md"], env=env, capture_output=True, text=True, timeout=300
    )
    assert unknown.returncode == 2
    assert "no document partition ['nope.md']" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_broken_instance_is_reported_not_a_traceback(tmp_path, monkeypatch):
    """dagster-graphql cannot open the instance: the error says so in a few lines."""
    recipe, _ = recipe_with_docs(tmp_path, NAMES)
    home = tmp_path / "broken"
    home.mkdir()
    (home / "dagster.yaml").write_text("storage: {nonsense: 1}\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    execute = graphql_command(recipe, _profile(tmp_path), timeout_s=120)
    with pytest.raises(BackfillError, match="dagster-graphql ended with status") as caught:
        execute(LAUNCH_BACKFILL, backfill_variables())
    assert len(str(caught.value).splitlines()) <= 6


@pytest.mark.parametrize(
    "content, says",
    [
        ("storage: [\n", "is not valid YAML (line 2, column 1)"),
        ("storage: {nonsense: 1}\n", 'Error 1: Received unexpected config entry "nonsense"'),
    ],
)
@pytest.mark.parametrize("command", ["backfill", "run"])
def test_a_bad_instance_file_fails_ragft_in_a_few_lines_naming_it(tmp_path, command, content, says):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(content)
    recipe, _ = recipe_with_docs(tmp_path, NAMES)
    done = subprocess.run(
        [
            str(BIN / "ragft"),
            command,
            "--recipe",
            str(recipe),
            "--profile",
            str(_profile(tmp_path)),
        ],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert f"the Dagster instance file {home / 'dagster.yaml'}" in done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3
