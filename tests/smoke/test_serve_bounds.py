"""``alignkit serve`` under hostile input, on loopback over raw sockets: a body past the size
limit is a 413 (declared or streamed), a body that never comes is a 408 within the timeout, a
connection whose headers never come is closed within it (slowloris), a full queue is a 429 with Retry-After, and JSON nested 100,000 deep or holding a lone surrogate is
a 400 -- every one an answer, none a 500 or a dropped connection; the server answers normally
after all of them."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.smoke.serve_process import get_json, post_json, serve_process

pytestmark = pytest.mark.smoke

HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n")


def exchange(url: str, head: bytes, body_parts: list[bytes] = (), wait: float = 20) -> tuple:
    """Send raw bytes; (status, JSON body or None, headers in lower case) of the answer."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed before the rest was sent
                break
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    status = int(answer.split(b" ", 2)[1])
    headers, body = answer.split(b"\r\n\r\n", 1)
    return status, json.loads(body) if body.startswith(b"{") else None, headers.lower()


@pytest.fixture(scope="module")
def bounded(tiny_model_dir):
    with serve_process(tiny_model_dir, "--max-request-mb", "1", "--request-timeout", "2",
                       "--max-queue", "1") as url:
        yield url


def test_oversized_bodies_are_413(bounded):
    status, body, _ = exchange(bounded, HEAD + b"Content-Length: 62914560\r\n\r\n")
    assert status == 413 and "limit of 1048576 bytes" in body["error"]["message"]
    chunk = b"%x\r\n%s\r\n" % (2**18, b"a" * 2**18)  # 8 chunks of 256 KiB, no length given
    status, body, _ = exchange(bounded, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 8)
    assert status == 413


def test_a_body_that_never_comes_is_408(bounded):
    started = time.time()
    status, body, _ = exchange(bounded, HEAD + b"Content-Length: 100\r\n\r\n")
    assert status == 408 and "within 2 seconds" in body["error"]["message"]
    assert time.time() - started < 10


@pytest.mark.parametrize("sent", [b"", HEAD])  # nothing, or headers never finished
def test_a_connection_whose_headers_never_come_is_closed(bounded, sent):
    host, port = bounded.split("//")[1].split("/")[0].rsplit(":", 1)
    started = time.time()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(sent)
        assert sock.recv(100) == b""  # closed by the server
    assert 1.5 < time.time() - started < 10


@pytest.mark.parametrize("raw, message", [
    (b'{"messages": [{"role": "user", "content": "x\\ud800"}]}',
     "the request holds a lone surrogate (\\ud800), which is not text"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "the request body is not valid JSON (nested too deeply)"),
])
def test_text_that_is_not_text_and_deep_json_are_400(bounded, raw, message):
    status, body = post_json(bounded + "/chat/completions", raw)
    assert (status, body["error"]["message"]) == (400, message)


def test_a_full_queue_is_429_with_retry_after(bounded):
    long_answer = {"messages": [{"role": "user", "content": "Tell me a story."}],
                   "max_tokens": 512, "n": 16, "temperature": 1.0}
    results = []
    first = threading.Thread(target=lambda: results.append(
        post_json(bounded + "/chat/completions", long_answer)))
    first.start()
    deadline = time.time() + 60  # until the first answer (16 x 512 tokens) is queued or running
    while get_json(bounded + "/stats")["in_flight"] < 1:
        assert time.time() < deadline and first.is_alive()
        time.sleep(0.02)
    raw = json.dumps({**long_answer, "n": 1, "max_tokens": 2}).encode()
    status, body, headers = exchange(bounded, HEAD + b"Content-Length: %d\r\n\r\n" % len(raw),
                                     [raw])
    first.join()
    assert status == 429 and "limit is 1" in body["error"]["message"]
    assert b"\r\nretry-after: 1" in headers
    assert results[0][0] == 200
    # and the server is well after everything above
    status, answer = post_json(bounded + "/chat/completions", {**long_answer, "n": 1,
                                                              "max_tokens": 2})
    assert status == 200 and answer["choices"][0]["message"]["role"] == "assistant"
