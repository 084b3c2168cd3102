"""bench-scale's own pieces, small: Dagster's floor on both instance files, the fitted line."""

import math

from ragft_dagster.benchmarks.scale import _line, dagster_floor


def test_dagster_floor_runs_on_the_fast_and_the_default_instance():
    # each raises unless every partition of both assets was materialized
    assert dagster_floor(12) > 0  # dagster-fast.yaml's storage, our metadata calls
    assert dagster_floor(12, fast_storage=False) > 0  # dagster.yaml: Dagster's storage
    assert dagster_floor(12, fast_storage=False, our_metadata=False) > 0  # Dagster's calls too


def test_fitted_line():
    fit = _line([100, 300, 1000], [25.0, 73.0, 238.0])
    assert math.isclose(fit["slope_s_per_doc"], 0.2366, rel_tol=1e-3)
    assert math.isclose(fit["intercept_s"], 1.5, abs_tol=0.5)
    assert math.isnan(_line([100], [25.0])["slope_s_per_doc"])
