"""Multiplicity (issue 13, item 5): the comparisons the method is about are one family,
Holm-corrected together; every other pair is exploratory, uncorrected and labelled so. The
tests (scipy/statsmodels) against hand-computed values, and the paired tests of open-answer
scores (issue 29)."""

import math

import pytest

from ragft_dagster.stats import (
    comparisons_markdown,
    continuous_mdd,
    holm_adjust,
    mcnemar_exact,
    mcnemar_one_sided,
    mean_interval,
    paired_comparisons,
    score_comparisons,
    wilcoxon_p,
    wilson_interval,
)


def test_holm_against_hand_computed_values():
    # sorted: .005 x 4 = .02; .01 x 3 = .03; .03 x 2 = .06; .04 x 1 = .04, raised to .06 (never
    # below the step before); returned in the input order
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.02]) == pytest.approx([0.02])  # a family of one: no correction
    assert holm_adjust([]) == []


def _cells():
    """20 questions. With RAG each model gets 10 more right and 2 fewer: exact McNemar
    p = 2 * (1 + 12 + 66) / 4096 = 0.0385742 for either model."""
    q = [f"q{i}" for i in range(20)]
    closed = {k: i < 5 for i, k in enumerate(q)}  # q0-q4
    rag = {k: 2 <= i < 15 for i, k in enumerate(q)}  # q2-q14: 10 gained, q0 and q1 lost
    return {"m closed_book": closed, "n closed_book": dict(closed), "m rag": rag, "n rag": rag}


def test_family_is_holm_corrected_and_other_pairs_are_exploratory():
    family = [("m rag", "m closed_book"), ("n rag", "n closed_book"), ("x rag", "m rag")]
    rows = paired_comparisons(_cells(), n_boot=200, family=family)
    raw = 2 * (1 + 12 + 66) / 4096
    headline = [r for r in rows if r["family"] == "headline"]
    # oriented as the family says (the cells dict lists closed_book first); "x rag" is no cell
    assert [(r["a"], r["b"]) for r in headline] == family[:2]
    for r in headline:
        assert (r["only_a"], r["only_b"]) == (10, 2) and r["difference"] == pytest.approx(0.4)
        assert r["mcnemar_p"] == pytest.approx(raw)
        assert r["holm_p"] == pytest.approx(2 * raw)  # 0.0771: significant raw, not corrected
        assert not r["significant"]
    exploratory = {(r["a"], r["b"]): r for r in rows if r["family"] == "exploratory"}
    assert len(exploratory) == 6 - 2 and rows[2:] == list(exploratory.values())
    cross = exploratory[("n closed_book", "m rag")]
    assert cross["holm_p"] is None and cross["mcnemar_p"] == pytest.approx(raw)
    assert cross["significant"]  # uncorrected, and labelled so
    md = comparisons_markdown(rows, "acc_norm")
    assert "**Headline comparisons** (2, Holm-corrected together" in md
    assert "| m rag vs m closed_book | 20 | 65.0% | 25.0% | +40.0 pts" in md
    assert "| 0.039 | 0.077 |" in md and "| not significant |" in md
    assert "**Exploratory comparisons** (4" in md and "| p < 0.05 uncorrected |" in md
    assert "| acc_norm A | acc_norm B |" in md


def test_without_a_family_every_pair_is_corrected_together():
    rows = paired_comparisons(_cells(), n_boot=200)
    assert len(rows) == 6 and {r["family"] for r in rows} == {"headline"}
    ps = sorted(r["mcnemar_p"] for r in rows)
    assert sorted(r["holm_p"] for r in rows) == pytest.approx(holm_adjust(ps))


def test_without_ties_the_expected_test_is_the_exact_mcnemar_test():
    from ragft_dagster.stats import expected_p, mcnemar_exact

    a = [True] * 7 + [False] * 3 + [True] * 4
    b = [False] * 7 + [True] * 3 + [True] * 4
    assert expected_p(a, b) == mcnemar_exact(7, 3)
    (row,) = paired_comparisons({"a": dict(enumerate(a)), "b": dict(enumerate(b))}, n_boot=200)
    assert (row["only_a"], row["only_b"]) == (7, 3) and isinstance(row["only_a"], int)
    assert row["mcnemar_p"] == mcnemar_exact(7, 3)


