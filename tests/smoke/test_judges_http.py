"""The HTTP judge against a real ``alignkit serve`` process on loopback: verdicts parsed from
real (garbage) answers of a tiny random model, the on-disk cache counted by the server's own
request counter, both orders, retries over a dead port and a server still loading, no retry on
a 4xx; confidences from the token log-probs of a tiny model whose head was fitted to answer "A"
or "B", checked against the model's own logits; and the fallback for an endpoint that rejects
``logprobs``, retries honouring ``Retry-After``, the rate limit, malformed answers and the API
key (stdlib HTTP servers on loopback standing in for third-party endpoints)."""

from __future__ import annotations

import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignkit.judges.base import Verdict
from alignkit.judges.http import HTTPJudge, JudgeError
from alignkit.judges.prompting import judge_messages, parse_verdict
from alignkit.judges.spec import JudgeOptions, make_judge
from tests.smoke.serve_process import get_json, serve_process, shared_server

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
    judge = HTTPJudge(server, "no-such-model", retries=5)
    with pytest.raises(JudgeError, match="HTTP 404"):
        judge.judge(*PAIRS[0])
    assert judge.stats["requests"] == 1 and judge.stats["retries"] == 0


def test_a_dead_port_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = HTTPJudge(url, "x", retries=2)
    with pytest.raises(JudgeError, match="no answer after 3 attempt") as refused:
        judge.judge(*PAIRS[0])
    assert f"judge {url}/chat/completions" in str(refused.value)
    assert "refused" in str(refused.value).lower()
    assert judge.stats["requests"] == 3 and judge.stats["retries"] == 2


