"""Stages come from the assets' own deps, groups and partitions (ragft_dagster.orchestration)."""

import dagster as dg
import pytest

from ragft_dagster.orchestration.stages import StageError, stages_of

DOCS = dg.StaticPartitionsDefinition(["a.md", "b.md"])
ALL = dg.AllPartitionMapping()


def _asset(name, group, deps=(), partitions=None):
    @dg.asset(name=name, group_name=group, deps=list(deps), partitions_def=partitions)
    def _a() -> None: ...

    return _a


def test_stages_follow_the_dependencies_not_the_listing_order():
    assets = [
        _asset("report", "report", ["score"]),
        _asset("score", "evaluation", ["model", "index"]),
        _asset("index", "retrieval", [dg.AssetDep("chunks", partition_mapping=ALL)]),
        _asset("chunks", "documents", partitions=DOCS),
        _asset("tuned", "models", ["base"]),
        _asset("base", "models"),
        _asset("model", "training", ["tuned", "chunks"]),
    ]
    stages = stages_of(assets)
    order = [s.group for s in stages]
    assert order.index("models") < order.index("training") < order.index("evaluation")
    assert order.index("documents") < order.index("retrieval") < order.index("evaluation")
    assert order[-1] == "report"
    models = next(s for s in stages if s.group == "models")
    assert models.assets == ("base", "tuned") and models.job == "models_job"
    assert next(s for s in stages if s.group == "documents").partitions_def == DOCS


def test_a_group_that_mixes_partitions_is_refused_naming_both_assets():
    with pytest.raises(StageError, match=r"'docs' mixes partitions: .*(one|two).*(one|two)"):
        stages_of([_asset("one", "docs", partitions=DOCS), _asset("two", "docs", ["one"])])


def test_groups_that_depend_on_each_other_are_refused():
    assets = [
        _asset("a1", "a"),
        _asset("b1", "b", ["a1"]),
        _asset("a2", "a", ["b1"]),
    ]
    with pytest.raises(StageError, match=r"\['a', 'b'\] depend on each other"):
        stages_of(assets)


def test_a_check_that_reads_another_asset_runs_after_it():
    """vector_index's retrieval check reads sft_dataset: the index stage follows training."""

    @dg.asset(group_name="retrieval")
    def index() -> None: ...

    @dg.asset_check(asset=index, additional_deps=["dataset"])
    def index_quality() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    stages = stages_of([index, index_quality, _asset("dataset", "training")])
    assert [s.group for s in stages] == ["training", "retrieval"]
