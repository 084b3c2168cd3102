"""assets/partitions.py: per-partition metadata of a range run, checked against the run's
partitions once, with Dagster's public call where a Dagster has no step accumulator to add to.
(Its records through a real run, on both instance files: tests/orchestration/test_storage.py.)"""

import types

import dagster as dg
import pytest

from ragft_dagster.assets.partitions import add_partition_metadata


def test_partition_metadata_outside_the_run_is_refused():
    context = types.SimpleNamespace(partition_keys=["a.md", "b.md"])
    with pytest.raises(dg.DagsterInvariantViolationError, match="c.md"):
        add_partition_metadata(context, {"a.md": {}, "c.md": {}})  # type: ignore[arg-type]


def test_partition_metadata_falls_back_to_the_public_call():
    calls: list[tuple] = []
    context = types.SimpleNamespace(
        partition_keys=["a.md", "b.md"],
        add_asset_metadata=lambda md, partition_key: calls.append((partition_key, md)),
    )
    add_partition_metadata(context, {"a.md": {"n": 1}, "b.md": {"n": 2}})  # type: ignore[arg-type]
    assert calls == [("a.md", {"n": 1}), ("b.md", {"n": 2})]


def test_partition_metadata_of_a_one_partition_run_is_dagsters_call_without_the_key():
    calls: list[tuple] = []
    context = types.SimpleNamespace(
        partition_keys=["a.md"],
        add_asset_metadata=lambda md, partition_key=None: calls.append((partition_key, md)),
    )
    add_partition_metadata(context, {"a.md": {"n": 1}})  # type: ignore[arg-type]
    assert calls == [(None, {"n": 1})]


def test_an_accumulator_that_takes_other_arguments_leaves_the_public_call_to_do_it():
    """Another Dagster's accumulator refuses our arguments: nothing half-added, every key through
    the public call."""
    calls: list[tuple] = []

    class Accumulator:
        def with_additional_asset_metadata(self, **kwargs):
            raise TypeError("unexpected keyword argument 'partition_key'")

    step = types.SimpleNamespace(_metadata_accumulator=Accumulator())
    context = types.SimpleNamespace(
        partition_keys=["a.md", "b.md"],
        asset_key=dg.AssetKey("doc_chunks"),
        _step_execution_context=step,
        add_asset_metadata=lambda md, partition_key: calls.append((partition_key, md)),
    )
    add_partition_metadata(context, {"a.md": {"n": 1}, "b.md": {"n": 2}})  # type: ignore[arg-type]
    assert calls == [("a.md", {"n": 1}), ("b.md", {"n": 2})]
    assert isinstance(step._metadata_accumulator, Accumulator)