def test_retries_wait_for_a_server_that_is_starting(tiny_model_dir):
    """Ask before the server is up: refused connections, then 503s while the model loads,
    then an answer -- all over real sockets."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", "serve", "--model",
                             str(tiny_model_dir), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        judge = HTTPJudge(f"http://127.0.0.1:{port}/v1", "", retries=60, max_tokens=4)
        verdict = judge.judge(*PAIRS[1])
        assert isinstance(verdict, Verdict)
        assert judge.stats["retries"] >= 1  # python + torch take seconds to start
        assert judge.stats["requests"] == judge.stats["retries"] + 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- confidence from token log-probs ----------------------------------------------------------

# p(A) the fitted head aims at for each (pair, order): A and B both likely, neither certain
AIM = [0.8, 0.65, 0.3, 0.9, 0.55, 0.2]


def judge_prompts(tok) -> list[list[int]]:
    """The judge prompt of every pair in both orders, as the server renders it."""
    out = []
    for p, a, b in PAIRS:
        for x, y in ((a, b), (b, a)):
            text = tok.apply_chat_template(judge_messages(p, x, y), tokenize=False,
                                           add_generation_prompt=True)
            out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


@pytest.fixture(scope="module")
def letter_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with an untied LM head fitted (the backbone frozen: a few hundred steps of
    a (6, 64) x (64, V) product, fast on any CPU) so that after each judge prompt it writes "A"
    or "B" (p(A) near ``AIM``) and then EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.models.lm import hidden_states

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    letters = [tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")]

    def last_hidden(ids):
        with torch.no_grad():
            return hidden_states(model, torch.tensor([ids]), torch.ones(1, len(ids),
                                 dtype=torch.long), torch.arange(len(ids))[None])[0, -1]

    prompts = judge_prompts(tok)
    at_letter = torch.stack([last_hidden(q) for q in prompts])
    after_letter = torch.stack([last_hidden(q + [c]) for q in prompts for c in letters])
    aim = torch.tensor(AIM)
    model.config.tie_word_embeddings = False
    head = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.lm_head.weight = head
    optimizer = torch.optim.Adam([head], lr=0.05)
    for _ in range(300):
        logp = (at_letter @ head.T).log_softmax(-1)
        loss = -(aim * logp[:, letters[0]] + (1 - aim) * logp[:, letters[1]]).mean()
        loss = loss - (after_letter @ head.T).log_softmax(-1)[:, tok.eos_token_id].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("letters") / "model"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def letter_server(letter_model_dir):
    with serve_process(letter_model_dir, "--model-name", "letters") as url:
        yield url


def test_confidence_is_the_letter_probability_of_the_served_model(letter_server,
                                                                  letter_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(letter_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(letter_model_dir)).eval()
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    expected = []  # by hand: p(written letter) / (p(A) + p(B)) from the model's own logits
    for ids in judge_prompts(tok):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(),
                                     -1)
        pa, pb = math.exp(logp[a]), math.exp(logp[b])
        assert set(torch.topk(logp, 2).indices.tolist()) == {a, b}  # the fit worked
        expected.append(("a", pa / (pa + pb)) if pa > pb else ("b", pb / (pa + pb)))

    judge = HTTPJudge(letter_server, "letters", cache_dir=str(tmp_path / "cache"), max_tokens=4)
    verdicts = [judge.judge(p, x, y) for p, ra, rb in PAIRS for x, y in ((ra, rb), (rb, ra))]
    assert [v.reason for v in verdicts] == [w.upper() for w, _ in expected]  # "A", then EOS
    for v, (winner, conf) in zip(verdicts, expected):
        assert v.winner == winner
        assert v.confidence == pytest.approx(conf, abs=1e-4)
        assert 0.5 <= v.confidence <= 1.0
    assert not all(v.confidence == 1.0 for v in verdicts)
    assert judge.stats["logprob_verdicts"] == 6 and judge.stats["logprob_disagreements"] == 0
    # from the cache (no request): the same confidences
    again = HTTPJudge(letter_server, "letters", cache_dir=str(tmp_path / "cache"), max_tokens=4)
    assert [again.judge(p, x, y) for p, ra, rb in PAIRS for x, y in ((ra, rb), (rb, ra))] \
        == verdicts
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 6
    # without log-probs: the bare letters read as certain, as before
    plain = HTTPJudge(letter_server, "letters", max_tokens=4, logprobs=False)
    assert {plain.judge(*PAIRS[0]).confidence, plain.judge(*PAIRS[2]).confidence} == {1.0}


def test_both_orders_average_soft_probabilities(letter_server):
    judge = make_judge(f"{letter_server}#letters", JudgeOptions(max_tokens=4))
    verdicts = judge.judge_many([p for p, _, _ in PAIRS], [a for _, a, _ in PAIRS],
                                [b for _, _, b in PAIRS])
    probs = [v.prob_a for v in verdicts]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert not any(p in (0.0, 0.5, 1.0) for p in probs)  # hard 0 / 1/2 / 1 no longer


class _NoLogprobs(BaseHTTPRequestHandler):
    """A chat endpoint that rejects ``logprobs`` with a 400, as some servers do, and otherwise
    answers "B"; it records the bodies it got."""

    bodies: list = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if "logprobs" in body or "top_logprobs" in body:
            status, out = 400, {"error": {"message": "Unrecognized request argument supplied: "
                                          "logprobs", "type": "invalid_request_error",
                                          "param": "logprobs", "code": None}}
        else:
            status, out = 200, {"object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "B"},
                "logprobs": None, "finish_reason": "stop"}]}
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_an_endpoint_that_rejects_logprobs_is_asked_without_them(tmp_path, caplog):
    _NoLogprobs.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        judge = HTTPJudge(url, "m", cache_dir=str(tmp_path / "cache"), retries=3)
        principled = judge.with_principle("Be brief.")
        with caplog.at_level(logging.WARNING, logger="alignkit.judges"):
            first = judge.judge(*PAIRS[0])
            second = principled.judge(*PAIRS[1])
        assert first == Verdict("b", 1.0, "B") and second == Verdict("b", 1.0, "B")
        # asked with log-probs once (400, not retried), again without; then never with them
        assert [("logprobs" in b) for b in _NoLogprobs.bodies] == [True, False, False]
        assert "top_logprobs" not in _NoLogprobs.bodies[1]
        assert judge.stats["requests"] == 3 and judge.stats["retries"] == 0
        assert judge.stats["logprobs_rejected"] == 1
        assert judge.logprobs is False and principled.logprobs is False  # one switch
        warnings = [r for r in caplog.records if "rejected log-probs" in r.getMessage()]
        assert len(warnings) == 1
        # the answer is cached under the request without log-probs
        assert judge.cache.read(judge.request_body(*PAIRS[0])).text == "B"
    finally:
        server.shutdown()
        server.server_close()


# ---- a scripted third-party endpoint: retries, rate limit, errors, key -------------------------

def completion(text: str) -> dict:
    return {"object": "chat.completion", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
        "finish_reason": "stop"}]}


def failure(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class _Scripted(BaseHTTPRequestHandler):
    """Answers the n-th POST with ``script[n]`` -- (status, extra headers, JSON or raw bytes) --
    the last entry repeating; records (arrival time, headers by lower-case name, body) of
    every POST."""

    script: list = []
    asked: list = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.asked.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()},
                           body))
        status, headers, out = self.script[min(len(self.asked), len(self.script)) - 1]
        data = out if isinstance(out, bytes) else json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def scripted(*script):
    """A loopback endpoint answering with ``script``; yields its base URL (``.../v1``)."""
    _Scripted.script, _Scripted.asked = list(script), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def gaps() -> list[float]:
    times = [t for t, _, _ in _Scripted.asked]
    return [b - a for a, b in zip(times, times[1:])]


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after():
    with scripted((503, {}, failure("loading")), (429, {"Retry-After": "1.5"}, failure("slow")),
                  (200, {}, completion("A"))) as url:
        judge = HTTPJudge(url, "m", retries=3, logprobs=False)
        assert judge.judge(*PAIRS[0]) == Verdict("a", 1.0, "A")
        assert len(_Scripted.asked) == 3
        assert judge.stats["requests"] == 3 and judge.stats["retries"] == 2
        after_503, after_429 = gaps()
        assert after_503 >= 0.37  # the first backoff: 0.5 s less at most a quarter of jitter
        assert after_429 >= 1.5  # the server's Retry-After, longer than the 1 s backoff
        assert all(b == _Scripted.asked[0][2] for _, _, b in _Scripted.asked)  # the same body
    # a server error that lasts: every retry spent, then an error naming the endpoint
    with scripted((502, {"Retry-After": "0.05"}, failure("bad gateway"))) as url:
        judge = HTTPJudge(url, "m", retries=2, logprobs=False)
        with pytest.raises(JudgeError, match=r"no answer after 3 attempt\(s\) \(HTTP 502: bad "
                                             r"gateway\)") as failed:
            judge.judge(*PAIRS[0])
        assert f"judge {url}/chat/completions" in str(failed.value)
        assert len(_Scripted.asked) == 3 and judge.stats["retries"] == 2


def test_a_400_is_not_retried():
    with scripted((400, {"Retry-After": "0.05"}, failure("temperature is out of range"))) as url:
        judge = HTTPJudge(url, "m", retries=4)
        with pytest.raises(JudgeError, match="HTTP 400: temperature is out of range") as bad:
            judge.judge(*PAIRS[0])
        assert str(bad.value).startswith(f"judge {url}/chat/completions: ")
        assert len(_Scripted.asked) == 1
        assert judge.stats["requests"] == 1 and judge.stats["retries"] == 0


@pytest.mark.parametrize("answer, error", [
    (b"<html>Welcome to nginx!</html>", "the answer is not JSON"),
    ({"id": "x", "object": "list", "data": []}, "not an OpenAI chat completion"),
    ([1, 2], "not an OpenAI chat completion"),
])
def test_malformed_answers_are_a_clear_error(answer, error):
    with scripted((200, {}, answer)) as url:
        judge = HTTPJudge(url, "m", retries=3)
        with pytest.raises(JudgeError, match=error) as malformed:
            judge.judge(*PAIRS[0])
        assert str(malformed.value).startswith(f"judge {url}/chat/completions: ")
        assert len(_Scripted.asked) == 1  # the same request would get the same answer


def test_the_rate_limit_spaces_every_attempt_retries_included():
    with scripted((503, {"Retry-After": "0.01"}, failure("busy")),
                  (200, {}, completion("B"))) as url:
        judge = HTTPJudge(url, "m", rate=8, logprobs=False)  # one attempt per 0.125 s
        assert [judge.judge(*pair).winner for pair in PAIRS] == ["b", "b", "b"]
        assert judge.stats["requests"] == 4 and judge.stats["retries"] == 1
        # 3 intervals from the first arrival to the last (unlimited, they would take ~0.03 s);
        # less the first request's own connection set-up, which the later ones do not repeat
        assert len(gaps()) == 3 and sum(gaps()) >= 0.3


def test_the_api_key_comes_from_the_named_variable_and_stays_out_of_the_cache(monkeypatch,
                                                                             tmp_path):
    monkeypatch.setenv("ALIGNKIT_TEST_JUDGE_KEY", "sk-test-1234")
    with scripted((200, {}, completion("A"))) as url:
        judge = HTTPJudge(url, "m", cache_dir=str(tmp_path), api_key_env="ALIGNKIT_TEST_JUDGE_KEY")
        judge.judge(*PAIRS[0])
        monkeypatch.delenv("ALIGNKIT_TEST_JUDGE_KEY")
        HTTPJudge(url, "m", api_key_env="ALIGNKIT_TEST_JUDGE_KEY").judge(*PAIRS[0])
        (_, with_key, body), (_, without_key, _) = _Scripted.asked
    assert with_key["authorization"] == "Bearer sk-test-1234"
    assert "authorization" not in without_key
    assert body == judge.request_body(*PAIRS[0])  # what was sent is the cache key
    cached = [f.read_text() for f in tmp_path.rglob("*.json")]
    assert len(cached) == 1 and "sk-test-1234" not in cached[0]