def test_split_ties_give_expected_discordance_and_the_p_averaged_over_tie_breaks():
    from ragft_dagster.stats import discordant_distribution, mcnemar_exact

    # 5 questions only a gets right, one a ties 2-way with the correct option (1/2) where b is
    # wrong, one both tie 2-way (each right with 1/2, independently)
    a = {**{i: 1.0 for i in range(5)}, 5: 0.5, 6: 0.5}
    b = {**{i: 0.0 for i in range(5)}, 5: 0.0, 6: 0.5}
    dist = discordant_distribution([a[q] for q in a], [b[q] for q in a])
    # question 5: +1 only_a w.p. 1/2; question 6: +1 only_a 1/4, +1 only_b 1/4, same 1/2
    assert dist == pytest.approx(
        {(5, 0): 0.25, (6, 0): 0.25 + 0.125, (7, 0): 0.125, (5, 1): 0.125, (6, 1): 0.125}
    )
    (row,) = paired_comparisons({"a": a, "b": b}, n_boot=200)
    assert row["only_a"] == pytest.approx(5.75) and row["only_b"] == pytest.approx(0.25)
    assert row["accuracy_a"] == pytest.approx(6 / 7) and row["difference"] == pytest.approx(5.5 / 7)
    assert row["mcnemar_p"] == pytest.approx(
        sum(p * mcnemar_exact(i, j) for (i, j), p in dist.items())
    )
    md = comparisons_markdown([{**row, "family": "headline", "holm_p": row["mcnemar_p"]}])
    assert "| 5.8 / 0.2 |" in md and "counts 1/k correct" in md


def test_mcnemar_is_scipys_exact_binomial_with_the_old_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 2 * (1/2)^5
    assert mcnemar_exact(2, 6) == pytest.approx(2 * (1 + 8 + 28) / 256)  # 2 * P(X <= 2 | 8)
    assert mcnemar_exact(4, 4) == 1.0
    assert mcnemar_one_sided(6, 2) == pytest.approx(37 / 256)  # P(X >= 6 | 8) = (28 + 8 + 1)/256


