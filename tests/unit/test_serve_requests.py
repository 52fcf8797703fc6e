"""``alignkit serve`` request handling without a socket: validation, stop sequences, and what a
stream may send before it knows whether a stop sequence is starting."""

from __future__ import annotations

import pytest

from alignkit.serve.app import RequestError, _safe_prefix, cut_at_stop, parse_chat_request

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
