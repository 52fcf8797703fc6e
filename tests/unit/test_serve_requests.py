"""``alignkit serve`` request handling without a socket: validation, stop sequences, and what a
stream may send before it knows whether a stop sequence is starting."""

from __future__ import annotations

import pytest

from alignkit.serve.app import RequestError, parse_chat_request
from alignkit.serve.chat import _safe_prefix, cut_at_stop, token_bytes

pytestmark = pytest.mark.unit

MSG = [{"role": "user", "content": "hi"}]


def test_defaults_and_fields():
    req = parse_chat_request({"messages": MSG}, 512, 64)
    assert (req.max_tokens, req.temperature, req.top_p, req.n, req.stop, req.seed,
            req.stream) == (64, 1.0, 1.0, 1, [], None, False)
    req = parse_chat_request({"messages": MSG, "max_completion_tokens": 9, "stop": "\n",
                              "temperature": 0, "n": 3, "seed": 5, "model": "m"}, 512, 64)
    assert (req.max_tokens, req.stop, req.temperature, req.n, req.seed, req.model) == (
        9, ["\n"], 0.0, 3, 5, "m")


def test_logprob_fields():
    req = parse_chat_request({"messages": MSG}, 512, 64)
    assert (req.logprobs, req.top_logprobs) == (False, 0)
    req = parse_chat_request({"messages": MSG, "logprobs": True}, 512, 64)
    assert (req.logprobs, req.top_logprobs) == (True, 0)
    req = parse_chat_request({"messages": MSG, "logprobs": True, "top_logprobs": 20}, 512, 64)
    assert (req.logprobs, req.top_logprobs) == (True, 20)
    req = parse_chat_request({"messages": MSG, "logprobs": None, "top_logprobs": None,
                              "stream": True}, 512, 64)  # null: the default
    assert (req.logprobs, req.top_logprobs, req.stream) == (False, 0, True)


def test_token_bytes_are_raw_for_a_piece_of_a_character(tiny_tokenizer):
    tok = tiny_tokenizer
    space_a = tok.convert_tokens_to_ids("\u0120A")  # byte-level "ĠA": " A"
    assert token_bytes(tok, space_a, tok.decode([space_a])) == [32, 65]
    # "é" is the bytes C3 A9; the byte-level alphabet has a token for each byte alone, which
    # decodes alone to U+FFFD -- its bytes are the raw byte, as OpenAI's "bytes" field carries
    lead = tok.convert_tokens_to_ids("\u00c3")  # the byte C3 in the byte-level alphabet
    assert tok.decode([lead]) == "\ufffd"
    assert token_bytes(tok, lead, tok.decode([lead])) == [0xC3]
    ids = tok("café", add_special_tokens=False)["input_ids"]
    joined = [b for i in ids for b in token_bytes(tok, i, tok.decode([i]))]
    assert bytes(joined).decode("utf-8") == "café"


def test_text_content_parts_are_joined():
    req = parse_chat_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, 512, 64)
    assert req.messages == [{"role": "user", "content": "ab"}]
    with pytest.raises(RequestError) as err:
        parse_chat_request({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}, 512, 64)
    assert err.value.param == "messages[0].content"


@pytest.mark.parametrize("body, param", [
    (None, None), ([], None), ({"messages": "hi"}, "messages"),
    ({"messages": [MSG[0], "x"]}, "messages[1]"),
    ({"messages": MSG, "max_tokens": 513}, "max_tokens"),
    ({"messages": MSG, "max_tokens": True}, "max_tokens"),
    ({"messages": MSG, "n": 17}, "n"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": MSG, "stop": [""]}, "stop"),
    ({"messages": MSG, "stream": "yes"}, "stream"),
    ({"messages": MSG, "top_p": -0.1}, "top_p"),
    ({"messages": MSG, "logprobs": "yes"}, "logprobs"),
    ({"messages": MSG, "logprobs": 1}, "logprobs"),
    ({"messages": MSG, "top_logprobs": 3}, "top_logprobs"),  # without logprobs
    ({"messages": MSG, "logprobs": False, "top_logprobs": 0}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": 2.0}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": True}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "stream": True}, "logprobs"),
])
def test_bad_bodies_name_the_field(body, param):
    with pytest.raises(RequestError) as err:
        parse_chat_request(body, 512, 64)
    assert err.value.param == param and err.value.status == 400
    assert err.value.body()["error"]["type"] == "invalid_request_error"


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("one. two! three", [".", "!"]) == ("one", True)
    assert cut_at_stop("one two", ["!"]) == ("one two", False)
    assert cut_at_stop("abcabc", ["ca", "bc"]) == ("a", True)


def test_a_stream_holds_back_what_could_begin_a_stop_sequence():
    assert _safe_prefix("hello wor", ["world!"]) == "hello "
    assert _safe_prefix("hello", ["\n\n"]) == "hello"
    assert _safe_prefix("hello\n", ["\n\n"]) == "hello"
    assert _safe_prefix("caf\ufffd", []) == "caf"  # half a UTF-8 character
