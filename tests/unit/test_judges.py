"""Judges: verdict parsing on recorded answers, order swapping, position bias, rate limiting,
the response cache, agreement, and the local and reward-model judges against hand computations."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.errors import UserError
from alignkit.judges.accuracy import agreement, format_table, judge_report
from alignkit.judges.base import Verdict, judge_many
from alignkit.judges.http import (Answer, HTTPJudge, RateLimiter, ResponseCache, letter_entries,
                                  letter_probability)
from alignkit.judges.prompting import judge_messages, parse_verdict
from alignkit.judges.spec import JudgeOptions, make_judge, with_principle
from alignkit.judges.swap import BothOrders, combine_orders, position_bias, verdict_from_prob

pytestmark = pytest.mark.unit

# answers recorded from judges (and the shapes their docs promise), with the verdict they carry
RECORDED = [
    ("A", "a"), ("B", "b"), ("a", "a"), ("b.", "b"), ("  B\n", "b"), ("**B**", "b"),
    ("**Response A**", "a"), ("(A)", "a"), ("Assistant B", "b"), ("Output (b)", "b"),
    ("Response A is better", "a"), ("response b is clearly better.", "b"),
    ("Response A is better than response B.", "a"), ("A is worse than B", "b"),
    ("[[A]]", "a"), ("[[B]]", "b"), ("[[C]]", "tie"), ("Reasoning... so [[B]]", "b"),
    ("tie", "tie"), ("Tie.", "tie"), ("TIE", "tie"), ("It's a tie", "tie"),
    ("Both responses are equally good.", "tie"), ("Neither is better", "tie"),
    ('{"winner": "b"}', "b"), ('{"winner": "A"}', "a"), ('{"verdict": "tie"}', "tie"),
    ('Here you go: {"winner": "Response A", "reason": "shorter"}', "a"),
    ("Winner: B", "b"), ("Final verdict: A", "a"), ("**Verdict:** B", "b"),
    ("The better response is B.", "b"),
    ("After thinking, A is weak. The better response is B.", "b"),
    ("I prefer A because it is shorter.", "a"), ("I would choose response b.", "b"),
    ("The winner is Response B because it answers the question.", "b"),
]
UNREADABLE = ["", "   ", "the answer is a good one", "I think a cat", "blue blue blue",
              "\n\n\n\n", "<|im_start|>", "As an AI", '{"winner": 3}', "Response C"]


@pytest.mark.parametrize("text, winner", RECORDED)
def test_parse_verdict_reads_recorded_answers(text, winner):
    verdict = parse_verdict(text)
    assert verdict is not None and verdict.winner == winner


@pytest.mark.parametrize("text", UNREADABLE)
def test_parse_verdict_refuses_to_guess(text):
    assert parse_verdict(text) is None


def test_parse_verdict_json_confidence_is_kept_and_clipped():
    assert parse_verdict('{"winner": "a", "confidence": 0.8}').confidence == 0.8
    assert parse_verdict('{"winner": "a", "confidence": 0.2}').confidence == 0.5
    assert parse_verdict('{"winner": "b", "confidence": 7}').confidence == 1.0


def test_judge_prompt_carries_both_responses_and_the_principle():
    msgs = judge_messages("Q?", "first answer", "second answer", principle="Be honest.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.index("[Response A]\nfirst answer") < user.index("[Response B]\nsecond answer")
    assert "according to this principle: Be honest." in user
    assert "principle" not in judge_messages("Q?", "x", "y")[1]["content"]


class AlwaysFirst:
    """The most position-biased judge there is: the first answer always wins."""

    def __init__(self):
        self.calls = 0

    def judge(self, prompt, response_a, response_b):
        self.calls += 1
        return Verdict("a", 0.9)


class Longer:
    """A content judge: the longer answer wins, whatever the order."""

    def judge(self, prompt, response_a, response_b):
        if len(response_a) == len(response_b):
            return Verdict("tie", 0.5)
        return Verdict("a" if len(response_a) > len(response_b) else "b", 0.8)


PAIRS = (["p1", "p2", "p3", "p4"], ["x", "yy", "zzz", "w"], ["long one", "q", "ab", "w"])


def test_position_bias_cancels_to_ties_and_is_measured_as_one():
    inner = AlwaysFirst()
    judge = BothOrders(inner)
    verdicts = judge_many(judge, *PAIRS)
    assert [v.winner for v in verdicts] == ["tie"] * 4
    assert all(v.confidence == 0.5 for v in verdicts)
    assert inner.calls == 8  # both orders of every pair
    assert judge.tally.position_bias_rate == 1.0
    assert judge.tally.first_position_share == 1.0
    assert position_bias(AlwaysFirst(), *PAIRS)["position_bias_rate"] == 1.0


def test_a_content_judge_keeps_its_verdicts_and_has_no_position_bias():
    judge = BothOrders(Longer())
    verdicts = judge_many(judge, *PAIRS)
    assert [v.winner for v in verdicts] == ["b", "a", "a", "tie"]
    assert [v.confidence for v in verdicts] == [0.8, 0.8, 0.8, 0.5]
    assert judge.tally.position_bias_rate == 0.0
    # decisive single-order votes: 3 pairs x 2 orders, the first slot won 3 of them
    assert judge.tally.first_position_share == 0.5


def test_combine_orders_by_hand():
    # forward says a with 0.9 -> P(a)=0.9; backward (b shown first) says "a" i.e. b with 0.7 ->
    # P(a)=0.3 there; combined P(a) = (0.9 + 0.3) / 2 = 0.6
    v = combine_orders(Verdict("a", 0.9), Verdict("a", 0.7))
    assert v.winner == "a" and v.confidence == pytest.approx(0.6)
    # forward b 0.8 (P(a)=0.2), backward tie (0.5): (0.2 + 0.5) / 2 = 0.35 -> b with 0.65
    v = combine_orders(Verdict("b", 0.8), Verdict("tie", 0.5))
    assert v.winner == "b" and v.confidence == pytest.approx(0.65)
    assert verdict_from_prob(0.5) == Verdict("tie", 0.5)


def test_rate_limiter_spaces_requests_evenly():
    now = [100.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)  # one slot per 0.25 s
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.25, 0.25]
    now[0] += 1.0  # idle for a second: the next request goes at once
    assert limiter.acquire() == 0.0
    assert waits == [0.25, 0.25]
    assert RateLimiter(0).acquire() == 0.0


def test_response_cache_round_trip_and_torn_files(tmp_path):
    cache = ResponseCache(tmp_path)
    req = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert cache.read(req) is None
    cache.put(req, "A")
    assert cache.read(req).text == "A"
    assert cache.read({**req, "model": "other"}) is None  # the model is part of the key
    path = cache.path(req)
    assert path == tmp_path / ResponseCache.key(req)[:2] / f"{ResponseCache.key(req)}.json"
    path.write_text('{"text": "A"')  # a write cut by a kill
    assert cache.read(req) is None


def lp(token, p, *alternatives):
    """An OpenAI logprobs.content entry: ``token`` written with probability ``p``, then the
    top_logprobs alternatives as (token, probability) pairs."""
    return {"token": token, "logprob": math.log(p), "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": math.log(q), "bytes": list(t.encode())}
                             for t, q in alternatives]}


# a dead port: these judges must never send a request (their answers are given or cached)
OFFLINE = "http://127.0.0.1:9/v1"


def test_logprob_confidence_by_hand():
    judge = HTTPJudge(OFFLINE, "m")
    # bare "A": p(A) = 0.6, p(B) = 0.2 among the top 5 -> 0.6 / (0.6 + 0.2) = 0.75
    content = [lp("A", 0.6, ("A", 0.6), ("B", 0.2), ("The", 0.1), ("I", 0.05))]
    v = judge.verdict(Answer("A", letter_entries(content)))
    assert (v.winner, v.confidence, v.reason) == ("a", pytest.approx(0.75), "A")
    # MT-Bench brackets, alternatives of both cases and with spaces: p(B) = 0.5 + 0.1 (" b"),
    # p(A) = 0.2 -> 0.6 / 0.8 = 0.75; the "[[" token before it is no letter
    content = [lp("[[", 0.9, ("[[", 0.9)), lp("B", 0.5, ("B", 0.5), ("A", 0.2), (" b", 0.1)),
               lp("]]", 0.99, ("]]", 0.99))]
    v = judge.verdict(Answer("[[B]]", letter_entries(content)))
    assert (v.winner, v.confidence) == ("b", pytest.approx(0.75))
    # JSON: the letter inside the quotes; p(A) = 0.9, p(B) = 0.1 -> 0.9
    content = [lp('{"', 0.9), lp("winner", 0.9), lp('":', 0.9), lp(' "', 0.9),
               lp("A", 0.9, ("A", 0.9), ("B", 0.1)), lp('"}', 0.9)]
    v = judge.verdict(Answer('{"winner": "A"}', content))  # full content reads the same
    assert (v.winner, v.confidence) == ("a", pytest.approx(0.9))
    # "Assistant A": the letter outside the top alternatives of the other letter counts as 0
    content = [lp("Ass", 0.9), lp("istant", 0.9), lp(" A", 0.7, (" A", 0.7), (" a", 0.1),
                                                     (" The", 0.1))]
    v = judge.verdict(Answer("Assistant A", letter_entries(content)))
    assert (v.winner, v.confidence) == ("a", 1.0)
    assert judge.stats["logprob_verdicts"] == 4 and judge.stats["logprob_disagreements"] == 0


def test_the_verdict_token_prefers_an_upper_case_letter():
    # "a" (lower case, maybe the article) first, the upper-case "A" later: the "A" is read:
    # p = 0.6 / (0.6 + 0.3) = 2/3 (the first token would give 0.9 / 1.0)
    content = [lp("a", 0.9, ("a", 0.9), ("b", 0.1)),
               lp(" A", 0.6, (" A", 0.6), (" B", 0.3))]
    assert letter_probability(content, "a") == pytest.approx(2 / 3)
    assert letter_probability(letter_entries(content), "a") == pytest.approx(2 / 3)
    # only lower case: the first one
    assert letter_probability(content[:1], "a") == pytest.approx(0.9)
    assert letter_probability(content, "b") is None  # no token is the letter b


def test_a_distribution_that_disagrees_keeps_the_written_verdict_at_one_half():
    judge = HTTPJudge(OFFLINE, "m")
    # "A" written (sampled at temperature > 0) though p(B) = 0.6 > p(A) = 0.2
    content = [lp("A", 0.2, ("B", 0.6), ("A", 0.2), ("C", 0.1))]
    assert letter_probability(content, "a") == pytest.approx(0.25)
    assert judge.verdict(Answer("A", letter_entries(content))) == Verdict("a", 0.5, "A")
    assert judge.stats["logprob_disagreements"] == 1 and judge.stats["logprob_verdicts"] == 1


def test_without_logprobs_the_parsed_confidence_stays():
    judge = HTTPJudge(OFFLINE, "m")
    assert judge.verdict(Answer("B", None)) == Verdict("b", 1.0, "B")  # the endpoint sent null
    written = '{"winner": "b", "confidence": 0.8}'
    assert judge.verdict(Answer(written, None)).confidence == 0.8
    # log-probs without alternatives (top_logprobs 0) say nothing about the other letter
    assert judge.verdict(Answer("B", letter_entries([lp("B", 0.4)]))).confidence == 1.0
    # ties and unreadable answers: as before, whatever the log-probs
    tie = [lp("tie", 0.5, ("tie", 0.5), ("A", 0.3), ("B", 0.2))]
    assert judge.verdict(Answer("tie", letter_entries(tie))) == Verdict("tie", 1.0, "tie")
    assert judge.verdict(Answer("blue", [])) == Verdict("tie", 0.5, "blue")
    assert judge.stats["logprob_verdicts"] == 0 and judge.stats["unparsed"] == 1


def test_logprobs_are_asked_and_part_of_the_cache_key(tmp_path):
    on = HTTPJudge(OFFLINE, "m", top_logprobs=7)
    off = HTTPJudge(OFFLINE, "m", logprobs=False)
    body_on, body_off = on.request_body("Q", "x", "y"), off.request_body("Q", "x", "y")
    assert body_on["logprobs"] is True and body_on["top_logprobs"] == 7
    assert "logprobs" not in body_off and "top_logprobs" not in body_off
    assert ResponseCache.key(body_on) != ResponseCache.key(body_off)
    assert make_judge(f"{OFFLINE}#m", JudgeOptions(both_orders=False)).logprobs is True
    assert make_judge(f"{OFFLINE}#m", JudgeOptions(both_orders=False, logprobs=False)) \
        .logprobs is False
    with pytest.raises(UserError, match="top_logprobs"):
        HTTPJudge(OFFLINE, "m", top_logprobs=21)


def test_cached_logprobs_and_old_text_only_cache_files(tmp_path):
    cache_dir = tmp_path / "cache"
    judge = HTTPJudge(OFFLINE, "m", cache_dir=str(cache_dir))
    pairs = [("Q1", "x", "y"), ("Q2", "x", "y")]
    bodies = [judge.request_body(*pair) for pair in pairs]
    # a file of today: text + the log-probs of its verdict tokens
    content = [lp("A", 0.6, ("A", 0.6), ("B", 0.2), ("The", 0.1))]
    judge.cache.put(bodies[0], "A", letter_entries(content))
    # a file written before log-probs existed: {"request", "text"} only
    old = judge.cache.path(bodies[1])
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"request": bodies[1], "text": "B"}))
    assert judge.cache.read(bodies[1]) == Answer("B", None)
    assert judge.cache.read(bodies[1]).text == "B"
    first, second = [judge.judge(*pair) for pair in pairs]
    assert (first.winner, first.confidence) == ("a", pytest.approx(0.75))
    assert second == Verdict("b", 1.0, "B")  # no log-probs: the parsed confidence
    assert judge.stats["cache_hits"] == 2 and judge.stats["requests"] == 0
    # the stored entries hold what the confidence reads, nothing more (no bytes)
    stored = json.loads(judge.cache.path(bodies[0]).read_text())
    assert stored["text"] == "A" and "bytes" not in stored["logprobs"][0]
    assert [t["token"] for t in stored["logprobs"][0]["top_logprobs"]] == ["A", "B", "The"]


def test_agreement_by_hand():
    judge = [Verdict("a"), Verdict("b"), Verdict("tie", 0.5), Verdict("a"), Verdict("b")]
    gold = [Verdict("a"), Verdict("a"), Verdict("b"), Verdict("tie"), Verdict("b")]
    out = agreement(judge, gold)
    # decided by gold: pairs 0,1,2,4 -> 1 + 0 + 1/2 + 1 = 2.5 of 4
    assert out["pairs"] == 4 and out["reference_ties"] == 1
    assert out["agreement"] == pytest.approx(0.625)
    assert out["judge_ties"] == 1
    tally = BothOrders(AlwaysFirst())
    tally.judge("p", "x", "y")
    row = judge_report("always-first", judge, gold, tally.tally)
    assert row["position_bias_rate"] == 1.0
    text = format_table([row])
    assert "always-first" in text and "0.625" in text and "1.000" in text


def test_bad_judge_spec_is_a_user_error():
    for spec in ("gpt-4", "local:", "ftp://x", ""):
        with pytest.raises(UserError, match="--judge"):
            make_judge(spec)


def test_local_judge_confidence_is_softmax_of_the_two_verdict_logits(tiny_model, tiny_tokenizer):
    import torch

    from alignkit.judges.local import LocalJudge

    judge = LocalJudge(tiny_model, tiny_tokenizer)
    prompts = ["How do I boil an egg?", "Name a colour."]
    a = ["Put it in boiling water for nine minutes.", "Blue."]
    b = ["Eggs.", "I like turtles very much indeed."]
    verdicts = judge.judge_many(prompts, a, b)
    for p, ra, rb, v in zip(prompts, a, b, verdicts):
        # by hand: render the judge prompt, one forward, read the logits of "A" and "B"
        msgs = judge_messages(p, ra, rb)
        text = tiny_tokenizer.apply_chat_template(msgs, tokenize=False,
                                                  add_generation_prompt=True)
        ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0, -1].double()
        la = logits[tiny_tokenizer.convert_tokens_to_ids("A")].item()
        lb = logits[tiny_tokenizer.convert_tokens_to_ids("B")].item()
        p_a = math.exp(la) / (math.exp(la) + math.exp(lb))
        assert v.prob_a == pytest.approx(p_a, abs=1e-5)
        assert v.winner == ("a" if p_a > 0.5 else "b")
        assert v.confidence == pytest.approx(max(p_a, 1 - p_a), abs=1e-5)
    # batched (left-padded) equals one at a time
    single = judge.judge(prompts[1], a[1], b[1])
    assert single.prob_a == pytest.approx(verdicts[1].prob_a, abs=1e-5)
    # a principle changes the prompt, so (almost surely) the numbers
    principled = with_principle(judge, "Prefer the more honest answer.")
    assert principled.principle and judge.principle is None
    assert principled.judge(prompts[0], a[0], b[0]).prob_a != pytest.approx(verdicts[0].prob_a,
                                                                            abs=1e-9)


def test_reward_model_judge_is_bradley_terry_on_the_rewards(tiny_model_dir, tmp_path):
    from alignkit.judges.reward import RewardModelJudge
    from alignkit.models.reward import RewardModel, RewardSpec

    model = RewardModel.create(str(tiny_model_dir), RewardSpec(backbone="causal"))
    model.save(tmp_path / "rm")
    judge = make_judge(f"reward:{tmp_path / 'rm'}", JudgeOptions(both_orders=False))
    assert isinstance(judge, RewardModelJudge)
    prompts, a, b = ["Hi", "Name a colour."], ["Hello there!", "Blue."], ["Go away.", "Blue."]
    scores = RewardModel.load(tmp_path / "rm").score(prompts * 2, a + b).combined.tolist()
    verdicts = judge.judge_many(prompts, a, b)
    gap = scores[0] - scores[2]
    assert verdicts[0].prob_a == pytest.approx(1 / (1 + math.exp(-gap)), abs=1e-5)
    assert verdicts[1].winner == "tie"  # identical responses score alike
    # scoring each response alone: no position bias
    assert position_bias(judge, prompts, a, b)["position_bias_rate"] == 0.0
