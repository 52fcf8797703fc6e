"""``alignkit serve`` as a real subprocess on loopback: the OpenAI schema, sampling options,
streaming, errors, and concurrent clients."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from tests.smoke.serve_process import get_json, post_json, shared_server

pytestmark = pytest.mark.smoke

HELLO = [{"role": "user", "content": "How do I boil an egg?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    return shared_server(tiny_model_dir)


def chat(url, **body):
    return post_json(url + "/chat/completions", {"messages": HELLO, **body})


def test_models_and_completion_schema(server, tiny_model_dir):
    models = get_json(server + "/models")
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-policy"]

    status, out = chat(server, max_tokens=6, temperature=0.0)
    assert status == 200
    assert out["object"] == "chat.completion" and out["model"] == "tiny-policy"
    assert out["id"].startswith("chatcmpl-")
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["logprobs"] is None  # not asked
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    # usage: the prompt is the chat template rendering, counted by the model's own tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rendered = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tok(rendered, add_special_tokens=False)["input_ids"])
    usage = out["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6


def test_greedy_is_deterministic_and_seed_repeats_samples(server):
    a = chat(server, max_tokens=8, temperature=0.0)[1]
    b = chat(server, max_tokens=8, temperature=0.0)[1]
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    s1 = chat(server, max_tokens=8, temperature=1.0, top_p=0.9, seed=7, n=3)[1]
    s2 = chat(server, max_tokens=8, temperature=1.0, top_p=0.9, seed=7, n=3)[1]
    texts = [c["message"]["content"] for c in s1["choices"]]
    assert [c["index"] for c in s1["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in s2["choices"]]
    # three samples of a random model at temperature 1 are not all alike
    s3 = chat(server, max_tokens=8, temperature=1.0, seed=8, n=3)[1]
    assert len({*texts, *(c["message"]["content"] for c in s3["choices"])}) > 1


def test_stop_sequence_cuts_the_answer(server):
    full = chat(server, max_tokens=12, temperature=1.0, seed=3)[1]["choices"][0]
    text = full["message"]["content"]
    assert len(text) >= 2, "the tiny model wrote too little to cut"
    stop = text[1]  # the second character: the cut answer is text[:first occurrence]
    cut = chat(server, max_tokens=12, temperature=1.0, seed=3, stop=[stop])[1]["choices"][0]
    assert cut["message"]["content"] == text[:text.index(stop)]
    assert cut["finish_reason"] == "stop"


def _entry_ids(tok, entries) -> list[int]:
    """The token ids behind OpenAI logprobs entries: their bytes spelled in the byte-level
    alphabet of the tiny tokenizer."""
    from alignkit.serve.chat import _BYTE_DECODER

    to_char = {b: c for c, b in _BYTE_DECODER.items()}
    return [tok.convert_tokens_to_ids("".join(to_char[b] for b in e["bytes"])) for e in entries]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The served model and tokenizer, loaded again in the test process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    return model, tok


@pytest.mark.parametrize("sampling", [dict(temperature=0.0),
                                      dict(temperature=1.0, top_p=0.9, seed=5, n=2)])
def test_logprobs_are_the_models_own_log_softmax(server, reference, sampling):
    import torch

    model, tok = reference
    status, out = chat(server, max_tokens=8, logprobs=True, top_logprobs=5, **sampling)
    assert status == 200
    rendered = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    prompt = tok(rendered, add_special_tokens=False)["input_ids"]
    total = 0
    for choice in out["choices"]:
        entries = choice["logprobs"]["content"]
        # one entry per generated token of the content: a final EOS has none
        total += len(entries) + (choice["finish_reason"] == "stop")
        assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace") \
            == choice["message"]["content"]
        ids = _entry_ids(tok, entries)
        assert [tok.decode([i]) for i in ids] == [e["token"] for e in entries]
        # independently: one forward of prompt + answer, log_softmax of the raw logits (the
        # temperature and top_p of sampling do not enter)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + ids])).logits[0].double()
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        for t, (e, token) in enumerate(zip(entries, ids)):
            assert e["logprob"] == pytest.approx(logp[t, token].item(), abs=1e-4)
            top = e["top_logprobs"]
            assert len(top) == 5
            values = [x["logprob"] for x in top]
            assert values == sorted(values, reverse=True)
            expected = torch.topk(logp[t], 5)
            assert values == pytest.approx(expected.values.tolist(), abs=1e-4)
            assert [x["token"] for x in top] == [tok.decode([j]) for j in
                                                 expected.indices.tolist()]
            if sampling["temperature"] == 0:  # greedy: the written token is the argmax
                assert (top[0]["token"], top[0]["bytes"]) == (e["token"], e["bytes"])
                assert top[0]["logprob"] == pytest.approx(e["logprob"], abs=1e-6)
    assert total == out["usage"]["completion_tokens"]  # no special token was skipped


def test_logprobs_after_a_stop_sequence_cover_the_returned_text(server, reference):
    _, tok = reference
    ask = dict(max_tokens=12, temperature=1.0, seed=3, logprobs=True)
    full = chat(server, **ask)[1]["choices"][0]
    text, tokens = full["message"]["content"], [e["token"] for e in full["logprobs"]["content"]]
    # a stop sequence that first occurs inside a token of two or more characters, after its
    # first character: the cut falls within that token
    start, stop, inside = 0, None, None
    for k, token in enumerate(tokens):
        for j in range(1, len(token)):
            if token[j].strip() and text.find(token[j]) == start + j:
                stop, inside = token[j], k
                break
        if stop is not None:
            break
        start += len(token)
    assert stop is not None, f"no token to cut inside in {tokens}"
    choice = chat(server, **ask, stop=stop)[1]["choices"][0]
    content, entries = choice["message"]["content"], choice["logprobs"]["content"]
    assert content == text[:text.index(stop)] and choice["finish_reason"] == "stop"
    # entries up to and including the token the cut falls in (same tokens, same numbers)
    assert entries == full["logprobs"]["content"][:inside + 1]
    assert all(e["top_logprobs"] == [] for e in entries)  # top_logprobs not asked: none
    covered = tok.decode(_entry_ids(tok, entries))
    assert covered.startswith(content) and len(covered) > len(content)


def test_streaming_sends_the_same_answer_as_server_sent_events(server):
    plain = chat(server, max_tokens=10, temperature=0.0)[1]
    req = urllib.request.Request(server + "/chat/completions", data=json.dumps(
        {"messages": HELLO, "max_tokens": 10, "temperature": 0.0, "stream": True}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers.get_content_type() == "text/event-stream"  # charset=utf-8 as OpenAI
        lines = [ln for ln in resp.read().decode().split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == plain["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert events[-1]["usage"] == plain["usage"]


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": HELLO, "temperature": "hot"}, "temperature"),
    ({"messages": HELLO, "temperature": 3.5}, "temperature"),
    ({"messages": HELLO, "top_p": 1.5}, "top_p"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 10**6}, "max_tokens"),
    ({"messages": HELLO, "n": 2.5}, "n"),
    ({"messages": HELLO, "stop": [1]}, "stop"),
    ({"messages": HELLO, "seed": "x"}, "seed"),
    ({"messages": HELLO, "stream": True, "n": 2}, "n"),
    ({"messages": HELLO, "logprobs": "true"}, "logprobs"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": HELLO, "logprobs": True, "stream": True}, "logprobs"),
])
def test_bad_requests_get_a_400_naming_the_field(server, body, param):
    status, out = post_json(server + "/chat/completions", body)
    assert status == 400
    assert out["error"]["type"] == "invalid_request_error"
    assert out["error"]["param"] == param


def test_other_errors(server):
    status, out = post_json(server + "/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in out["error"]["message"]
    status, out = chat(server, model="gpt-4o")
    assert status == 404 and out["error"]["param"] == "model"
    status, out = post_json(server + "/completions", {"prompt": "hi"})
    assert status == 404


def test_concurrent_clients_each_get_their_own_answer(server):
    """Eight threads at once: the lock serialises them, and each answer equals the one the
    same request gets alone."""
    seeds = list(range(8))
    alone = {s: chat(server, max_tokens=6, temperature=1.0, seed=s)[1] for s in seeds[:3]}
    results, errors = {}, []

    def worker(seed):
        try:
            results[seed] = chat(server, max_tokens=6, temperature=1.0, seed=seed)
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[s][0] == 200 for s in seeds)
    for s in seeds[:3]:
        assert results[s][1]["choices"] == alone[s]["choices"]
    stats = get_json(server + "/stats")
    assert stats["chat_completions"] >= 11


def test_missing_model_is_a_clear_error(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("serve", "--model", str(tmp_path / "nope"), "--port", "0", timeout=120)
    assert proc.returncode == 2
    assert "model folder not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"n": 17}, "n"),
    ({"top_k": 5}, "top_k"),  # not an OpenAI field: refused, not silently dropped
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].role"),
])
def test_what_the_server_cannot_honour_is_refused(server, extra, param):
    status, out = post_json(server + "/chat/completions", {"messages": HELLO, **extra})
    assert status == 400
    assert set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["param"] == param
    assert param.split("[")[0] in out["error"]["message"]


def test_fields_that_change_nothing_are_accepted(server):
    status, out = chat(server, max_tokens=3, temperature=0.0, user="u1", metadata={"k": "v"},
                       response_format={"type": "text"}, logit_bias={}, tool_choice="none",
                       frequency_penalty=0, presence_penalty=None, parallel_tool_calls=True,
                       max_completion_tokens=None, stop=None, top_logprobs=None)
    assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"


def test_the_official_openai_client_works(server):
    import openai

    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    plain = chat(server, max_tokens=8, temperature=0.0)[1]
    out = client.chat.completions.create(model="tiny-policy", messages=HELLO, max_tokens=8,
                                         temperature=0.0, seed=1)
    assert out.choices[0].message.content == plain["choices"][0]["message"]["content"]
    assert out.usage.total_tokens == plain["usage"]["total_tokens"]
    stream = client.chat.completions.create(model="tiny-policy", messages=HELLO, max_tokens=8,
                                            temperature=0.0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        plain["choices"][0]["message"]["content"]
    assert chunks[-1].choices[0].finish_reason == plain["choices"][0]["finish_reason"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-policy", messages=HELLO, temperature=3.0)
    assert err.value.param == "temperature"
    assert [m.id for m in client.models.list()] == ["tiny-policy"]


def test_a_client_that_goes_away_stops_its_stream(server):
    """The model thread stops generating a stream once its client disconnects: the answer is
    never finished (no completion is counted), and the model is free again at once."""
    import http.client
    import time
    from urllib.parse import urlsplit

    long = dict(max_tokens=900, temperature=0.0)
    plain = chat(server, **long)[1]
    assert plain["choices"][0]["finish_reason"] == "length", "greedy answer ends early"
    before = get_json(server + "/stats")
    where = urlsplit(server)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({"messages": HELLO, **long,
                                                             "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    while '"content": ""' in (line := resp.readline().decode()) or not line.strip():
        pass  # past the role chunk, to the first piece of text
    assert line.startswith("data: {")
    resp.close()
    conn.close()
    deadline = time.time() + 60
    while (after := get_json(server + "/stats"))["in_flight"]:
        assert time.time() < deadline
        time.sleep(0.05)
    assert after["streams_stopped"] == before["streams_stopped"] + 1
    assert after["chat_completions"] == before["chat_completions"]


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir):
    from tests.smoke.serve_process import serve_process

    with serve_process(tiny_model_dir, "--model-name", "tiny-policy", "--api-key",
                       "s3cret-key") as url:
        yield url


def test_an_api_key_is_required_when_set(keyed_server):
    import openai

    def call(path, key=None, body=None):
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(keyed_server + path, headers=headers, data=None if body is
                                     None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    for key in (None, "wrong", "s3cret-key-and-more", ""):
        for path, body in (("/models", None), ("/chat/completions", {"messages": HELLO})):
            status, out = call(path, key, body)
            assert status == 401, (path, key)
            assert out["error"]["code"] == "invalid_api_key"
            assert set(out["error"]) == {"message", "type", "param", "code"}
    assert call("/models", "s3cret-key")[0] == 200
    status, out = call("/chat/completions", "s3cret-key", {"messages": HELLO, "max_tokens": 3})
    assert status == 200 and out["object"] == "chat.completion"
    with urllib.request.urlopen(keyed_server.removesuffix("/v1") + "/health", timeout=30) as r:
        assert r.status == 200  # health checks need no key

    good = openai.OpenAI(base_url=keyed_server, api_key="s3cret-key", max_retries=0)
    out = good.chat.completions.create(model="tiny-policy", messages=HELLO, max_tokens=3)
    assert out.choices[0].message.role == "assistant"
    bad = openai.OpenAI(base_url=keyed_server, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny-policy", messages=HELLO, max_tokens=3)


def test_without_the_serve_extra_the_error_says_what_to_install(tmp_path):
    """fastapi / uvicorn / sse-starlette absent (an import of a name set to None in
    sys.modules fails like a missing package): a clear error, no traceback -- which also shows
    the CLI does not import them before the serve stage runs."""
    import subprocess
    import sys

    script = ("import sys\n"
              "for name in ('fastapi', 'uvicorn', 'sse_starlette'):\n"
              "    sys.modules[name] = None\n"
              "from alignkit.cli import main\n"
              f"sys.exit(main(['serve', '--model', {str(tmp_path)!r}, '--port', '0']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'alignkit[serve]'" in proc.stderr and "Traceback" not in proc.stderr
