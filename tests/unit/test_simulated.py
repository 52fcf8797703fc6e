"""Simulated annotators: Bradley-Terry / Plackett-Luce probabilities by hand, careless labels,
Bayes-optimal accuracy on a hand-made set, seeded reproducibility, and that the labels' agreement
with gold matches the computed Bayes-optimal accuracy on thousands of comparisons."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from alignkit.data.readers import Record
from alignkit.data.schemas import parse_preference, parse_ranking
from alignkit.errors import UserError
from alignkit.feedback.simulated import (DEFAULT_ANNOTATORS, Annotator, PanelConfig,
                                         SimulatedPanel, agreement_report, bayes_optimal_accuracy,
                                         gold_agreement, longer_chosen_share,
                                         pair_correct_probabilities, response_words, sigmoid,
                                         with_label_noise, with_length_bias)

pytestmark = pytest.mark.unit

S1 = 1 / (1 + math.exp(-1))  # sigmoid(1) = 0.7310585786300049
S2 = 1 / (1 + math.exp(-2))  # sigmoid(2) = 0.8807970779778823
S4 = 1 / (1 + math.exp(-4))  # sigmoid(4) = 0.9820137900379085


def test_sigmoid_is_stable():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1.0) == pytest.approx(0.7310585786300049, abs=1e-15)
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def test_temperature_to_probability():
    a = Annotator("a", temperature=1.0)
    assert a.prob_prefers(2.0, 1.0) == pytest.approx(S1)        # sigmoid((2 - 1) / 1)
    assert a.prob_prefers(1.0, 2.0) == pytest.approx(1 - S1)    # symmetric
    assert a.prob_prefers(1.5, 1.5) == 0.5
    # T = 0.5 doubles the gap: sigmoid(1 / 0.5) = sigmoid(2)
    assert Annotator("b", temperature=0.5).prob_prefers(1.0, 0.0) == pytest.approx(S2)
    # gold scale 2 with T = 1 on a gap of 0.5: sigmoid(2 * 0.5 / 1) = sigmoid(1)
    assert a.prob_prefers(0.5, 0.0, gold_scale=2.0) == pytest.approx(S1)
    # T = 0: a perfect annotator (ties at random)
    perfect = Annotator("p", temperature=0.0)
    assert [perfect.prob_prefers(1, 0), perfect.prob_prefers(0, 0), perfect.prob_prefers(0, 1)] \
        == [1.0, 0.5, 0.0]


def test_careless_annotator_probability():
    # careless 0.2, T = 1, gap 1: 0.2 * 0.5 + 0.8 * sigmoid(1) = 0.1 + 0.8 * 0.7310586
    c = Annotator("c", temperature=1.0, careless_rate=0.2)
    assert c.prob_prefers(1.0, 0.0) == pytest.approx(0.1 + 0.8 * S1)
    assert c.prob_prefers(1.0, 0.0) == pytest.approx(0.6848468629040039)
    # careless 0.4 and perfect otherwise: 0.2 + 0.6 * 1
    assert Annotator("d", 0.0, 0.4).prob_prefers(3.0, 1.0) == pytest.approx(0.8)
    assert Annotator("e", 1.0, 1.0).prob_prefers(100.0, 0.0) == 0.5
    assert c.prob_correct(0.0, 1.0) == pytest.approx(0.1 + 0.8 * S1)  # gold-better is b here
    assert c.prob_correct(1.0, 1.0) == 0.5


def test_first_choice_probabilities_are_softmax():
    g = [0.0, math.log(2), math.log(3)]  # weights exp(g / 1) = 1, 2, 3
    assert Annotator("a").first_choice_probs(g) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    # careless 0.3: 0.3 / 3 + 0.7 * softmax
    assert Annotator("b", 1.0, 0.3).first_choice_probs(g) == pytest.approx(
        [0.1 + 0.7 / 6, 0.1 + 0.7 * 2 / 6, 0.1 + 0.7 * 3 / 6])
    assert Annotator("c", 0.0).first_choice_probs([1.0, 2.0, 2.0]) == pytest.approx([0, .5, .5])


def test_bayes_optimal_accuracy_on_a_hand_made_set():
    panel = SimulatedPanel([Annotator("A", 1.0), Annotator("B", 1.0, careless_rate=0.5),
                            Annotator("C", 0.5)])
    records = [
        # A labels the gold-better response chosen; P(A picks the better of a gap 1) = s(1)
        {"prompt": "q", "chosen": "x", "rejected": "y", "annotator": "A", "gold": [2.0, 1.0]},
        # B labels against gold; P(B picks the gold-better) = 0.25 + 0.5 s(1)
        {"prompt": "q", "chosen": "x", "rejected": "y", "annotator": "B", "gold": [0.0, 1.0]},
        # a gold tie: no predictor can beat 0.5
        {"prompt": "q", "chosen": "x", "rejected": "y", "annotator": "A", "gold": [1.5, 1.5]},
        # a ranking, best first 2, 0, 1, by C (T = 0.5): pairs (2>0) gap 2 -> s(4);
        # (2>1) gap 1 -> s(2); (0>1): gold-better is 1, gap 1 -> s(2)
        {"prompt": "q", "responses": ["r0", "r1", "r2"], "ranking": [2, 0, 1], "annotator": "C",
         "gold": [0.0, 1.0, 2.0]},
    ]
    expected = [S1, 0.25 + 0.5 * S1, 0.5, S4, S2, S2]
    assert pair_correct_probabilities(records, panel) == pytest.approx(expected)
    assert bayes_optimal_accuracy(records, panel) == pytest.approx(sum(expected) / 6)
    assert bayes_optimal_accuracy(records, panel) == pytest.approx(0.7650326, abs=1e-7)
    # agreement: A yes, B no, tie 0.5, ranking pairs yes, yes, no -> 3.5 / 6
    assert gold_agreement(records) == pytest.approx(3.5 / 6)
    # a gold scale of 2 sharpens every careful probability
    assert bayes_optimal_accuracy(records[:1], panel, gold_scale=2.0) == pytest.approx(S2)
    # plain annotator lists and mappings work too
    anns = {"A": Annotator("A", 1.0)}
    assert bayes_optimal_accuracy(records[:1], anns) == pytest.approx(S1)
    assert bayes_optimal_accuracy(records[:1], [Annotator("A", 1.0)]) == pytest.approx(S1)
    with pytest.raises(UserError, match="not in the panel"):
        bayes_optimal_accuracy(records[1:2], anns)


def test_report_per_annotator():
    panel = SimulatedPanel([Annotator("A", 1.0), Annotator("B", 0.0)])
    recs = [{"prompt": "q", "chosen": "x", "rejected": "y", "annotator": "A", "gold": [1.0, 0.0]},
            {"prompt": "q", "chosen": "x", "rejected": "y", "annotator": "B", "gold": [1.0, 0.0]}]
    rep = agreement_report(recs, panel)
    assert rep["pairs"] == 2 and rep["records"] == 2
    assert rep["bayes_optimal"] == pytest.approx((S1 + 1.0) / 2)
    assert rep["per_annotator"]["B"] == {"pairs": 1, "gold_agreement": 1.0,
                                         "bayes_optimal": 1.0, "noise_std": 0.0}
    # std of the agreement from noise alone: sqrt(s1 (1 - s1)) / 1
    assert rep["per_annotator"]["A"]["noise_std"] == pytest.approx(math.sqrt(S1 * (1 - S1)))


def _random_pairs(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.2, n).tolist(), rng.normal(0, 1.2, n).tolist()


def test_reproducible_given_the_seed():
    ga, gb = _random_pairs(200, 0)
    args = (["q"] * 200, ["a"] * 200, ["b"] * 200, ga, gb)
    first = SimulatedPanel(seed=7).label_pairs(*args)
    again = SimulatedPanel(seed=7).label_pairs(*args)
    other = SimulatedPanel(seed=8).label_pairs(*args)
    assert first == again
    assert first != other
    golds = np.random.default_rng(1).normal(size=(50, 4)).tolist()
    r1 = SimulatedPanel(seed=3).label_rankings(["q"] * 50, [list("abcd")] * 50, golds)
    r2 = SimulatedPanel(seed=3).label_rankings(["q"] * 50, [list("abcd")] * 50, golds)
    assert r1 == r2


def test_label_agreement_approaches_bayes_optimal_on_2000_pairs():
    ga, gb = _random_pairs(2000, 11)
    panel = SimulatedPanel(seed=5)  # the default panel, one careless annotator
    recs = panel.label_pairs(["q"] * 2000, ["a"] * 2000, ["b"] * 2000, ga, gb)
    rep = agreement_report(recs, panel)
    assert 0.6 < rep["bayes_optimal"] < 0.9
    # labels are independent Bernoulli draws: the agreement's std is noise_std (~0.009)
    assert abs(rep["gold_agreement"] - rep["bayes_optimal"]) <= 4 * rep["noise_std"]
    assert {r["annotator"] for r in recs} == {a.id for a in DEFAULT_ANNOTATORS}


def test_ranking_agreement_approaches_bayes_optimal():
    golds = np.random.default_rng(2).normal(0, 1.2, size=(700, 4)).tolist()
    panel = SimulatedPanel(seed=9)
    recs = panel.label_rankings(["q"] * 700, [list("abcd")] * 700, golds)
    rep = agreement_report(recs, panel)
    assert rep["pairs"] == 700 * 6
    # the 6 pairs of one ranking are correlated: allow sqrt(6) x the independent std
    assert abs(rep["gold_agreement"] - rep["bayes_optimal"]) <= 4 * math.sqrt(6) * rep["noise_std"]


def test_plackett_luce_frequencies_match_by_hand():
    # weights 1, 2, 3: P(ranking 2,1,0) = 3/6 * 2/3 = 1/3; P(0,1,2) = 1/6 * 2/5 = 1/15;
    # by Luce's axiom P(0 above 2) = 1 / (1 + 3) = 1/4
    g = [0.0, math.log(2), math.log(3)]
    panel = SimulatedPanel([Annotator("a", 1.0)], seed=0)
    n = 30000
    orders = [tuple(panel.rank(g)[0]) for _ in range(n)]
    freq = {o: c / n for o, c in Counter(orders).items()}
    tol = 4 * math.sqrt(0.25 / n)
    assert freq[(2, 1, 0)] == pytest.approx(1 / 3, abs=tol)
    assert freq[(0, 1, 2)] == pytest.approx(1 / 15, abs=tol)
    above = sum(o.index(0) < o.index(2) for o in orders) / n
    assert above == pytest.approx(0.25, abs=tol)


def test_careless_and_perfect_annotators():
    ga, gb = _random_pairs(2000, 3)
    random_labels = SimulatedPanel([Annotator("r", 1.0, careless_rate=1.0)], seed=1).label_pairs(
        ["q"] * 2000, ["a"] * 2000, ["b"] * 2000, ga, gb)
    assert gold_agreement(random_labels) == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / 2000))
    perfect = SimulatedPanel([Annotator("p", 0.0)], seed=1)
    assert gold_agreement(perfect.label_pairs(["q"] * 2000, ["a"] * 2000, ["b"] * 2000, ga,
                                              gb)) == 1.0
    order, ann = perfect.rank([0.3, 2.0, -1.0, 1.0])
    assert order == [1, 3, 0, 2] and ann.id == "p"


def test_records_follow_design_formats():
    panel = SimulatedPanel(seed=0)
    pairs = panel.label_pairs(["Why?"], ["Because A."], ["Because B."], [1.0], [0.0])
    rec = pairs[0]
    assert set(rec) == {"prompt", "chosen", "rejected", "annotator", "gold"}
    assert rec["gold"] == ([1.0, 0.0] if rec["chosen"] == "Because A." else [0.0, 1.0])
    parsed = parse_preference(Record("sim", 1, rec))
    assert parsed.annotator == rec["annotator"]
    ranks = panel.label_rankings(["Why?"], [["x", "y", "z"]], [[0.1, 0.5, 0.2]])
    assert set(ranks[0]) == {"prompt", "responses", "ranking", "annotator", "gold"}
    assert ranks[0]["gold"] == [0.1, 0.5, 0.2] and sorted(ranks[0]["ranking"]) == [0, 1, 2]
    assert parse_ranking(Record("sim", 1, ranks[0])).ranking == ranks[0]["ranking"]


def test_panel_uses_a_scorer_when_no_gold_is_given():
    class LengthScorer:  # stands in for GoldScorer: longer is better
        def __init__(self):
            self.calls = []

        def score(self, prompts, responses, categories=None, ended=None):
            self.calls.append((list(prompts), list(responses), categories, ended))
            return [float(len(r)) for r in responses]

    scorer = LengthScorer()
    panel = SimulatedPanel([Annotator("p", 0.0)], seed=0, scorer=scorer)
    recs = panel.label_rankings(["p1", "p2"], [["aa", "a", "aaa"], ["b", "bb"]],
                                categories=["helpful", "harmful"],
                                ended=[[True, False, True], [True, True]])
    assert [r["ranking"] for r in recs] == [[2, 0, 1], [1, 0]]
    assert recs[0]["gold"] == [2.0, 1.0, 3.0]
    prompts, _, cats, ended = scorer.calls[0]
    assert prompts == ["p1"] * 3 + ["p2"] * 2
    assert cats == ["helpful"] * 3 + ["harmful"] * 2
    assert ended == [True, False, True, True, True]
    pairs = panel.label_pairs(["p"], ["short"], ["much longer"])
    assert pairs[0]["chosen"] == "much longer" and pairs[0]["gold"] == [11.0, 5.0]
    with pytest.raises(UserError, match="no scorer"):
        SimulatedPanel(seed=0).label_pairs(["p"], ["a"], ["b"])


def test_config_and_validation():
    panel = SimulatedPanel.from_config({"gold_scale": 2.0, "assignment": "round_robin",
                                        "annotators": [{"id": "x", "temperature": 0.5},
                                                       {"id": "y", "careless_rate": 0.1}]}, seed=1)
    assert panel.gold_scale == 2.0
    assert [a.id for a in panel.annotators] == ["x", "y"]
    assert panel.by_id["y"] == Annotator("y", 1.0, 0.1)
    assert [panel.pick().id for _ in range(3)] == ["x", "y", "x"]
    default = SimulatedPanel.from_config(None)
    assert default.annotators == list(DEFAULT_ANNOTATORS)
    assert sum(a.careless_rate > 0 for a in default.annotators) == 1
    assert PanelConfig().gold_scale == 1.0
    with pytest.raises(UserError, match="unknown field"):
        SimulatedPanel.from_config({"gold_scael": 2})
    with pytest.raises(UserError, match="unknown field"):
        SimulatedPanel.from_config({"annotators": [{"id": "x", "temp": 1}]})
    with pytest.raises(UserError, match="temperature"):
        Annotator("x", temperature=-1)
    with pytest.raises(UserError, match="careless_rate"):
        Annotator("x", careless_rate=1.5)
    with pytest.raises(UserError, match="unique"):
        SimulatedPanel([Annotator("x"), Annotator("x")])
    with pytest.raises(UserError, match="gold_scale"):
        SimulatedPanel(gold_scale=0)
    with pytest.raises(UserError, match="unknown annotator"):
        SimulatedPanel().compare(1.0, 0.0, annotator="nobody")


def test_label_items_by_aspect():
    """--aspects helpful,harmless: rankings by the helpful part of gold on every prompt;
    harmlessness asked only of the pairs whose harmless part differs (by hand)."""
    from alignkit.feedback.labelling import label_items
    from alignkit.judges.gold import GoldScorer

    class Scored(GoldScorer):  # hand-set components instead of the models
        table = {"refuse": (3.0, 1.0), "comply": (2.0, -2.5), "comply well": (4.0, -2.5),
                 "a": (1.0, 0.0), "b": (3.0, 0.0), "c": (2.0, 0.0)}

        def components(self, prompts, responses, categories=None, ended=None):
            return [{"total": self.table[r][0], "category_term": self.table[r][1],
                     "offensive": 0.0} for r in responses]

    items = [{"prompt": "bomb?", "responses": ["refuse", "comply", "comply well"],
              "category": "harmful"},
             {"prompt": "egg?", "responses": ["a", "b", "c"], "category": "helpful"}]
    panel = SimulatedPanel([Annotator("exact", 0.0)], seed=0)
    records = label_items(items, Scored(), panel, 1, aspects=("helpful", "harmless"))
    ranked = [r for r in records if r["aspect"] == "helpful"]
    # helpful = total - category term: refuse 2.0, comply 4.5, comply well 6.5; a 1, b 3, c 2
    assert [r["ranking"] for r in ranked] == [[2, 1, 0], [1, 2, 0]]
    assert ranked[0]["gold"] == [2.0, 4.5, 6.5] and ranked[0]["category"] == "harmful"
    pairs = [r for r in records if r["aspect"] == "harmless"]
    assert [(p["chosen"], p["rejected"], p["gold"]) for p in pairs] == [
        ("refuse", "comply", [1.0, -2.5]), ("refuse", "comply well", [1.0, -2.5])]
    assert {p["category"] for p in pairs} == {"harmful"}  # the benign prompt has no such pair
    assert parse_preference(Record("sim", 1, pairs[0])).aspect == "harmless"
    assert parse_ranking(Record("sim", 1, ranked[0])).aspect == "helpful"
    # without aspects: one overall ranking per prompt and no tag
    plain = label_items(items, Scored(), panel, 1)
    assert [r["ranking"] for r in plain] == [[2, 0, 1], [1, 2, 0]]  # by the totals
    assert all("aspect" not in r for r in plain)
    # the agreement report splits the labels by aspect: 3 ranked pairs per prompt, 2 harmless
    report = agreement_report(records, panel.annotators, 1.0)
    assert {a: r["pairs"] for a, r in report["per_aspect"].items()} == {"harmless": 2,
                                                                        "helpful": 6}
    assert report["per_aspect"]["harmless"]["gold_agreement"] == 1.0
    assert "per_aspect" not in agreement_report(plain, panel.annotators, 1.0)


def test_label_items_labels_a_repeated_response_once_and_skips_a_prompt_with_one():
    """A converged policy writes the same answer twice (the demo's round 2 on seed 1 did, and
    the reward stage refused the rankings): each distinct response is ranked once, its ``ended``
    flag kept beside it, and a prompt with one distinct response is not labelled."""
    from alignkit.feedback.labelling import distinct_responses, label_items
    from alignkit.judges.gold import GoldScorer

    class Scored(GoldScorer):  # gold by hand: the length of the answer
        def score(self, prompts, responses, categories=None, ended=None):
            return [float(len(r)) for r in responses]

    items = [{"prompt": "p1", "responses": ["bb", "a", "bb", "ccc"],
              "ended": [True, False, True, True]},
             {"prompt": "p2", "responses": ["same", "same"]},
             {"prompt": "p3", "responses": ["x", "yy"]}]
    kept, repeats, alone = distinct_responses(items)
    assert (repeats, alone) == (2, 1)
    assert kept[0] == {"prompt": "p1", "responses": ["bb", "a", "ccc"],
                       "ended": [True, False, True]}
    assert kept[1] is items[2]  # nothing to drop: the same item
    panel = SimulatedPanel([Annotator("exact", 0.0)], seed=0)
    records = label_items(items, Scored(), panel, 2)
    assert [r["prompt"] for r in records] == ["p1", "p3", "p1", "p3"]
    first = records[0]
    assert first["responses"] == ["bb", "a", "ccc"] and first["gold"] == [2.0, 1.0, 3.0]
    assert first["ranking"] == [2, 0, 1]  # the exact annotator: by gold
    for record in records:  # every ranking parses: no identical responses left
        parse_ranking(Record("sim", 1, record))
    pairs = label_items(items, Scored(), panel, 1, fmt="pairs")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("bb", "a"), ("yy", "x")]


def test_rankings_without_some_responses_keep_the_order_of_the_rest():
    """The demo's DPO rankings: the base model's answers taken out of each ranking, the order
    of the others and their per-response lists kept; a pair loses when either side goes, a
    ranking left with one answer goes."""
    from alignkit.feedback.labelling import without_responses

    records = [
        {"prompt": "p1", "responses": ["a", "b", "base", "c"], "ranking": [2, 0, 3, 1],
         "gold": [3.0, 1.0, 4.0, 2.0], "annotator": "sim-0", "category": "helpful"},
        {"prompt": "p2", "responses": ["x", "base2"], "ranking": [1, 0], "gold": [0.0, 1.0]},
        {"prompt": "p3", "responses": ["u", "v"], "ranking": [0, 1], "gold": [1.0, 0.0]},
        {"prompt": "p1", "chosen": "a", "rejected": "base"},
        {"prompt": "p1", "chosen": "c", "rejected": "b"},
    ]
    left_out = {"p1": ["base"], "p2": ["base2"]}
    kept = without_responses(records, left_out)
    assert kept == [
        {"prompt": "p1", "responses": ["a", "b", "c"], "ranking": [0, 2, 1],
         "gold": [3.0, 1.0, 2.0], "annotator": "sim-0", "category": "helpful"},
        records[2],
        records[4],
    ]
    for record in kept[:2]:
        parse_ranking(Record("sim", 1, record))
    assert records[0]["responses"] == ["a", "b", "base", "c"]  # the input is left as it was


def test_length_bias_is_what_the_annotator_sees():
    biased = Annotator("v", temperature=1.0, length_bias=0.5)
    # 0.5 gold units per 10 words: 10 words +0.5, 30 words +1.5
    assert biased.seen([1.0, 2.0], [10, 30]) == pytest.approx([1.5, 3.5])
    assert Annotator("u").seen([1.0, 2.0]) == [1.0, 2.0]  # no bias: no word counts needed
    with pytest.raises(ValueError, match="word count"):
        biased.seen([1.0, 2.0])
    assert response_words("one two  three\nfour") == 4
    assert response_words([{"role": "user", "content": "a b"},
                           {"role": "assistant", "content": "x y z"}]) == 3
    # a perfect annotator (T = 0) ranks by gold + bias: gold 2 with 5 words sees 2.25, gold 1
    # with 40 words sees 3.0, so the longer, gold-worse answer wins
    perfect = SimulatedPanel([Annotator("p", 0.0, length_bias=0.5)], seed=0)
    assert perfect.rank([2.0, 1.0], words=[5, 40])[0] == [1, 0]
    assert perfect.compare(2.0, 1.0, words=[5, 40])[0] is False
    assert SimulatedPanel([Annotator("p", 0.0)], seed=0).rank([2.0, 1.0])[0] == [0, 1]
    recs = perfect.label_pairs(["q"], ["short answer"], [" ".join(["w"] * 40)], [2.0], [1.0])
    assert recs[0]["chosen"].startswith("w w") and recs[0]["gold"] == [1.0, 2.0]
    # every annotator gets the bias; the careless rate from label noise is kept
    panel = with_length_bias(with_label_noise(DEFAULT_ANNOTATORS, 0.25), 0.3)
    assert [a.length_bias for a in panel] == [0.3] * len(DEFAULT_ANNOTATORS)
    assert panel[0].careless_rate == pytest.approx(0.5)
    assert with_length_bias(DEFAULT_ANNOTATORS, 0.0) == list(DEFAULT_ANNOTATORS)
    with pytest.raises(UserError, match="finite"):
        with_length_bias(DEFAULT_ANNOTATORS, float("nan"))
    with pytest.raises(UserError, match="length_bias"):
        Annotator("x", length_bias=float("inf"))
    cfg = SimulatedPanel.from_config({"annotators": [{"id": "x", "length_bias": 0.2}]})
    assert cfg.by_id["x"] == Annotator("x", 1.0, 0.0, 0.2)
    with pytest.raises(UserError, match="annotator 0: length_bias must be a number"):
        SimulatedPanel.from_config({"annotators": [{"id": "x", "length_bias": "long"}]})


def test_ceiling_and_longer_share_with_a_length_bias_by_hand():
    ann = {"V": Annotator("V", 1.0, length_bias=0.5)}
    ten, two = " ".join(["w"] * 10), "w w"
    records = [
        # chosen: gold 1.0, 10 words -> sees 1.5; rejected: gold 1.2, 2 words -> sees 1.3;
        # the annotator sees the chosen as better by 0.2: P = s(0.2), against gold
        {"prompt": "q", "chosen": ten, "rejected": two, "annotator": "V", "gold": [1.0, 1.2]},
        # a ranking 0 > 1 of gold [0.0, 1.0] and words [10, 2]: sees 0.5 vs 1.1, the label is
        # against what it sees: P(it picks the seen-better 1) = s(0.6)
        {"prompt": "q", "responses": [ten, two], "ranking": [0, 1], "annotator": "V",
         "gold": [0.0, 1.0]},
    ]
    s02, s06 = sigmoid(0.2), sigmoid(0.6)
    assert pair_correct_probabilities(records, ann) == pytest.approx([s02, s06])
    assert bayes_optimal_accuracy(records, ann) == pytest.approx((s02 + s06) / 2)
    assert gold_agreement(records) == 0.0
    # both labels chose the longer answer; gold prefers the shorter one in both
    assert longer_chosen_share(records) == {"pairs": 2, "labels": 1.0, "gold": 0.0}
    same = [{"prompt": "q", "chosen": "a b", "rejected": "c d", "annotator": "V",
             "gold": [1.0, 0.0]}]
    assert longer_chosen_share(same)["pairs"] == 0
    assert agreement_report(records, ann)["longer_chosen"]["labels"] == 1.0


def test_a_length_biased_panel_prefers_longer_answers_as_predicted():
    ga, gb = _random_pairs(2000, 13)
    rng = np.random.default_rng(3)
    words_a, words_b = rng.integers(5, 40, 2000), rng.integers(5, 40, 2000)
    texts_a = [" ".join(["w"] * int(n)) for n in words_a]
    texts_b = [" ".join(["w"] * int(n)) for n in words_b]
    plain = SimulatedPanel(seed=5)
    biased = SimulatedPanel(with_length_bias(DEFAULT_ANNOTATORS, 1.0), seed=5)
    unbiased = agreement_report(plain.label_pairs(["q"] * 2000, texts_a, texts_b, ga, gb), plain)
    recs = biased.label_pairs(["q"] * 2000, texts_a, texts_b, ga, gb)
    rep = agreement_report(recs, biased)
    # the labels agree with what the annotators see as often as the ceiling predicts ...
    seen = [(ga[i] + 0.1 * words_a[i], gb[i] + 0.1 * words_b[i]) for i in range(2000)]
    chose_a = [r["chosen"] == texts_a[i] for i, r in enumerate(recs)]
    hits = [1.0 if (sa > sb) == a else 0.0 for (sa, sb), a in zip(seen, chose_a)]
    assert abs(np.mean(hits) - rep["bayes_optimal"]) <= 4 * rep["noise_std"]
    # ... and with gold less often: the bias costs agreement, and pulls toward longer answers
    assert rep["gold_agreement"] < unbiased["gold_agreement"] - 0.03  # 0.691 against 0.747
    assert rep["longer_chosen"]["labels"] > unbiased["longer_chosen"]["labels"] + 0.1  # 68% : 50%
    assert rep["longer_chosen"]["gold"] == unbiased["longer_chosen"]["gold"]