def test_wilson_interval_is_statsmodels_with_the_textbook_values():
    # 8 of 10: centre (0.8 + 1.92/10) / 1.384, half-width 1.96 * sqrt(0.016 + 0.0096) / 1.384
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_mean_interval_uses_wilson_for_verdicts_and_the_bootstrap_for_scores():
    mean, low, high = mean_interval([1.0] * 8 + [0.0] * 2)
    assert mean == 0.8 and (low, high) == pytest.approx(wilson_interval(8, 10))
    mean, low, high = mean_interval([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.5) and 0.2 <= low < 0.5 < high <= 0.8


def test_wilcoxon_and_the_detectable_difference_by_hand():
    # five positive differences: the exact null puts 1/32 on "all positive"
    assert wilcoxon_p([1, 2, 3, 4, 5], [0] * 5) == pytest.approx(2 / 32)
    assert wilcoxon_p([1, 2, 3, 4, 5], [0] * 5, alternative="greater") == pytest.approx(1 / 32)
    assert wilcoxon_p([1, 2], [1, 2]) == 1.0
    # sd of [0.1, 0.3] is 0.1 * sqrt(2); (1.96 + 0.84) * sd / sqrt(2) = 0.2802
    assert continuous_mdd([0.1, 0.3]) == pytest.approx(0.2802, abs=1e-4)
    assert math.isnan(continuous_mdd([0.2, 0.2]))


def test_score_comparisons_pick_the_test_by_the_scores_and_holm_correct_together():
    f1 = {
        "sft rag": {"q1": 0.9, "q2": 0.8, "q3": 0.7, "q4": 0.6, "q5": 0.5},
        "base rag": {"q1": 0.1, "q2": 0.2, "q3": 0.3, "q4": 0.0, "q5": 0.4},
        "sft closed_book": {"q1": 0.9, "q2": 0.8, "q3": 0.7, "q4": 0.6, "q5": 0.5},
    }
    rows = score_comparisons(
        f1, [("sft rag", "base rag"), ("sft rag", "sft closed_book"), ("x", "y")], n_boot=200
    )
    assert [(r["a"], r["b"]) for r in rows] == [
        ("sft rag", "base rag"),
        ("sft rag", "sft closed_book"),
    ]
    first, second = rows
    assert first["test"] == "Wilcoxon signed-rank" and first["p"] == pytest.approx(2 / 32)
    assert first["difference"] == pytest.approx((3.5 - 1.0) / 5)
    assert second["p"] == 1.0
    # Holm over two: the smaller p doubled, the larger kept at least as large
    assert first["holm_p"] == pytest.approx(4 / 32) and second["holm_p"] == 1.0
    verdicts = {
        "a": {f"q{i}": 1.0 for i in range(6)},
        "b": {f"q{i}": 0.0 for i in range(6)},
    }
    [row] = score_comparisons(verdicts, [("a", "b")], n_boot=200)
    assert row["test"] == "exact McNemar" and (row["only_a"], row["only_b"]) == (6, 0)
    assert row["p"] == pytest.approx(2 / 64)


def test_wilson_interval_against_hand_computed():
    lo, hi = wilson_interval(18, 36)
    assert abs(lo - 0.3445) < 1e-3 and abs(hi - 0.6555) < 1e-3
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and abs(hi - 0.2775) < 1e-3


def test_exact_mcnemar_against_hand_computed_values():
    from ragft_dagster.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 2 * 0.5**5
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.038574
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(3, 3) == 1.0


def test_paired_bootstrap_and_minimum_detectable_difference():
    from ragft_dagster.stats import minimum_detectable_difference, paired_bootstrap_ci

    assert paired_bootstrap_ci([True] * 10, [False] * 10) == (1.0, 1.0)
    assert paired_bootstrap_ci([True, False] * 5, [True, False] * 5) == (0.0, 0.0)
    lo, hi = paired_bootstrap_ci([True] * 6 + [False] * 4, [False] * 6 + [True] * 4)
    assert lo < 0.2 < hi and lo >= -1 and hi <= 1
    # By hand: d = 0.2 with 30% discordant questions needs
    # (1.959964*sqrt(.3) + 0.841621*sqrt(.26))^2 / .04 = 56.45 questions.
    assert minimum_detectable_difference(56, 0.3) == pytest.approx(0.2, abs=0.003)
    assert minimum_detectable_difference(5000, 0.3) < minimum_detectable_difference(50, 0.3)
    assert math.isnan(minimum_detectable_difference(36, 0.0))  # never disagree: nothing to detect


def test_paired_comparisons_label_not_significant():
    from ragft_dagster.stats import comparisons_markdown, paired_comparisons

    q = [f"q{i}" for i in range(20)]
    cells = {
        "good": {k: i < 18 for i, k in enumerate(q)},  # 18/20
        "bad": {k: i < 4 for i, k in enumerate(q)},  # 4/20, the same 4 right
        "close": {k: 1 <= i < 19 for i, k in enumerate(q)},  # 18/20, differs on 2 questions
    }
    rows = {(r["a"], r["b"]): r for r in paired_comparisons(cells, n_boot=2000)}
    big = rows[("good", "bad")]
    assert (big["only_a"], big["only_b"]) == (14, 0) and big["significant"]
    assert big["mcnemar_p"] == pytest.approx(2 / 2**14)
    near = rows[("good", "close")]
    assert near["difference"] == 0 and not near["significant"]
    assert "not significant" in comparisons_markdown(list(rows.values()))
