"""Agreement math against values derived by hand (derivations in the comments), including the
degenerate cases whose conventions alignkit.feedback.agreement documents."""

from __future__ import annotations

import pytest

from alignkit.feedback.agreement import (aggregate_pairwise, aggregate_ranking, alpha_of_units,
                                         cohen_kappa, gold_score_pairwise, gold_score_ranking,
                                         item_agreement_nominal, item_agreement_ranking,
                                         krippendorff_alpha, majority, pairwise_kappas,
                                         pairwise_units, ranking_concordance, ranking_pair_units,
                                         ranking_position_units)

pytestmark = pytest.mark.unit


def test_nominal_alpha_two_coders_by_hand():
    # units (a,a) (a,b) (b,b) (b,b). Coincidences: o_aa = 2, o_ab = o_ba = 1, o_bb = 4;
    # n_a = 3, n_b = 5, n = 8. alpha = 1 - (n-1) * (o_ab + o_ba) / (2 n_a n_b)
    #                                = 1 - 7 * 2 / 30 = 16/30.
    alpha = krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"]])
    assert alpha == pytest.approx(16 / 30)


def test_nominal_alpha_textbook_example_with_missing_values():
    # Krippendorff's reliability-data example (4 coders, 12 units, missing values), the value
    # published for nominal data is 0.743.
    rows = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
            [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[r[u] for r in rows if r[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_ordinal_alpha_by_hand():
    # units (1,1) (2,3) (3,3): o_11 = 2, o_23 = o_32 = 1, o_33 = 2; n_1 = 2, n_2 = 1, n_3 = 3,
    # n = 6. Ordinal d^2: d(1,2) = (2+1 - 3/2)^2 = 2.25, d(2,3) = (1+3 - 4/2)^2 = 4,
    # d(1,3) = (2+1+3 - 5/2)^2 = 12.25. Observed sum = 2 * 4 = 8; expected sum =
    # 2 * (2*1*2.25 + 2*3*12.25 + 1*3*4) = 180. alpha = 1 - 5 * 8 / 180 = 7/9.
    assert krippendorff_alpha([[1, 1], [2, 3], [3, 3]], "ordinal") == pytest.approx(7 / 9)
    # the same data read as nominal: o_23 + o_32 = 2, sum_{c!=k} n_c n_k = 2*(2+6+3) = 22,
    # alpha = 1 - 5 * 2 / 22 = 6/11 (ordinal forgives the near miss 2-vs-3 more).
    assert krippendorff_alpha([[1, 1], [2, 3], [3, 3]], "nominal") == pytest.approx(6 / 11)


def test_alpha_degenerate_cases():
    # perfect agreement with variation: D_o = 0 -> alpha = 1
    assert krippendorff_alpha([["A", "A"], ["B", "B", "B"]]) == 1.0
    # every value identical: D_e = 0 -> undefined (None), by the documented convention
    assert krippendorff_alpha([["A", "A"], ["A", "A", "A"]]) is None
    # a single annotator: no unit has two values -> undefined
    assert alpha_of_units({1: {"ann": "A"}, 2: {"ann": "B"}}) is None
    # no overlap: each unit labelled by a different single annotator -> undefined
    assert alpha_of_units({1: {"x": "A"}, 2: {"y": "B"}}) is None
    assert krippendorff_alpha([]) is None
    # systematic disagreement: (A,B) (B,A): o_AB = o_BA = 2, n_A = n_B = 2, n = 4:
    # 1 - 3 * 4 / (2 * 2 * 2) = -0.5
    assert krippendorff_alpha([["A", "B"], ["B", "A"]]) == pytest.approx(-0.5)


def test_alpha_leave_one_out():
    units = {1: {"x": "A", "y": "A", "z": "B"}, 2: {"x": "B", "y": "B", "z": "A"},
             3: {"x": "A", "y": "A", "z": "A"}}
    # without z, x and y agree on every unit (with variation) -> 1
    assert alpha_of_units(units, without="z") == 1.0
    assert alpha_of_units(units) < 1.0


def test_cohen_kappa_by_hand():
    # coder 1: a a b b; coder 2: a b b b. p_o = 3/4. Shares: coder 1 a = 1/2, coder 2 a = 1/4.
    # p_e = 1/2*1/4 + 1/2*3/4 = 1/2. kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2.
    one = {1: "a", 2: "a", 3: "b", 4: "b"}
    two = {1: "a", 2: "b", 3: "b", 4: "b"}
    assert cohen_kappa(one, two) == pytest.approx(0.5)
    assert cohen_kappa(one, one) == 1.0
    # only the shared units count: unit 9 is ignored
    assert cohen_kappa({**one, 9: "a"}, {**two, 10: "b"}) == pytest.approx(0.5)
    # complete disagreement on a balanced split: p_o = 0, p_e = 1/2 -> -1
    assert cohen_kappa({1: "a", 2: "b"}, {1: "b", 2: "a"}) == pytest.approx(-1.0)


def test_cohen_kappa_degenerate_cases():
    assert cohen_kappa({1: "a"}, {2: "a"}) is None  # no overlap
    assert cohen_kappa({1: "a", 2: "a"}, {1: "a", 2: "a"}) is None  # p_e = 1: 0/0
    # one annotator constant, the other not: p_e = 1*1/2 = 1/2, p_o = 1/2 -> kappa 0
    assert cohen_kappa({1: "a", 2: "a"}, {1: "a", 2: "b"}) == pytest.approx(0.0)


def test_pairwise_kappas_lists_only_overlapping_pairs():
    units = {1: {"x": "A", "y": "A"}, 2: {"x": "B", "y": "B"}, 3: {"z": "A"}}
    out = pairwise_kappas(units)
    assert set(out) == {("x", "y")}
    assert out[("x", "y")] == {"kappa": 1.0, "shared": 2}


def test_units_of_pairwise_and_ranking_labels():
    units = pairwise_units([(7, "x", {"helpful": "A", "harmless": "tie"}),
                            (7, "y", {"helpful": "B"})])
    assert units == {(7, "helpful"): {"x": "A", "y": "B"}, (7, "harmless"): {"x": "tie"}}
    pos = ranking_position_units([(1, "x", [2, 0, 1])])
    assert pos == {(1, 2): {"x": 1}, (1, 0): {"x": 2}, (1, 1): {"x": 3}}
    pairs = ranking_pair_units([(1, "x", [2, 0, 1])])
    assert pairs == {(1, 0, 1): {"x": "i"}, (1, 0, 2): {"x": "j"}, (1, 1, 2): {"x": "j"}}


def test_ranking_alpha_identical_and_reversed():
    same = ranking_position_units([(1, "x", [0, 1, 2]), (1, "y", [0, 1, 2])])
    assert alpha_of_units(same, "ordinal") == 1.0
    # reversed rankings of 3: position pairs (1,3) (2,2) (3,1). Units 0 and 2 each add 1 to
    # o_13 and o_31 -> o_13 = o_31 = 2, o_22 = 2; n_g = 2 each, n = 6. d(1,3) = (2+2+2 - 2)^2
    # = 16, d(1,2) = d(2,3) = (4 - 2)^2 = 4. observed = 4 * 16 = 64; expected =
    # 2 * (4*4 + 4*16 + 4*4) = 192. alpha = 1 - 5 * 64 / 192 = -2/3.
    rev = ranking_position_units([(1, "x", [0, 1, 2]), (1, "y", [2, 1, 0])])
    assert alpha_of_units(rev, "ordinal") == pytest.approx(-2 / 3)


def test_item_agreement():
    assert item_agreement_nominal(["A", "A", "B"]) == pytest.approx(2 / 6)
    assert item_agreement_nominal(["A", "A"]) == 1.0
    assert item_agreement_nominal(["A"]) is None
    assert ranking_concordance([0, 1, 2], [0, 2, 1]) == pytest.approx(2 / 3)
    assert ranking_concordance([0, 1, 2], [2, 1, 0]) == 0.0
    # pairs of 3 rankings: (r1,r2) 2/3, (r1,r3) 1, (r2,r3) 2/3 -> mean 7/9
    assert item_agreement_ranking([[0, 1, 2], [0, 2, 1], [0, 1, 2]]) == pytest.approx(7 / 9)
    assert item_agreement_ranking([[0, 1]]) is None


def test_aggregation_and_disputes():
    assert majority(["A", "A", "B"]) == ("A", True)
    assert majority(["A", "B"]) == (None, False)
    choices, disputed = aggregate_pairwise([{"h": "A", "s": "tie"}, {"h": "A", "s": "B"},
                                            {"h": "B", "s": "tie"}], ["h", "s"])
    assert choices == {"h": "A", "s": "tie"} and not disputed
    choices, disputed = aggregate_pairwise([{"h": "A"}, {"h": "B"}], ["h", "s"])
    assert choices == {"h": None} and disputed
    # Borda: positions r0: 0+1+0 = 1, r1: 1+0+2 = 3, r2: 2+2+1 = 5 -> [0, 1, 2]; r0 first 2 of 3
    order, disputed = aggregate_ranking([[0, 1, 2], [1, 0, 2], [0, 2, 1]])
    assert order == [0, 1, 2] and not disputed
    order, disputed = aggregate_ranking([[0, 1], [1, 0]])
    assert order == [0, 1] and disputed  # equal Borda: ties broken by index; no majority


def test_gold_scores():
    assert gold_score_pairwise({"h": "A", "s": "B"}, {"h": "A", "s": "tie"}) == 0.5
    assert gold_score_pairwise({"h": "A"}, {"s": "A"}) is None
    assert gold_score_ranking([1, 0, 2], [0, 1, 2]) == pytest.approx(2 / 3)
