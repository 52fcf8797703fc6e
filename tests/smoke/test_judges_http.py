"""The HTTP judge against a real ``alignkit serve`` process on loopback: verdicts parsed from
real (garbage) answers of a tiny random model, the on-disk cache counted by the server's own
request counter, both orders, retries over a dead port and a server still loading, no retry on
a 4xx."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from alignkit.judges.base import Verdict
from alignkit.judges.http import HTTPJudge, JudgeError
from alignkit.judges.prompting import parse_verdict
from alignkit.judges.spec import JudgeOptions, make_judge
from tests.smoke.serve_process import get_json, shared_server

pytestmark = pytest.mark.smoke

PAIRS = [("How do I boil an egg?", "Put it in boiling water for nine minutes.", "Eggs."),
         ("Name a colour.", "Blue.", "I like turtles."),
         ("What is 2 + 2?", "4", "It is four, of course.")]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    return shared_server(tiny_model_dir)


def completions(url):
    return get_json(url + "/stats")["chat_completions"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_verdicts_from_real_answers_and_the_cache(server, tmp_path):
    judge = HTTPJudge(server, "tiny-policy", cache_dir=str(tmp_path / "cache"), max_tokens=6)
    before = completions(server)
    verdicts = [judge.judge(*pair) for pair in PAIRS]
    assert completions(server) - before == 3
    unparsed = 0
    for v in verdicts:
        parsed = parse_verdict(v.reason)  # reason holds the model's raw answer
        if parsed is None:  # a random model's garbage: a coin-flip tie, counted
            unparsed += 1
            assert v == Verdict("tie", 0.5, v.reason)
        else:
            assert v.winner == parsed.winner
    assert judge.stats["unparsed"] == unparsed
    assert judge.stats["requests"] == 3 and judge.stats["cache_hits"] == 0
    # the same questions again: answered from the cache, not one request reaches the server
    again = [judge.judge(*pair) for pair in PAIRS]
    assert again == verdicts
    assert completions(server) - before == 3
    assert judge.stats["cache_hits"] == 3
    # a new judge (a new process would be the same) reads the cache from disk
    fresh = HTTPJudge(server, "tiny-policy", cache_dir=str(tmp_path / "cache"), max_tokens=6)
    assert [fresh.judge(*pair) for pair in PAIRS] == verdicts
    assert completions(server) - before == 3 and fresh.stats["requests"] == 0
    # a different judge model is a different cache key (the server then rejects the name)
    with pytest.raises(JudgeError, match="404"):
        HTTPJudge(server, "other", cache_dir=str(tmp_path / "cache")).judge(*PAIRS[0])


def test_both_orders_ask_twice_per_pair(server, tmp_path):
    judge = make_judge(f"{server}#tiny-policy", JudgeOptions(cache_dir=None, max_tokens=4))
    before = completions(server)
    verdicts = judge.judge_many([p for p, _, _ in PAIRS], [a for _, a, _ in PAIRS],
                                [b for _, _, b in PAIRS])
    assert completions(server) - before == 6
    assert len(verdicts) == 3 and judge.tally.pairs == 3
    assert 0.0 <= judge.tally.position_bias_rate <= 1.0


def test_four_hundreds_are_not_retried(server):
    judge = HTTPJudge(server, "no-such-model", retries=5, backoff=0.01)
    with pytest.raises(JudgeError, match="HTTP 404"):
        judge.judge(*PAIRS[0])
    assert judge.stats["requests"] == 1 and judge.stats["retries"] == 0


def test_a_dead_port_is_retried_then_reported():
    judge = HTTPJudge(f"http://127.0.0.1:{free_port()}/v1", "x", retries=2, backoff=0.01)
    with pytest.raises(JudgeError, match="no answer after 3 attempt"):
        judge.judge(*PAIRS[0])
    assert judge.stats["requests"] == 3 and judge.stats["retries"] == 2


def test_retries_wait_for_a_server_that_is_starting(tiny_model_dir):
    """Ask before the server is up: refused connections, then 503s while the model loads,
    then an answer -- all over real sockets."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", "serve", "--model",
                             str(tiny_model_dir), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        judge = HTTPJudge(f"http://127.0.0.1:{port}/v1", "", retries=60, backoff=0.2,
                          max_backoff=0.5, max_tokens=4)
        verdict = judge.judge(*PAIRS[1])
        assert isinstance(verdict, Verdict)
        assert judge.stats["retries"] >= 1  # python + torch take seconds to start
        assert judge.stats["requests"] == judge.stats["retries"] + 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
