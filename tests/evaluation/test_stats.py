"""Multiplicity (issue 13, item 5): the comparisons the method is about are one family,
Holm-corrected together; every other pair is exploratory, uncorrected and labelled so."""

import pytest

from ragft_dagster.evaluation.stats import comparisons_markdown, holm_adjust, paired_comparisons


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
    from ragft_dagster.evaluation.stats import expected_p, mcnemar_exact

    a = [True] * 7 + [False] * 3 + [True] * 4
    b = [False] * 7 + [True] * 3 + [True] * 4
    assert expected_p(a, b) == mcnemar_exact(7, 3)
    (row,) = paired_comparisons({"a": dict(enumerate(a)), "b": dict(enumerate(b))}, n_boot=200)
    assert (row["only_a"], row["only_b"]) == (7, 3) and isinstance(row["only_a"], int)
    assert row["mcnemar_p"] == mcnemar_exact(7, 3)


def test_split_ties_give_expected_discordance_and_the_p_averaged_over_tie_breaks():
    from ragft_dagster.evaluation.stats import discordant_distribution, mcnemar_exact

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
